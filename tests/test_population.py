"""Populations, mating, the Ray backend and resume of population runs."""

from __future__ import annotations

import itertools
import json
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import evosynth
from evosynth.breeding import Fitness, Parent
from evosynth.config import load_config, validate
from evosynth.coupling import Coupling
from evosynth.errors import UserError
from evosynth.mating import choose_parents, combine
from evosynth.rundir import RunDir
from evosynth.seeding import generator

from .conftest import cli_process, uninterrupted_run

CONFIG = """\
model: lenet300
dataset: digits
seed: 1
ancestor_train: {epochs: 2}
train: {epochs: 1}
evolution: {generations: 2, offspring: 3, population: 2, parents: 2, max_drop: null}
measure: {costs: false}
"""


def contents(run: Path) -> tuple[dict, list]:
    """Every tensor of every generation (population members included), the history
    without timings, and the genealogy."""
    tensors = {}
    for f in sorted(run.glob("generations/**/*.safetensors")):
        for k, v in load_file(str(f)).items():
            tensors[(str(f.relative_to(run)), k)] = v
    history = [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
               for line in (run / "history.jsonl").read_text().splitlines()]
    return tensors, [*history, json.loads((run / "genealogy.json").read_text())]


def same(a: tuple[dict, list], b: tuple[dict, list]) -> None:
    assert a[1] == b[1]
    assert a[0].keys() == b[0].keys()
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]), k


def cli(*args, kill_at: str | None = None) -> subprocess.CompletedProcess:
    return cli_process(*args, kill_at=kill_at, timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, tuple[dict, list]]:
    cfg, run = uninterrupted_run(tmp_path_factory.mktemp("population"), CONFIG)
    return cfg, contents(run)


def test_population_run_records_parents_and_a_consistent_genealogy(reference, tmp_path):
    cfg, (tensors, records) = reference
    history, tree = records[:-1], records[-1]
    assert [r["generation"] for r in history] == [0, 1, 2]
    individuals = {i["id"]: i for i in tree["individuals"]}
    assert len(individuals) == 1 + 3 + 3
    for prev, rec in itertools.pairwise(history):
        assert len(rec["population"]) == 2 and rec["id"] == rec["population"][0]
        assert [o["id"] for o in rec["offspring"]] == [f"{rec['generation']}.{k}"
                                                        for k in range(3)]
        for o in rec["offspring"]:
            # every parent was a member of the previous generation's population
            assert o["parents"] and set(o["parents"]) <= set(prev["population"])
            assert individuals[o["id"]]["survived"] == (o["id"] in rec["population"])
        # the population is the two fittest (ties to fewer synapses)
        ranked = sorted(rec["offspring"], key=lambda o: (o["val_accuracy"], -o["synapses"]),
                        reverse=True)
        assert [o["id"] for o in ranked[:2]] == rec["population"]
        assert rec["val_accuracy"] == ranked[0]["val_accuracy"]
    # generation 2 mates the two members of generation 1's population
    assert all(len(o["parents"]) == 2 for o in history[2]["offspring"])
    # every member is stored, and a synapse dead in every parent stays dead in the child
    masks = {(p.split("/")[1], p.split("/")[-1]): None for p, _ in tensors}
    assert ("1", "0.safetensors") in masks and ("2", "1.safetensors") in masks
    run = cfg.parent / "whole"
    members = {g: {m.id: m for m in RunDir(run).load_population(g, set(
        load_file(str(run / "generations/0/masks.safetensors"))))} for g in (1, 2)}
    for child in members[2].values():
        for name, mask in child.masks.items():
            union = torch.zeros_like(mask)
            for pid in child.parents:
                union |= members[1][pid].masks[name]
            assert not (mask & ~union).any(), f"{child.id} revived synapses in {name}"
            assert (child.state[f"{name}.weight"][~mask] == 0).all()
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["population"], summary["parents"], summary["individuals"]) == (2, 2, 7)
    shown = cli("show", run)
    assert "population 2, 2 parent(s) per offspring, 7 individuals" in shown.stdout
    from .test_report import parse

    assert cli("report", run, "--out", tmp_path / "r.html").returncode == 0
    rows = {r[1]: r for r in parse(tmp_path / "r.html").rows["genealogy"][1:]}
    for rec in history[1:]:
        for o in rec["offspring"]:
            assert rows[o["id"]][2] == " + ".join(o["parents"])
            assert (rows[o["id"]][-1] in ("best", "parent")) == (o["id"] in rec["population"])


@pytest.mark.parametrize("point", ["offspring-saved:1", "epoch:7"])
def test_killed_population_run_resumes_to_the_uninterrupted_result(reference, tmp_path, point):
    cfg, expected = reference
    out = tmp_path / "run"
    r = cli("evolve", "--config", cfg, "--out", out, "--no-progress", kill_at=point)
    assert r.returncode == -9, r.stderr
    r = cli("resume", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    same(contents(out), expected)


def _parent(id_: str, w: list[list[float]], value: float) -> Parent:
    weight = torch.tensor(w)
    return Parent(id_, {"fc.weight": weight, "fc.bias": torch.ones(2)},
                  {"fc": weight != 0}, Fitness(value))


def test_mating_combines_masks_strengths_and_weights_as_documented():
    net = nn.Sequential()
    net.add_module("fc", nn.Linear(2, 2))
    layers = evosynth.clusters.prunable_layers(net, [])
    coupling = Coupling([], layers)
    fit = _parent("a", [[1.0, 0.0], [2.0, 0.0]], 0.9)
    weak = _parent("b", [[3.0, 4.0], [0.0, 0.0]], 0.8)
    strengths, masks, state = combine([fit, weak], coupling, net, {"fc": "fc.weight"}, "fittest")
    # a synapse dead in every parent stays dead; one alive in any may be passed on
    assert masks["fc"].tolist() == [[True, True], [True, False]]
    assert strengths["fc"].tolist() == [[2.0, 2.0], [1.0, 0.0]]
    # fittest: its own values, and the other parent's where it had the synapse dead
    assert state["fc.weight"].tolist() == [[1.0, 4.0], [2.0, 0.0]]
    _, _, mean = combine([fit, weak], coupling, net, {"fc": "fc.weight"}, "mean")
    assert mean["fc.weight"].tolist() == [[2.0, 4.0], [2.0, 0.0]]
    # one parent: its own, unchanged
    s1, m1, st1 = combine([weak], coupling, net, {"fc": "fc.weight"}, "fittest")
    assert st1 is weak.state and m1 is weak.masks and torch.equal(s1["fc"], weak.state["fc.weight"])


def test_parents_are_chosen_by_seeded_tournaments_fittest_first():
    pop = [_parent(str(i), [[1.0, 1.0], [1.0, 1.0]], v)
           for i, v in enumerate([0.5, 0.9, 0.7, 0.8])]
    draws = [[p.id for p in choose_parents(pop, 2, generator(0, "mates", k))] for k in range(20)]
    assert draws == [[p.id for p in choose_parents(pop, 2, generator(0, "mates", k))]
                     for k in range(20)]
    for d in draws:
        assert len(set(d)) == 2
        values = [pop[int(i)].fitness.value for i in d]
        assert values == sorted(values, reverse=True)
    assert "0" not in {d[0] for d in draws}, "the least fit member won a tournament"
    assert len({tuple(d) for d in draws}) > 1
    assert [p.id for p in choose_parents(pop[:2], 2, generator(0, "x"))] == ["1", "0"]


def test_population_settings_are_checked():
    with pytest.raises(UserError, match=r"parents \(2\) must be at most evolution\.population"):
        validate({"evolution": {"parents": 2}})
    with pytest.raises(UserError, match=r"offspring \(2\) must be at least"):
        validate({"evolution": {"population": 3, "offspring": {1: 4, 3: 2}}})


# -- Ray ------------------------------------------------------------------------------------
ray = pytest.importorskip("ray", reason="the Ray backend needs evosynth[ray]")


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    """A local Ray with 2 CPUs, whose workers kill themselves once at the end of their
    first training epoch (the first one to get there, then never again)."""
    marker = tmp_path_factory.mktemp("ray") / "killed"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"EVOSYNTH_KILL_AT": "epoch:1",
                                       "EVOSYNTH_KILL_ONCE": str(marker)}})
    yield marker
    ray.shutdown()


def test_ray_backend_gives_the_local_history_even_when_a_worker_dies(reference, local_ray,
                                                                     tmp_path):
    cfg, expected = reference
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the driver trains the ancestor, as the local run did
    try:
        evosynth.run(load_config(cfg, {"execution.backend": "ray"}), tmp_path / "ray",
                     progress=False, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    assert local_ray.exists(), "no worker was killed"
    same(contents(tmp_path / "ray"), expected)


def test_ray_run_killed_resumes_on_ray_to_the_uninterrupted_result(reference, local_ray,
                                                                   tmp_path):
    cfg, expected = reference
    out = tmp_path / "run"
    r = cli("evolve", "--config", cfg, "--out", out, "--no-progress", "--backend", "ray",
            "--ray-address", "auto", kill_at="offspring-saved:2")
    assert r.returncode == -9, r.stderr
    r = cli("resume", out, "--no-progress", "--backend", "ray", "--ray-address", "auto")
    assert r.returncode == 0, r.stderr
    same(contents(out), expected)
