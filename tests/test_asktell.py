"""Ask/tell: your training loop, evosynth's heredity, lineage and run directory."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import evosynth
from evosynth.blame import blame_order, cut_share, damage
from evosynth.clusters import live_filters
from evosynth.data.digits import load_digits
from evosynth.rundir import RunDir


@pytest.fixture(scope="module")
def digits():
    train, _, _ = load_digits()
    return train.x[:600], train.y[:600], train.x[1200:1500], train.y[1200:1500]


def fit(model, x, y, epochs=1, candidate=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)
    if candidate is not None:
        candidate.attach(opt)
    for _ in range(epochs):
        for i in range(0, len(x), 50):
            loss = F.cross_entropy(model(x[i:i + 50]), y[i:i + 50])
            opt.zero_grad()
            loss.backward()
            opt.step()


def accuracy(model, x, y):
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def ancestor(digits):
    x, y, _, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    fit(net, x, y, 3)
    return net


CONFIG = {"evolution": {"generations": 2, "offspring": 2, "population": 2, "parents": 2},
          "measure": {"costs": False}}


def drive(syn, digits, stop_after: int | None = None) -> None:
    x, y, xv, yv = digits
    told = 0
    while not syn.done:
        for cand in syn.ask():
            if stop_after is not None and told == stop_after:
                return
            fit(cand.model, x, y, 1, cand)
            syn.tell(cand, accuracy(cand.model, xv, yv))
            told += 1


def files(run):
    hist = [{k: v for k, v in json.loads(line).items() if k != "wall_seconds"}
            for line in (run / "history.jsonl").read_text().splitlines()]
    tensors = {str(p.relative_to(run)): p.read_bytes()
               for p in sorted(run.glob("generations/**/*.safetensors"))}
    return hist, tensors


def test_ask_tell_population_run_and_its_resume_are_identical(digits, tmp_path):
    net = ancestor(digits)
    _, _, xv, yv = digits
    whole = evosynth.Synthesis(net, digits[0][:8], accuracy(net, xv, yv), CONFIG,
                               run_dir=tmp_path / "whole", log=lambda s: None)
    drive(whole, digits)
    assert RunDir(tmp_path / "whole").config().device == "auto"  # a resume resolves it anew
    hist, tensors = files(tmp_path / "whole")
    assert [r["generation"] for r in hist] == [0, 1, 2]
    assert all(len(o["parents"]) == 2 for o in hist[2]["offspring"])
    assert "population/1.safetensors" in "".join(tensors)
    # stop in the middle of generation 2 (one candidate told), resume, finish
    part = evosynth.Synthesis(net, digits[0][:8], accuracy(net, xv, yv), CONFIG,
                              run_dir=tmp_path / "part", log=lambda s: None)
    drive(part, digits, stop_after=3)
    assert part.generation == 2
    again = evosynth.Synthesis.resume(net, digits[0][:8], tmp_path / "part", log=lambda s: None)
    assert [c.id for c in again.ask()] == ["2.1"]  # 2.0 was told before the stop
    drive(again, digits)
    assert files(tmp_path / "part") == (hist, tensors)


def test_tell_refuses_a_candidate_whose_dead_synapses_moved(digits, tmp_path):
    net = ancestor(digits)
    syn = evosynth.Synthesis(net, digits[0][:8], 0.9, {"evolution": {"generations": 1}},
                             run_dir=tmp_path / "r", log=lambda s: None)
    cand = syn.ask()[0]
    dead = ~cand.masks["1"]
    assert dead.any()
    with torch.no_grad():
        cand.model[1].weight[dead] = 0.5  # trained without attach/enforce
    with pytest.raises(evosynth.UserError, match=r"dead entries of 1\.weight are no longer zero"):
        syn.tell(cand, 0.9)
    cand.enforce()
    assert syn.tell(cand, 0.9)["generation"] == 1
    with pytest.raises(evosynth.UserError, match="not one of generation"):
        syn.tell(cand, 0.9)


def test_a_told_score_below_the_floor_is_asked_again_in_a_gentler_environment(digits,
                                                                              tmp_path):
    net = ancestor(digits)
    syn = evosynth.Synthesis(net, digits[0][:8], 0.9,
                             {"evolution": {"generations": 1, "max_drop": 0.01}},
                             run_dir=tmp_path / "r", log=lambda s: None)
    first = syn.ask()[0]
    assert syn.tell(first, 0.5) is None  # below the floor: the generation is bred again
    second = syn.ask()[0]
    assert second is not first and second.job.attempt == 1
    assert second.masks["1"].sum() > first.masks["1"].sum()  # gentler
    rec = syn.tell(second, 0.895)
    assert rec["environment"]["tries"] == 2 and rec["meets_floor"]
    assert rec["environment"]["rejected"][0]["val_accuracy"] == 0.5
    assert syn.done and syn.ask() == []


@pytest.mark.parametrize(("granularity", "room"),
                         [("filter", False), ("kernel", True), ("filter+kernel", True)])
def test_room_is_counted_in_the_clusters_the_encoding_draws(digits, tmp_path, granularity,
                                                            room):
    """A layer may retire only while the layers left can lose one drawn cluster per
    generation at the gentlest pressure (5%): 13 filters are 0.65 expected deaths whatever
    the 104 kernels behind them (a LeNet-5 run spent a generation removing nothing); at
    kernel granularity the kernels are what is drawn, and under filter+kernel half of
    them count (kernel_share)."""
    x = digits[0]
    net = nn.Sequential(nn.Conv2d(1, 8, 5, stride=4), nn.ReLU(), nn.Conv2d(8, 13, 3, stride=2),
                        nn.ReLU(), nn.Flatten(), nn.Linear(52, 10))
    cfg = {"encoding": {"granularity": granularity}, "measure": {"costs": False}}
    syn = evosynth.Synthesis(net, x[:8], 0.9, cfg, run_dir=tmp_path / "r", log=lambda s: None)
    ancestor = syn.evo.population[0]
    assert syn.evo.room_left(ancestor, {"2"}) is room
    assert syn.evo.room_left(ancestor, {"0", "2"})  # 21 filters: 1.05 expected deaths


def retiring(digits, tmp_path, narrow: int, generations: int) -> evosynth.Synthesis:
    """An ask/tell run of a trained 64-``narrow``-10 MLP that may retire one layer, its
    generations tried once each."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, narrow),
                        nn.ReLU(), nn.Linear(narrow, 10))
    fit(net, x, y, 2)
    cfg = {"evolution": {"generations": generations, "max_drop": 0.01,
                         "environment": {"tries": 1, "retire": 1, "pressure": 0.3}},
           "measure": {"costs": False}}
    return evosynth.Synthesis(net, x[:8], 0.9, cfg, run_dir=tmp_path / "r",
                              log=lambda s: None)


def test_a_layer_that_runs_out_of_room_retires_and_the_others_evolve_on(digits, tmp_path):
    """environment.retire: when every try of a generation fails, the layer whose lost
    filters were each the largest share of it (no validation data in ask/tell: the
    narrowest that lost any) stops evolving: its filters and synapses survive every later
    draw, while the other layer keeps losing."""
    syn = retiring(digits, tmp_path, 32, 4)
    first = syn.ask()[0]
    lost = {n: int((~live_filters(first.masks[n])).sum()) for n in ("1", "3")}
    assert lost["1"] and lost["3"]  # both lost filters: the narrower ("3") is blamed
    assert cut_share(torch.ones_like(first.masks["3"]), first.masks["3"]) == lost["3"] / 32
    assert syn.tell(first, 0.5) is None  # the round's only try failed: a layer retires
    retired = syn.evo.load_attempts(1)[0]["retired"]
    assert retired == "3"
    other = "3" if retired == "1" else "1"
    parent = {n: torch.ones_like(m) for n, m in first.masks.items()}
    for gen in (1, 2):
        cand = syn.ask()[0]
        fed = live_filters(cand.masks["1"]) if retired == "3" else slice(None)
        assert torch.equal(live_filters(cand.masks[retired]), live_filters(parent[retired]))
        assert torch.equal(cand.masks[retired][:, fed], parent[retired][:, fed])
        assert cand.masks[other].sum() < parent[other].sum()
        rec = syn.tell(cand, 0.9 if gen == 1 else 0.892)  # the second spends the reserve
        assert rec["generation"] == gen and rec["environment"]["retired"] == [retired]
        parent = cand.masks
    # no retirement left: the clusters stay and the synapses evolve on (environment.thin)
    assert syn.tell(syn.ask()[0], 0.5) is None
    assert syn.evo.load_attempts(3)[-1]["then"] == "synapses"
    thin = syn.ask()[0]
    lost = {}
    for n, m in thin.masks.items():
        assert torch.equal(live_filters(m), live_filters(parent[n]))  # no filter drawn
        assert not (m & ~parent[n]).any()  # a dead synapse stays dead
        lost[n] = 1 - int(m.sum()) / int(parent[n].sum())
    # one budget for the network, by magnitude: the wide layer's small weights go first
    assert lost["1"] > 0.1 and lost["1"] > 2 * max(lost["3"], lost["5"])
    rec = syn.tell(thin, 0.892)
    assert rec["generation"] == 3 and rec["environment"]["phase"] == "synapses"
    # it lost nothing against its parent: the next environment is harsher, reserve or not
    env = syn.evo.cfg.evolution.environment
    assert syn.evo.pressures(4)[0] == (
        pytest.approx(min(rec["environment"]["pressure"] * env.grow, env.max_pressure)),
        "synapses")
    # in the synapse phase a generation whose tries all fail ends the run
    assert syn.tell(syn.ask()[0], 0.5)["meets_floor"] is False and syn.done


def test_when_only_the_culprit_has_room_the_others_retire_instead(digits, tmp_path,
                                                                 monkeypatch):
    """Blamed, the wide layer cannot retire: the narrow one left alone could not lose one
    neuron per generation at the gentlest pressure. The narrow one retires instead and the
    wide one evolves on alone, where the cluster phase used to end with it wide."""
    import evosynth.evolution

    syn = retiring(digits, tmp_path, 8, 3)
    monkeypatch.setattr(evosynth.evolution, "blame_order", lambda *a: ["1", "3"])
    parent = syn.evo.population[0]
    assert not syn.evo.room_left(parent, {"3"}) and syn.evo.room_left(parent, {"1"})
    assert syn.tell(syn.ask()[0], 0.5) is None
    assert syn.evo.load_attempts(1)[0]["retired"] == "3"
    cand = syn.ask()[0]
    assert torch.equal(live_filters(cand.masks["3"]), live_filters(parent.masks["3"]))
    assert live_filters(cand.masks["1"]).sum() < live_filters(parent.masks["1"]).sum()
    # the blame order itself: cut layers by cost per filter, then the uncut, narrowest first
    monkeypatch.undo()
    child = {n: m.clone() for n, m in parent.masks.items()}
    child["1"][:3] = False
    assert blame_order(syn.evo.breeder, parent, child, ["1", "5", "3"]) == ["1", "3", "5"]
    assert blame_order(syn.evo.breeder, parent, parent.masks, ["1", "3"]) == []


def test_a_layer_retired_early_evolves_again_once_nothing_else_can(digits, tmp_path):
    """environment.revisit: when a generation has no layer left to retire, the layers
    retired in earlier generations evolve again for one more round, once per run."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32),
                        nn.ReLU(), nn.Linear(32, 10))
    fit(net, x, y, 2)
    cfg = {"evolution": {"generations": 6, "max_drop": 0.01, "environment": {
        "tries": 1, "retire": 1, "pressure": 0.3, "revisit": True}},
        "measure": {"costs": False}}
    syn = evosynth.Synthesis(net, x[:8], 0.9, cfg, run_dir=tmp_path / "r", log=lambda s: None)
    assert syn.tell(syn.ask()[0], 0.5) is None  # generation 1: "3" retires
    assert syn.tell(syn.ask()[0], 0.9)["environment"]["retired"] == ["3"]
    assert syn.evo.revisitable() == ["3"]
    assert syn.tell(syn.ask()[0], 0.892)["environment"]["retired"] == ["3"]  # generation 2
    parent = syn.evo.population[0].masks
    # generation 3: its only try fails, no retirement is left: "3" comes back
    assert syn.tell(syn.ask()[0], 0.5) is None
    assert syn.evo.load_attempts(3)[-1]["revisit"] == ["3"]
    cand = syn.ask()[0]
    assert syn.evo.pressures(3, syn.evo.load_attempts(3))[1][1] == "clusters"
    again = evosynth.Synthesis.resume(net, x[:8], tmp_path / "r", log=lambda s: None).ask()[0]
    assert all(torch.equal(again.masks[n], cand.masks[n]) for n in cand.masks)  # resumes
    assert live_filters(cand.masks["3"]).sum() < live_filters(parent["3"]).sum()
    rec = syn.tell(cand, 0.9)
    assert rec["environment"]["retired"] == [] and rec["environment"]["revisited"]
    assert syn.evo.revisitable() == []  # once per run
    # the same run with revisit off enters the synapse phase at generation 3 instead
    off = json.loads(json.dumps(cfg))
    off["evolution"]["environment"]["revisit"] = False
    syn = evosynth.Synthesis(net, x[:8], 0.9, off, run_dir=tmp_path / "off", log=lambda s: None)
    for score in (0.5, 0.9, 0.892, 0.5):
        syn.tell(syn.ask()[0], score)
    assert syn.evo.load_attempts(3)[-1]["then"] == "synapses"


def test_blame_falls_on_the_layer_whose_cut_alone_costs_the_parent_most(digits):
    """With validation data the culprit is measured: the parent with one layer cut as in
    the failed offspring, untrained, loses the most validation accuracy."""
    from evosynth.breeding import Breeder, Fitness, Parent
    from evosynth.config import validate
    from evosynth.data import Splits, TensorData

    x, y, xv, yv = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 32),
                        nn.ReLU(), nn.Linear(32, 10))
    fit(net, x, y, 3)
    data = Splits(TensorData(x, y), TensorData(xv, yv), None, 10)
    breeder = Breeder(validate({}), net, data, x[:8])
    masks = {n: torch.ones_like(p.weight, dtype=torch.bool)
             for n, p in net.named_modules() if n in ("1", "3", "5")}
    state = {k: v.clone() for k, v in net.state_dict().items()}
    parent = Parent("0.0", state, masks, Fitness(accuracy(net, xv, yv)))
    child = dict(masks)
    child["1"] = masks["1"].clone()
    child["1"][:2] = False  # 2 of 64 hidden units: a small cut
    child["3"] = masks["3"].clone()
    child["3"][:24] = False  # 24 of 32: most of the layer
    lost = damage(breeder, parent, child, ["1", "3", "5"])
    assert set(lost) == {"1", "3"}  # layer 5 was not cut: not a suspect
    cut = copy.deepcopy(net)  # the parent with layer 3's cut alone, untrained
    with torch.no_grad():
        cut[3].weight[:24] = 0
        cut[3].bias[:24] = 0
    assert lost["3"] == pytest.approx(parent.fitness.value - accuracy(cut, xv, yv))
    assert lost["3"] > 0.05  # most of a layer: a visible loss
    per_filter = {"1": lost["1"] / 2, "3": lost["3"] / 24}
    assert blame_order(breeder, parent, child, ["1", "3"])[0] == max(per_filter,
                                                                     key=per_filter.get)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())  # untouched


@pytest.mark.parametrize("parent_grows", [False, True])
def test_with_parent_grows_an_offspring_that_lost_nothing_makes_it_harsher(tmp_path,
                                                                           parent_grows):
    """Reserve spent, score as its parent's: the reserve rule eases the environment; with
    ``parent_grows`` the parent is the yardstick in the cluster phase too, and it grows."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    env = {"pressure": 0.2, "grow": 1.5, "ease": 0.5, "parent_grows": parent_grows}
    syn = evosynth.Synthesis(net, torch.randn(8, 16), 0.90,
                             {"evolution": {"offspring": 1, "max_drop": 0.1,
                                            "environment": env},
                              "measure": {"costs": False}},
                             run_dir=tmp_path / "r", log=lambda s: None)
    for _ in range(2):  # 0.82: a fifth of the allowed drop left, twice
        syn.tell(syn.ask()[0], 0.82)
    assert syn.history[2]["environment"]["pressure"] == pytest.approx(0.1)  # eased after g1
    # g2 lost nothing against g1: harsher with the rule, gentler without
    assert syn.evo.pressure(3) == pytest.approx(0.15 if parent_grows else 0.05)


def small_cnn(digits, tmp_path, c1: int, c2: int, generations: int) -> evosynth.Synthesis:
    """An ask/tell run of a trained two-conv net (``c1`` then ``c2`` filters) under the
    defaults (the kernel phase included), its generations tried once each, whose cluster
    phase has just ended: its first generation's only try failed."""
    x, y, _, _ = digits
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(4), nn.Conv2d(c1, c2, 3),
                        nn.ReLU(), nn.Flatten(), nn.Linear(c2 * 4 * 4, 10))
    fit(net, x, y, 1)
    cfg = {"evolution": {"generations": generations, "max_drop": 0.01,
                         "environment": {"tries": 1, "retire": 0, "pressure": 0.3}},
           "measure": {"costs": False}}
    syn = evosynth.Synthesis(net, x[:8], 0.9, cfg, run_dir=tmp_path / "r", log=lambda s: None)
    assert syn.tell(syn.ask()[0], 0.5) is None
    return syn


def test_the_kernel_phase_comes_between_the_clusters_and_the_synapses(digits, tmp_path):
    """``environment.kernel_phase``: once no try can lose filters, the conv layer reading
    several channels loses whole kernels (kernel clusters fall, no filter dies, the first
    conv and the linear layer keep every synapse) for as long as a try holds the floor;
    then the synapse phase; then the run ends."""
    syn = small_cnn(digits, tmp_path, 4, 8, 5)
    assert syn.evo.load_attempts(1)[-1]["then"] == "kernels"
    parent = {n: torch.ones_like(m) for n, m in syn.ask()[0].masks.items()}
    for gen in (1, 2):
        cand = syn.ask()[0]
        kernels = cand.masks["3"].reshape(8, 4, -1)
        alive = kernels.any(dim=2)
        assert bool(kernels[alive].all())  # every surviving kernel whole
        assert 0 < int(alive.sum()) < int(parent["3"].reshape(8, 4, -1).any(dim=2).sum())
        assert bool(alive.any(dim=1).all())  # no filter died
        assert not (cand.masks["3"] & ~parent["3"]).any()  # a dead kernel stays dead
        for name in ("0", "6"):
            assert torch.equal(cand.masks[name], parent[name]), name
        rec = syn.tell(cand, 0.9)
        assert rec["generation"] == gen and rec["environment"]["phase"] == "kernels"
        parent = cand.masks
    assert syn.tell(syn.ask()[0], 0.5) is None  # the kernel phase's round fails
    assert syn.evo.load_attempts(3)[-1]["then"] == "synapses"
    thin = syn.ask()[0].masks
    assert thin["6"].sum() < parent["6"].sum() and not (thin["6"] & ~parent["6"]).any()
    assert syn.tell(syn.ask()[0], 0.9)["environment"]["phase"] == "synapses"
    assert syn.tell(syn.ask()[0], 0.5)["meets_floor"] is False and syn.done


def test_a_kernel_phase_with_one_kernel_left_per_filter_moves_on(digits, tmp_path):
    """Once every filter of the convs reading several channels is down to one kernel, the
    kernel phase has nothing left to draw: the next generation is the synapse phase's,
    not a generation that trains the parent unchanged, and without a synapse phase
    (``thin: false``) the run ends there."""
    syn = small_cnn(digits, tmp_path, 2, 3, 12)
    gen = 1
    while syn.evo.kernels_left():
        rec = syn.tell(syn.ask()[0], 0.9)
        assert rec["environment"]["phase"] == "kernels" and gen < 10
        gen += 1
    assert syn.evo.population[0].masks["3"].reshape(3, 2, -1).any(dim=2).sum(dim=1).tolist() \
        == [1, 1, 1]
    assert {phase for _, phase in syn.evo.pressures(gen)} == {"synapses"}
    assert not syn.done
    syn.evo.cfg.evolution.environment.thin = False  # without a synapse phase: the end
    assert syn.done and syn.evo.summary()["stopped"] == "nothing left"
    syn.evo.cfg.evolution.environment.thin = True
    rec = syn.tell(syn.ask()[0], 0.9)
    assert rec["generation"] == gen and rec["environment"]["phase"] == "synapses"
