import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from evosynth.clusters import cluster_view, prunable_layers
from evosynth.config import EncodingConfig, validate
from evosynth.coupling import Coupling
from evosynth.encoding import make_encoding, survival_probability
from evosynth.errors import UserError
from evosynth.models.lenet import LeNet5
from evosynth.seeding import generator


def strengths(n=1000, seed=0):
    return torch.rand(n, generator=torch.Generator().manual_seed(seed)) ** 3


@pytest.mark.parametrize("mode", ["max", "budget"])
@pytest.mark.parametrize("factor", [0.05, 0.3, 0.7, 1.0])
def test_probabilities_in_unit_interval_and_monotone(mode, factor):
    x = strengths()
    p = survival_probability(x, factor, mode)
    assert p.min() >= 0 and p.max() <= 1
    order = torch.argsort(x)
    assert torch.all(torch.diff(p[order]) >= -1e-12), "survival must rise with strength"


def test_max_mode_strongest_gets_exactly_the_factor():
    x = strengths()
    p = survival_probability(x, 0.6, "max")
    assert p[x.argmax()] == pytest.approx(0.6, abs=1e-9)
    # the paper's shape: F * (exp(x / Z) - 1) with Z = max / ln 2
    z = float(x.max()) / math.log(2)
    assert torch.allclose(p, (0.6 * torch.expm1(x.double() / z)).clamp(0, 1))


@pytest.mark.parametrize("factor", [0.1, 0.5, 0.7, 0.95])
def test_budget_mode_hits_requested_expected_survival(factor):
    p = survival_probability(strengths(5000, 1), factor, "budget")
    assert float(p.mean()) == pytest.approx(factor, abs=1e-6)


def test_budget_mode_keeps_convex_paper_shape():
    x = strengths()
    p = survival_probability(x, 0.5, "budget")
    unsat = p < 1
    # p = exp(x / Z) - 1 for some Z: log1p(p) is proportional to x where unsaturated
    ratio = torch.log1p(p[unsat]) / x.double()[unsat]
    assert float(ratio.std() / ratio.mean()) < 1e-9


def lenet_and_encoding(coupled=False, **enc):
    """LeNet-5 and an encoding; per-layer budgets of own strength unless ``enc`` says."""
    torch.manual_seed(0)
    model = LeNet5()
    layers = prunable_layers(model)
    cfg = validate({"encoding": {"normalization": "budget", "strength": "own",
                                 "granularity": "kernel", **enc},
                    "evolution": {"environment": {"kind": "schedule"}}}).encoding
    coupling = Coupling.build(model, torch.randn(2, 1, 28, 28), layers) if coupled else None
    return model, layers, make_encoding(cfg, layers, coupling=coupling)


def weights_and_masks(model, layers):
    mods = dict(model.named_modules())
    w = {n: mods[n].weight.detach() for n in layers}
    return w, {n: torch.ones_like(w[n], dtype=torch.bool) for n in layers}


@pytest.mark.parametrize("granularity", ["kernel", "filter"])
def test_no_synapse_survives_in_a_dead_cluster(granularity):
    model, layers, enc = lenet_and_encoding(granularity=granularity, cluster_factor=0.5,
                                            synapse_factor=0.9)
    w, m = weights_and_masks(model, layers)
    child = enc.sample(w, m, 1, generator(0, "t"))
    # a cluster is dead when its draw failed: synapses are then all dead, never partly
    for name, layer in layers.items():
        if enc.is_protected(name):
            continue
        view = cluster_view(child[name], layer, granularity)
        n_live = view.sum(1)
        assert (n_live == 0).sum() > 0, "factor 0.5 must kill some clusters"
    # with synapse factor 1 the survivors are exactly the drawn clusters: all or nothing
    model, layers, enc = lenet_and_encoding(granularity=granularity, cluster_factor=0.5,
                                            synapse_factor=1.0)
    child = enc.sample(w, m, 1, generator(0, "t"))
    for name, layer in layers.items():
        view = cluster_view(child[name], layer, granularity)
        n_live = view.sum(1)
        assert torch.all((n_live == 0) | (n_live == view.shape[1]))


def test_dead_in_parent_stays_dead_and_same_seed_same_masks():
    model, layers, enc = lenet_and_encoding(cluster_factor=0.8, synapse_factor=0.8)
    w, m = weights_and_masks(model, layers)
    a = enc.sample(w, m, 1, generator(7, "s"))
    b = enc.sample(w, a, 2, generator(7, "s2"))
    for n in layers:
        assert not torch.any(b[n] & ~a[n]), "a synapse dead in the parent came back"
    a2 = enc.sample(w, m, 1, generator(7, "s"))
    assert all(torch.equal(a[n], a2[n]) for n in layers)
    c = enc.sample(w, m, 1, generator(8, "s"))
    assert any(not torch.equal(a[n], c[n]) for n in layers)


def test_budget_factor_sets_the_shrink_rate_per_layer():
    model, layers, enc = lenet_and_encoding(cluster_factor=0.5, synapse_factor=1.0,
                                            layers={"conv2": {"cluster": 0.9}})
    w, m = weights_and_masks(model, layers)
    counts = {"conv2": [], "fc1": []}
    for k in range(20):
        child = enc.sample(w, m, 1, generator(0, k))
        for n in counts:
            counts[n].append(float(child[n].float().mean()))
    assert sum(counts["conv2"]) / 20 == pytest.approx(0.9, abs=0.02)
    assert sum(counts["fc1"]) / 20 == pytest.approx(0.5, abs=0.03)


def test_schedule_and_layer_patterns_resolve():
    _, _, enc = lenet_and_encoding(cluster_factor=[0.9, 0.8, 0.7], synapse_factor=0.6,
                                   layers={"fc*": {"synapse": [0.5, 0.4]},
                                           "conv2": {"cluster": {1: 0.85, 4: 1.0}}})
    assert enc.factors("conv1", 1) == (0.6, 0.9)
    assert enc.factors("conv1", 3) == (0.6, 0.7)
    assert enc.factors("conv1", 9) == (0.6, 0.7)
    assert enc.factors("fc1", 2) == (0.4, 0.8)
    assert [enc.factors("conv2", g)[1] for g in (1, 3, 4, 20)] == [0.85, 0.85, 1.0, 1.0]


def test_phase_schedule_must_start_at_generation_1():
    with pytest.raises(UserError, match="start at generation 1"):
        validate({"encoding": {"cluster_factor": {3: 0.5}}})


def test_output_neurons_never_die_by_default():
    model, layers, enc = lenet_and_encoding(cluster_factor=0.05, synapse_factor=0.05)
    w, m = weights_and_masks(model, layers)
    for g in range(1, 4):
        m = enc.sample(w, m, g, generator(0, g))
        assert bool(m["fc2"].any(dim=1).all())
    model, layers, enc = lenet_and_encoding(cluster_factor=0.05, synapse_factor=0.05,
                                            protect_output=False)
    w, m = weights_and_masks(model, layers)
    m = enc.sample(w, m, 1, generator(0, 1))
    assert not bool(m["fc2"].any(dim=1).all())


def test_synaptic_encoding_draws_no_clusters():
    """Whatever the cluster factor, the Darwin baseline kills synapses only by their own draw."""
    model, layers, enc = lenet_and_encoding(kind="synaptic", synapse_factor=1.0,
                                            cluster_factor=0.05)
    w, m = weights_and_masks(model, layers)
    child = enc.sample(w, m, 1, generator(0, "s"))
    assert all(bool(child[n].all()) for n in layers)


def network_draw_by_strength(enc, w, m, factor):
    """LeNet-5's evolving clusters' survival probabilities under the global budget, weakest
    first (by mean-normalized strength), checked to spend ``factor`` and to rise with
    strength."""
    probs = enc.cluster_probabilities(w, m, 1, None)
    joint = torch.cat([probs[n] for n in ("conv1", "conv2", "fc1")])
    assert float(joint.mean()) == pytest.approx(factor, abs=1e-6)
    x = torch.cat([enc.strengths(n, w, m) / enc.strengths(n, w, m).mean()
                   for n in ("conv1", "conv2", "fc1")])
    joint = joint[torch.argsort(x)]
    assert bool((torch.diff(joint) >= -1e-12).all())
    return joint


def test_global_budget_sets_the_network_wide_share_with_one_scale():
    model, layers, enc = lenet_and_encoding(granularity="filter", normalization="global",
                                            cluster_factor=0.6, synapse_factor=1.0)
    w, m = weights_and_masks(model, layers)
    with torch.no_grad():  # make conv2's filters far more uneven than fc1's neurons
        w["conv2"].mul_(torch.linspace(0.01, 3, 50).view(-1, 1, 1, 1))
    # one Z for all: survival is one increasing function of the mean-normalized strength
    network_draw_by_strength(enc, w, m, 0.6)
    assert "fc2" not in enc.cluster_probabilities(w, m, 1, None)  # the protected output


def test_rank_scale_follows_the_order_of_strengths_however_close():
    # a trained layer's cluster strengths lie close together (LeNet-5's fc1: +-20%)
    x = 1 + 0.2 * torch.randn(1000, generator=torch.Generator().manual_seed(0))
    by_value = survival_probability(x, 0.7, "budget")
    by_rank = survival_probability(x, 0.7, "budget", rank=True)
    assert float(by_rank.mean()) == pytest.approx(0.7, abs=1e-6)  # the same budget
    order = torch.argsort(x)
    assert bool((torch.diff(by_rank[order]) >= -1e-12).all())
    weakest, strong = order[:250], order[500:]
    # by value the weakest quarter dies about half the time, and the strong half often;
    # by rank the weakest quarter dies most of the time and the strong half hardly ever
    assert float((1 - by_value[weakest]).mean()) < 0.6
    assert float((1 - by_rank[weakest]).mean()) > 0.75
    assert float((1 - by_value[strong]).mean()) > 0.1
    assert float((1 - by_rank[strong]).mean()) < 0.02
    # ties share a probability, a zero strength still never survives
    tied = survival_probability(torch.tensor([0.0, 1.0, 1.0, 2.0]), 0.5, "budget", rank=True)
    assert tied[0] == 0 and tied[1] == tied[2] < tied[3]


@pytest.mark.parametrize("scale", ["value", "rank"])
def test_rank_scale_draws_the_network_budget_by_order(scale):
    model, layers, enc = lenet_and_encoding(granularity="filter", normalization="global",
                                            cluster_factor=0.6, scale=scale)
    w, m = weights_and_masks(model, layers)
    deaths = 1 - network_draw_by_strength(enc, w, m, 0.6)
    # the network's weakest 40% of clusters carry this share of the expected deaths: by
    # value hardly more than their number (the strengths of a fresh network lie close),
    # by rank most of them
    weakest = float(deaths[: int(0.4 * len(deaths))].sum() / deaths.sum())
    assert weakest > 0.7 if scale == "rank" else weakest < 0.5


def test_group_strength_sees_the_synapses_that_read_a_filter():
    model, layers, enc = lenet_and_encoding(coupled=True, granularity="filter",
                                            strength="group")
    w, m = weights_and_masks(model, layers)
    before = enc.strengths("conv2", w, m)
    cut = {n: v.clone() for n, v in m.items()}
    cut["fc1"].view(500, 50, 16)[:, 7] = False  # nobody reads conv2's filter 7 any more
    after = enc.strengths("conv2", w, cut)
    assert after[7] < before[7] - 0.5
    own = lenet_and_encoding(granularity="filter", strength="own")[2]
    assert torch.equal(own.strengths("conv2", w, cut), own.strengths("conv2", w, m))


def test_filter_then_kernel_draws():
    model, layers, enc = lenet_and_encoding(granularity="filter+kernel", cluster_factor=0.7,
                                            kernel_factor=0.5, synapse_factor=1.0)
    w, m = weights_and_masks(model, layers)
    child = enc.sample(w, m, 1, generator(0, "k"))
    kernels = child["conv2"].reshape(50, 20, 25).any(-1)
    filters = kernels.any(1)
    assert 0.55 < float(filters.float().mean()) < 0.85
    # kernels die inside surviving filters, about half of them, whole
    assert 0.35 < float(kernels[filters].float().mean()) < 0.65
    k = child["conv2"].reshape(1000, 25)
    assert bool(((k.sum(1) == 0) | (k.sum(1) == 25)).all())


def test_any_module_with_exclusions():
    model = nn.Sequential(nn.Conv1d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6, 4))
    layers = prunable_layers(model, exclude=["3"])
    assert list(layers) == ["0"]
    enc = make_encoding(EncodingConfig(cluster_factor=0.5), layers)
    assert enc.output_layer == "0"


def test_wide_layers_feel_more_pressure():
    """width_exponent: a layer wider than the geometric mean width feels the pressure x
    (width / mean) ** b, capped, on synapses too; narrower layers feel it as it is; the
    output layer (protected) is not drawn."""
    from evosynth.encoding import Environment

    model, layers, enc = lenet_and_encoding(granularity="filter")
    w, m = weights_and_masks(model, layers)
    env = Environment(cluster=0.8, synapse=0.9, kernel=1.0, width_exponent=0.5,
                      max_pressure=0.45)
    probs = enc.cluster_probabilities(w, m, 1, enc.sized(m, env))
    ref = (20 * 50 * 500) ** (1 / 3)  # 79.4: conv1 and conv2 are narrower, fc1 wider
    for name in ("conv1", "conv2"):
        assert float(probs[name].mean()) == pytest.approx(0.8, abs=1e-6)
        assert enc.factors(name, 1, enc.sized(m, env))[0] == pytest.approx(0.9)
    assert float(probs["fc1"].mean()) == pytest.approx(1 - 0.45, abs=1e-6)  # capped
    synapse_p = 0.1 * (500 / ref) ** 0.5  # 0.25, under the cap
    assert enc.factors("fc1", 1, enc.sized(m, env))[0] == pytest.approx(1 - synapse_p)
    gentle = Environment(cluster=0.9, synapse=1.0, kernel=1.0, width_exponent=0.5,
                         max_pressure=0.45)
    p_fc1 = 0.1 * (500 / ref) ** 0.5
    fc1 = enc.cluster_probabilities(w, m, 1, enc.sized(m, gentle))["fc1"]
    assert float(fc1.mean()) == pytest.approx(1 - p_fc1, abs=1e-6)
    assert "fc2" not in probs
    flat = enc.cluster_probabilities(w, m, 1, Environment(cluster=0.8, synapse=0.9, kernel=1.0))
    assert all(float(flat[n].mean()) == pytest.approx(0.8, abs=1e-6) for n in flat)


@pytest.mark.parametrize("normalization", ["max", "budget", "global"])
@pytest.mark.parametrize("granularity", ["filter", "filter+kernel"])
def test_a_retired_layer_loses_nothing_while_the_others_are_drawn(normalization,
                                                                  granularity):
    """A retired layer keeps every synapse under any normalization (in ``max`` a factor of 1
    would still kill all but the strongest); a network-wide budget is shared by the others
    alone, so they lose as much as without it."""
    from evosynth.encoding import Environment

    model, layers, enc = lenet_and_encoding(granularity=granularity,
                                            normalization=normalization)
    w, m = weights_and_masks(model, layers)
    harsh = Environment(cluster=0.5, synapse=0.6, kernel=0.6)
    out = enc.sample(w, m, 1, generator(0, "t"), replace(harsh, retired=frozenset({"conv2"})))
    assert torch.equal(out["conv2"], m["conv2"])
    for name in ("conv1", "fc1"):
        assert out[name].sum() < m[name].sum()
    probs = enc.cluster_probabilities(w, m, 1, replace(harsh, retired=frozenset({"conv2"})))
    assert "conv2" not in probs
    if normalization == "global":  # the shared budget: the live clusters of conv1 and fc1
        joint = torch.cat([probs["conv1"], probs["fc1"]])
        assert float(joint.mean()) == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("normalization", ["max", "budget", "global"])
@pytest.mark.parametrize("granularity", ["filter", "filter+kernel"])
def test_the_synapse_phase_draws_no_cluster_and_one_budget_of_synapses(normalization,
                                                                      granularity):
    """In the synapse phase (cluster factor 1) no filter or kernel is drawn under any
    normalization (``max`` with a factor of 1 would still kill all but the strongest) and a
    retired layer's synapses evolve too; under ``global`` the expected survivors over the
    whole network are the factor, the small weights going first."""
    from evosynth.config import EnvironmentConfig
    from evosynth.encoding import Environment
    from evosynth.environment import factors

    model, layers, enc = lenet_and_encoding(granularity=granularity,
                                            normalization=normalization)
    w, m = weights_and_masks(model, layers)
    env = factors(EnvironmentConfig(), 0.4, retired={"conv2"}, phase="synapses")
    assert env == Environment(cluster=1.0, synapse=0.6, kernel=1.0, max_pressure=0.3)
    out = enc.sample(w, m, 1, generator(0, "t"), env)
    for name, mask in out.items():
        view = cluster_view(mask, layers[name], "kernel")
        assert bool(view.any(dim=1).all()), name  # no filter, kernel or neuron died whole
        assert not (mask & ~m[name]).any()
    assert out["conv2"].sum() < m["conv2"].sum()
    if normalization != "global":  # per-layer draws, as with synapse_share above 0
        return
    kept = sum(int(out[n].sum()) for n in out) / sum(int(m[n].sum()) for n in m)
    assert kept == pytest.approx(0.6, abs=0.01)
    p = enc.network_synapse_probabilities(w, m, 0.6)
    joint_p = torch.cat([p[n][m[n]] for n in layers])
    joint_w = torch.cat([w[n].abs()[m[n]] for n in layers])
    assert float(joint_p.mean()) == pytest.approx(0.6, abs=1e-6)
    order = joint_w.argsort()
    assert bool((joint_p[order].diff() >= -1e-12).all())  # monotone in |w| across layers


@pytest.mark.parametrize("normalization", ["budget", "global"])
def test_the_kernel_phase_kills_whole_conv_kernels_and_nothing_else(normalization):
    """The kernel phase (``environment.kernel_phase``): a conv kernel lives or dies whole
    (one draw for its synapses, from its mean live |w| among its layer's kernels, the
    pressure being the expected share that dies); no filter dies; a conv reading one
    channel (a kernel is its whole filter) and the linear layers lose nothing."""
    from evosynth.config import EnvironmentConfig
    from evosynth.environment import factors

    model, layers, enc = lenet_and_encoding(granularity="filter", normalization=normalization)
    w, m = weights_and_masks(model, layers)
    m["conv2"][0, :, 0, 0] = False  # a kernel's mean is over its live synapses
    env = factors(EnvironmentConfig(kernel_phase=True), 0.4, retired={"conv2"},
                  phase="kernels")
    assert env.kernel_unit and not env.clusters_evolve and not env.retired
    out = enc.sample(w, m, 1, generator(0, "t"), env)
    kernels = cluster_view(out["conv2"], layers["conv2"], "kernel")
    alive = kernels.any(dim=1)
    assert torch.equal(kernels[alive], cluster_view(m["conv2"], layers["conv2"],
                                                    "kernel")[alive])  # all or nothing
    assert int(alive.sum()) == pytest.approx(0.6 * 1000, abs=50)
    assert bool(alive.reshape(50, 20).any(dim=1).all())  # every filter keeps a kernel
    for name in ("conv1", "fc1", "fc2"):
        assert torch.equal(out[name], m[name]), name
    p_kernel = enc.kernel_probability("conv2", w["conv2"], m["conv2"], 0.6)
    live = cluster_view(m["conv2"], layers["conv2"], "kernel")
    assert p_kernel.shape == (50 * 20,)  # one chance per kernel
    assert float(p_kernel.mean()) == pytest.approx(0.6, abs=1e-6)
    mean = (cluster_view(w["conv2"].abs(), layers["conv2"], "kernel") * live).sum(1) \
        / live.sum(1)
    assert bool((p_kernel[mean.argsort()].diff() >= -1e-12).all())  # by the mean |w|
    assert float(p_kernel.std()) > 0


@pytest.mark.parametrize("normalization", ["budget", "global"])
def test_synapses_under_the_global_budget_go_by_magnitude_across_layers(normalization):
    """With ``synapse_share`` above 0, per-layer budgets thin a narrow layer of large weights
    as much as a wide one; under ``global`` the synapses of surviving filters share one
    budget by magnitude, so conv1's few large weights keep what fc1's many small ones lose."""
    from evosynth.encoding import Environment

    model, layers, enc = lenet_and_encoding(granularity="filter", normalization=normalization)
    w, m = weights_and_masks(model, layers)
    out = enc.sample(w, m, 1, generator(0, "t"), Environment(cluster=0.9, synapse=0.6,
                                                             kernel=1.0))

    def lost(name):  # the share of synapses lost inside the filters that survived
        alive = out[name].reshape(out[name].shape[0], -1).any(dim=1)
        return 1 - float(out[name][alive].float().mean())

    if normalization == "global":
        assert lost("conv1") < 0.05 and lost("fc1") > 0.3
    else:
        assert lost("conv1") > 0.3 and lost("fc1") > 0.3


def test_a_clusters_price_counts_the_kernels_its_death_removes():
    model, layers, enc = lenet_and_encoding(coupled=True, granularity="filter",
                                            normalization="global", cost_exponent=1.0)
    _, m = weights_and_masks(model, layers)
    m["conv2"][:10] = False  # ten conv2 filters dead
    m["conv2"][:, 3] = False  # and every kernel reading conv1's filter 3
    cost = {n: enc.kernel_cost(n, m) for n in ("conv1", "conv2", "fc1")}
    # conv1: its own kernel and one per live conv2 filter reading it
    assert cost["conv1"][0] == 1 + 40 and cost["conv1"][3] == 1
    assert torch.equal(cost["conv2"][10:], torch.full((40,), 19.0, dtype=torch.float64))
    assert torch.equal(cost["fc1"], torch.ones(500, dtype=torch.float64))  # a neuron is one


def test_priced_clusters_move_the_deaths_to_the_layers_that_carry_kernels():
    def conv_share(**enc):
        model, layers, e = lenet_and_encoding(coupled=True, granularity="filter",
                                              normalization="global", cluster_factor=0.7,
                                              **enc)
        w, m = weights_and_masks(model, layers)
        p = e.cluster_probabilities(w, m, 1, None)
        return float((1 - p["conv2"]).mean()), float((1 - p["fc1"]).mean())

    conv2, fc1 = conv_share()
    priced_conv2, priced_fc1 = conv_share(cost_exponent=0.5)
    assert priced_conv2 > conv2 + 0.1 and priced_fc1 < fc1
    with pytest.raises(UserError, match="cost_exponent"):
        validate({"encoding": {"normalization": "budget", "cost_exponent": 0.5}})
