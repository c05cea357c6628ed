"""The loop end to end: synapses fall, records are complete, resume equals uninterrupted."""

import dataclasses
import itertools
import json
import math

import pytest
import torch
from safetensors.torch import load_file

import evosynth
from evosynth.config import validate
from evosynth.evolution import HISTORY_KEYS
from evosynth.rundir import RunDir

# schedule mode: the factors below, per layer, every generation (the adaptive environment
# has tests of its own)
QUICK = {
    "model": "lenet300", "dataset": "digits", "seed": 3,
    "encoding": {"cluster_factor": 0.7, "synapse_factor": 0.7, "normalization": "budget",
                 "strength": "own", "granularity": "kernel"},
    "evolution": {"generations": 3, "max_drop": None, "environment": {"kind": "schedule"}},
    "ancestor_train": {"epochs": 2}, "train": {"epochs": 1},
}


def quick(**over):
    data = json.loads(json.dumps(QUICK))
    for k, v in over.items():
        data.setdefault(k, {}).update(v) if isinstance(v, dict) else data.__setitem__(k, v)
    return validate(data)


def test_end_to_end_synapses_fall_and_records_complete(tmp_path):
    res = evosynth.run(quick(), tmp_path / "run", progress=False, log=lambda s: None)
    hist = res.history
    assert [r["generation"] for r in hist] == [0, 1, 2, 3]
    for r in hist:
        assert set(HISTORY_KEYS) <= set(r)
        assert {"compact_params", "compact_macs", "latency_ms", "model_bytes"} <= set(r)
        assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
    syn = [r["synapses"] for r in hist]
    assert all(b < a for a, b in itertools.pairwise(syn)), syn
    assert hist[-1]["synaptic_efficiency"] == pytest.approx(syn[0] / syn[-1])
    assert hist[0]["val_accuracy"] > 0.8, "the ancestor did not learn"
    rd = RunDir(tmp_path / "run")
    assert rd.history() == json.loads(json.dumps(hist))
    assert rd.summary()["best_generation"] == 3
    assert rd.config() == quick()
    for g in range(4):
        d = rd.generation_dir(g)
        weights = load_file(str(d / "weights.safetensors"))
        masks = load_file(str(d / "masks.safetensors"))
        for name, m in masks.items():
            assert torch.all(weights[f"{name}.weight"][m == 0] == 0), "a dead synapse is nonzero"
        assert json.loads((d / "metrics.json").read_text())["generation"] == g
    # the best offspring as a module computes with its masks
    assert res.best_model.fc1.weight.count_nonzero() == res.best_genome.masks["fc1"].sum()


@pytest.mark.parametrize("weights", ["inherit", "scratch", "rewind"])
def test_offspring_weight_modes(tmp_path, weights):
    cfg = quick(evolution={"generations": 1, "weights": weights}, train={"epochs": 0})
    evosynth.run(cfg, tmp_path / weights, progress=False, log=lambda s: None)
    rd = RunDir(tmp_path / weights)
    parent = load_file(str(rd.generation_dir(0) / "weights.safetensors"))["fc1.weight"]
    child = load_file(str(rd.generation_dir(1) / "weights.safetensors"))["fc1.weight"]
    init = rd.load_tensors("ancestor_init.safetensors")["fc1.weight"]
    alive = load_file(str(rd.generation_dir(1) / "masks.safetensors"))["fc1"].bool()
    assert alive.any()
    if weights == "inherit":
        assert torch.equal(child[alive], parent[alive])
    elif weights == "rewind":
        assert torch.equal(child[alive], init[alive])
    else:
        assert not torch.equal(child[alive], parent[alive])
        assert not torch.equal(child[alive], init[alive])


def strip(history):
    timed = ("wall_seconds", "latency_ms")
    return [{k: v for k, v in r.items() if k not in timed} for r in history]


class Crash(Exception):
    pass


def crash_after_gen1(line):
    if line.startswith("gen   1"):
        raise Crash


def test_resume_equals_uninterrupted(tmp_path):
    cfg = quick(evolution={"offspring": 2})
    whole = evosynth.run(cfg, tmp_path / "whole", progress=False, log=lambda s: None)
    with pytest.raises(Crash):
        evosynth.run(cfg, tmp_path / "cut", progress=False, log=crash_after_gen1)
    rd = RunDir(tmp_path / "cut")
    assert rd.complete_generations() == [0, 1]
    # a half-written generation left behind by the crash must not confuse resume
    (rd.path / "generations" / ".2.partial").mkdir()
    resumed = evosynth.resume(tmp_path / "cut", progress=False, log=lambda s: None)
    assert strip(resumed.history) == strip(whole.history)
    for g in range(4):
        for f in ("weights.safetensors", "masks.safetensors"):
            a = load_file(str(RunDir(tmp_path / "whole").generation_dir(g) / f))
            b = load_file(str(rd.generation_dir(g) / f))
            assert all(torch.equal(a[k], b[k]) for k in a), (g, f)
    assert not (rd.path / "generations" / ".2.partial").exists()


def test_another_draw_seed_is_another_draw_on_the_same_split_and_ancestor(tmp_path):
    """evolution.draw_seed: the split, the ancestor and its scores stay the run seed's; the
    offspring are another draw, and the same draw seed repeats it."""
    def masks(name):
        return load_file(str(RunDir(tmp_path / name).generation_dir(1) / "masks.safetensors"))

    runs = {name: evosynth.run(quick(evolution={"generations": 1, "draw_seed": d}),
                               tmp_path / name, progress=False, log=lambda s: None)
            for name, d in (("run", None), ("draw1", 1), ("again", 1))}
    ancestors = [strip(r.history)[0] for r in runs.values()]
    assert ancestors[0] == ancestors[1] == ancestors[2]
    a, b, c = masks("run"), masks("draw1"), masks("again")
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.equal(b[k], c[k]) for k in b)
    assert strip(runs["draw1"].history) == strip(runs["again"].history)


def test_floor_stops_and_summary_picks_smallest_meeting_it(tmp_path):
    cfg = quick(encoding={"cluster_factor": 0.3, "synapse_factor": 0.3},
                evolution={"generations": 8, "max_drop": 0.05})
    res = evosynth.run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    last = res.history[-1]
    anc = res.history[0]["val_accuracy"]
    assert not last["meets_floor"] and last["val_accuracy"] < anc - 0.05
    summary = RunDir(tmp_path / "r").summary()
    assert summary["stopped"] == "floor"
    best = res.history[summary["best_generation"]]
    assert best["meets_floor"] and best["val_accuracy"] >= anc - 0.05
    assert best["synapses"] == min(r["synapses"] for r in res.history if r["meets_floor"])
    # the result handed back is that generation, not the last one
    assert res.best_generation == best["generation"] != last["generation"]
    assert res.best_genome.synapses() == best["synapses"]


def test_compact_training_trains_the_same_network(tmp_path):
    """Training the compacted offspring and writing it back equals masked training."""
    runs = {}
    for flag in (True, False):
        cfg = quick(evolution={"generations": 2, "compact_training": flag},
                    encoding={"cluster_factor": 0.6})
        evosynth.run(cfg, tmp_path / str(flag), progress=False, log=lambda s: None)
        runs[flag] = RunDir(tmp_path / str(flag))
    for g in (1, 2):
        a = load_file(str(runs[True].generation_dir(g) / "weights.safetensors"))
        b = load_file(str(runs[False].generation_dir(g) / "weights.safetensors"))
        for k in a:
            if k.endswith(("weight", "bias")):
                assert torch.allclose(a[k], b[k], atol=1e-4), (g, k)
        ma = load_file(str(runs[True].generation_dir(g) / "masks.safetensors"))
        mb = load_file(str(runs[False].generation_dir(g) / "masks.safetensors"))
        assert all(torch.equal(ma[k], mb[k]) for k in ma)
    ha, hb = runs[True].history(), runs[False].history()
    assert [r["synapses"] for r in ha] == [r["synapses"] for r in hb]
    assert ha[-1]["compact_params"] < ha[0]["compact_params"]
    assert ha[-1]["compact_macs"] < ha[0]["compact_macs"]


def test_offspring_schedule_and_best_on_validation(tmp_path):
    cfg = quick(evolution={"generations": 3, "max_drop": None, "offspring": {1: 3, 3: 1}},
                measure={"costs": False})
    hist = evosynth.run(cfg, tmp_path / "run", progress=False, log=lambda s: None).history
    assert [len(r["offspring_val_accuracy"]) for r in hist[1:]] == [3, 3, 1]
    # selection is by validation: the recorded generation is the offspring that scored best,
    # and with three offspring the three scores are of three different networks
    for r in hist[1:]:
        assert r["val_accuracy"] == max(r["offspring_val_accuracy"])
    assert len(set(hist[1]["offspring_val_accuracy"])) > 1 or \
        len(set(hist[2]["offspring_val_accuracy"])) > 1


# -- the adaptive environment (the default) -------------------------------------------------
def adaptive(**over):
    cfg = quick(**over)
    return validate({**json.loads(json.dumps(dataclasses.asdict(cfg))),
                     "encoding": {**dataclasses.asdict(cfg.encoding),
                                  **dataclasses.asdict(validate({}).encoding)},
                     "evolution": {**dataclasses.asdict(cfg.evolution),
                                   "environment": {"kind": "adaptive"}, **over.get(
                                       "evolution", {})}})


def test_environment_law():
    from evosynth.config import EnvironmentConfig
    from evosynth.environment import headroom, next_pressure, retries

    env = EnvironmentConfig(pressure=0.2, grow=1.5, ease=0.5, retreat=0.5, headroom=0.5,
                            max_pressure=0.4, min_pressure=0.04, tries=5)
    assert headroom(0.98, 0.97, 0.99) == pytest.approx(0.5)
    assert next_pressure(env, 0.2, 0.6) == pytest.approx(0.3)  # reserve kept: harsher
    assert next_pressure(env, 0.3, 0.9) == pytest.approx(0.4)  # capped
    assert next_pressure(env, 0.2, 0.1) == pytest.approx(0.1)  # little reserve: gentler
    assert retries(env, 0.2) == pytest.approx([0.2, 0.1, 0.05, 0.04, 0.04])  # >= min
    assert headroom(0.5, -math.inf, 0.9) == math.inf  # no floor: always harsher


def test_the_controller_eases_only_for_a_shortfall_the_validation_set_can_see():
    """With `noise`, a reserve short of the headroom by less than `noise` standard errors
    holds the pressure (the score cannot tell it from one that kept its reserve); a larger
    shortfall eases, and `noise: 0` eases at any shortfall."""
    from evosynth.config import EnvironmentConfig
    from evosynth.environment import next_pressure, standard_error

    assert standard_error(0.99, 6000) == pytest.approx(math.sqrt(0.99 * 0.01 / 6000))
    assert standard_error(0.99, 0) == 0.0  # no examples known (ask/tell): no noise
    env = EnvironmentConfig(grow=1.5, ease=0.5, headroom=0.5, noise=1.0)
    # floor 0.988, ancestor 0.990: the allowed drop is 0.2 points, the headroom line 0.989
    error = standard_error(0.9885, 6000) / 0.002  # 0.14 points: 0.69 of the allowed drop
    assert next_pressure(env, 0.2, 0.25, error) == pytest.approx(0.2)  # within noise: hold
    assert next_pressure(env, 0.2, 0.25, 0.1) == pytest.approx(0.1)  # beyond it: ease
    assert next_pressure(env, 0.2, 0.6, error) == pytest.approx(0.3)  # kept: harsher
    quiet = EnvironmentConfig(grow=1.5, ease=0.5, headroom=0.5, noise=0.0)
    assert next_pressure(quiet, 0.2, 0.25, error) == pytest.approx(0.1)
    # the synapse phase, its reserve spent: what the offspring lost against its parent
    assert next_pressure(env, 0.2, 0.1, error, cost=0.5) == pytest.approx(0.3)  # unseen
    assert next_pressure(env, 0.2, 0.1, error, cost=-0.2) == pytest.approx(0.3)  # gained
    assert next_pressure(env, 0.2, 0.1, 0.1, cost=0.5) == pytest.approx(0.1)  # a real loss
    assert next_pressure(quiet, 0.2, 0.1, error, cost=0.01) == pytest.approx(0.1)


def test_adaptive_run_retries_gentler_below_the_floor(tmp_path):
    """A floor the offspring can hardly hold: a generation whose offspring falls below it
    samples the parent again at `retreat` times the pressure, every try is recorded, and
    the run ends only when the last try fails too (no layer may retire here, nor the
    synapse phase follow; both are tested in test_asktell and test_faults)."""
    from evosynth.environment import retries

    cfg = adaptive(evolution={"generations": 4, "max_drop": None, "min_accuracy": 0.9999,
                              "environment": {"kind": "adaptive", "retire": 0,
                                              "thin": False}},
                   measure={"costs": False})
    res = evosynth.run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    env = cfg.evolution.environment
    assert res.history[0]["val_accuracy"] < 0.9999 and len(res.history) == 2
    assert res.history[1]["environment"]["tries"] == env.tries == 3
    for i, r in enumerate(res.history[1:]):
        e = r["environment"]
        pressures = [x["pressure"] for x in e["rejected"]] + [e["pressure"]]
        if i == 0:
            assert pressures[0] == pytest.approx(env.pressure)
        assert pressures == pytest.approx(retries(env, pressures[0])[:len(pressures)])
        assert all(x["val_accuracy"] < 0.9999 for x in e["rejected"])
        assert r["meets_floor"] or e["tries"] == len(retries(env, pressures[0]))
    if not res.history[-1]["meets_floor"]:
        assert RunDir(tmp_path / "r").summary()["stopped"] == "floor"


def test_adaptive_pressure_grows_while_the_floor_holds(tmp_path):
    cfg = adaptive(evolution={"generations": 3, "max_drop": None}, measure={"costs": False})
    hist = evosynth.run(cfg, tmp_path / "r", progress=False, log=lambda s: None).history
    env = cfg.evolution.environment
    assert [r["environment"]["pressure"] for r in hist[1:]] == pytest.approx(
        [min(env.pressure * env.grow ** i, env.max_pressure) for i in range(3)])
    assert hist[-1]["kernel_clusters"] < hist[0]["kernel_clusters"]


def test_the_pressure_falls_on_clusters_and_the_synaptic_encoding_takes_it_on_synapses(
        tmp_path):
    """By default (synapse_share 0) a surviving neuron keeps every synapse that still has
    an input; the synaptic encoding, which has no clusters, loses synapses at the pressure
    itself."""
    from evosynth.config import EnvironmentConfig
    from evosynth.environment import factors

    env = factors(EnvironmentConfig(), 0.2)
    assert (env.cluster, env.synapse) == pytest.approx((0.8, 1.0))
    assert factors(EnvironmentConfig(), 0.2, synaptic=True).synapse == pytest.approx(0.8)
    runs = {}
    for kind in ("cluster", "synaptic"):
        cfg = adaptive(evolution={"generations": 1, "max_drop": None}, measure={"costs": False})
        cfg = dataclasses.replace(cfg, encoding=dataclasses.replace(cfg.encoding, kind=kind))
        runs[kind] = evosynth.run(cfg, tmp_path / kind, progress=False, log=lambda s: None)
    masks = load_file(str(runs["cluster"].run_dir.generation_dir(1) / "masks.safetensors"))
    alive = masks["fc1"].bool().any(1)
    fc2 = masks["fc2"].bool()  # its live neurons read every live fc1 neuron, and no other
    fc2 = fc2[fc2.any(1)]
    assert alive.sum() < len(alive) and fc2.all(0).equal(alive) and fc2.any(0).equal(alive)
    syn = runs["synaptic"].history
    assert syn[1]["synapses"] < 0.9 * syn[0]["synapses"]
    assert syn[1]["layers"]["fc1"]["filters"] == syn[0]["layers"]["fc1"]["filters"]


def test_target_stops_the_run(tmp_path):
    cfg = adaptive(evolution={"generations": 10, "max_drop": None,
                              "target": {"kernel_clusters": 300}})
    res = evosynth.run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    assert res.history[0]["kernel_clusters"] == 410  # lenet300's neurons
    assert res.history[-1]["kernel_clusters"] <= 300 < res.history[-2]["kernel_clusters"]
    assert RunDir(tmp_path / "r").summary()["stopped"] == "target"


@pytest.mark.parametrize("teacher", ["parent", "ancestor"])
def test_distillation_runs_and_changes_training(tmp_path, teacher):
    runs = []
    for distill in (0.0, 0.5):
        cfg = quick(evolution={"generations": 2},
                    train={"epochs": 1, "distill": distill, "teacher": teacher},
                    measure={"costs": False})
        runs.append(evosynth.run(cfg, tmp_path / str(distill), progress=False,
                                 log=lambda s: None))
    a, b = (r.best_model.state_dict() for r in runs)
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert runs[1].history[-1]["val_accuracy"] > 0.5


def test_a_teachers_cached_scores_train_as_the_teacher_itself():
    """Distillation reads a fixed teacher's scores from a table computed once; that table
    must train the student exactly as running the teacher on every batch does, and data
    that changes between epochs (augmentation) must keep the teacher itself."""
    from torch import nn

    from evosynth.config import TrainConfig
    from evosynth.data import TensorData
    from evosynth.seeding import generator
    from evosynth.train import teacher_scores, train

    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(300, 8, generator=g), torch.randint(0, 3, (300,), generator=g))
    teacher = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    student = nn.Linear(8, 3)
    cfg = TrainConfig(epochs=2, batch_size=64, distill=0.7)
    scores = teacher_scores(teacher, data, torch.device("cpu"))
    assert isinstance(scores, torch.Tensor) and scores.shape == (300, 3)
    trained = []
    for t in (teacher, scores, None):
        s = nn.Linear(8, 3)
        s.load_state_dict(student.state_dict())
        train(s, data, cfg, {}, generator(0, "t"), torch.device("cpu"), progress=False,
              teacher=t)
        trained.append(s.weight.detach())
    assert torch.allclose(trained[0], trained[1], atol=1e-6)
    assert not torch.allclose(trained[0], trained[2], atol=1e-3)  # the teacher mattered
    augmented = TensorData(data.x, data.y, augment=lambda x, y, gen: (x, y))
    assert teacher_scores(teacher, augmented, torch.device("cpu")) is teacher


def test_distillation_of_per_token_scores_compares_classes_token_by_token():
    """A sequence model's scores (N, T, C) for targets (N, T): the soft targets are a
    distribution over the C classes of each token, not over the T positions."""
    import torch.nn.functional as F

    from evosynth.config import TrainConfig
    from evosynth.train import soft_loss

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(3, 5, 10, generator=g), torch.randn(3, 5, 10, generator=g)
    y = torch.randint(0, 10, (3, 5), generator=g)
    cfg = TrainConfig(distill=0.5, temperature=2.0)
    flat = 4 * F.kl_div(F.log_softmax(student.reshape(15, 10) / 2, 1),
                        F.softmax(teacher.reshape(15, 10) / 2, 1), reduction="batchmean")
    # the teacher's scores come laid out as cross-entropy wants them: (N, C, T)
    assert torch.allclose(soft_loss(student, y, teacher.movedim(-1, 1), cfg), flat)


def test_a_run_recorded_before_the_adaptive_environment_resumes_as_it_ran(tmp_path):
    """Older config.yaml files have no evolution.environment: their runs followed the
    encoding's factors (the schedule environment), and resume must keep doing that."""
    import yaml

    cfg = quick(evolution={"generations": 1}, measure={"costs": False})
    evosynth.run(cfg, tmp_path / "r", progress=False, log=lambda s: None)
    path = tmp_path / "r" / "config.yaml"
    old = yaml.safe_load(path.read_text())
    del old["evolution"]["environment"]
    old["evolution"]["generations"] = 2
    path.write_text(yaml.safe_dump(old))
    (tmp_path / "r" / "run.json").unlink()
    assert RunDir(tmp_path / "r").config().evolution.environment.kind == "schedule"
    hist = evosynth.resume(tmp_path / "r", progress=False, log=lambda s: None).history
    assert [r["generation"] for r in hist] == [0, 1, 2]
    assert "environment" not in hist[2]  # no adaptive pressure: the factors were used


def test_the_loop_reads_the_noise_from_its_validation_set(tmp_path):
    """The standard error the controller allows for is the validation accuracy's, on the
    run's own validation examples: a generation short of the headroom by less than it
    holds the pressure, by more eases it; a run with `noise: 0` eases either way."""
    from evosynth.api import build
    from evosynth.evolution import Evolution
    from evosynth.rundir import RunDir

    def pressure_after(val: float, noise: float) -> tuple[float, int]:
        cfg = adaptive(evolution={"generations": 2, "max_drop": 0.1, "environment": {
            "kind": "adaptive", "ease": 0.5, "headroom": 0.5, "noise": noise}})
        model, data = build(cfg)
        evo = Evolution(cfg, model, data, RunDir(tmp_path / f"r{val}{noise}"),
                        log=lambda s: None, progress=False)
        n = len(data.val)
        evo.history = [{"generation": 0, "val_accuracy": 0.97},
                       {"generation": 1, "val_accuracy": val, "environment": {"pressure": 0.2}}]
        return evo.pressure(2), n

    # floor 0.87, headroom line 0.92; on the digits' 144 validation examples the standard
    # error of 0.90 is 2.5 points (0.25 of the allowed drop), of 0.88 2.7 points
    p, n = pressure_after(0.90, 1.0)  # reserve 0.3: 0.2 short, within the noise
    assert n == 144 and p == pytest.approx(0.2)
    assert pressure_after(0.90, 0.0)[0] == pytest.approx(0.1)
    assert pressure_after(0.88, 1.0)[0] == pytest.approx(0.1)  # reserve 0.1: beyond it


@pytest.mark.parametrize(("n_val", "warned"), [(40, True), (2000, False)])
def test_a_validation_set_too_small_for_the_floor_is_named_at_the_start(tmp_path, n_val,
                                                                        warned):
    """One example of 40 is 2.5 points: a floor 1 point below the ancestor cannot tell a
    loss from luck, and the run says so; 2,000 examples can (standard error < 1 point)."""
    torch.manual_seed(0)
    x = torch.randn(2000 + n_val, 8)
    y = (x[:, 0] > 0).long()
    lines = []
    evosynth.evolve(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(),
                                        torch.nn.Linear(16, 2)),
                    (x[:2000], y[:2000]), val_data=(x[2000:], y[2000:]),
                    config={"evolution": {"generations": 0}, "ancestor_train": {"epochs": 1}},
                    run_dir=tmp_path / "r", log=lines.append)
    said = [s for s in lines if s.startswith("warning: the validation set")]
    assert bool(said) is warned
    if warned:
        assert f"has {n_val} examples" in said[0] and "\n" not in said[0]
