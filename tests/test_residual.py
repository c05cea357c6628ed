"""Residual-aware clusters on ResNets and BatchNorm that cannot leak a constant."""

import json

import pytest
import torch

from evosynth.clusters import live_filters, prunable_layers
from evosynth.compact import compact
from evosynth.config import EncodingConfig, TrainConfig
from evosynth.coupling import Coupling
from evosynth.data import TensorData
from evosynth.encoding import make_encoding
from evosynth.errors import UserError
from evosynth.genome import Genome, apply_param_masks, layer_weights
from evosynth.models import build_model
from evosynth.models.alexnet import AlexNetCifar
from evosynth.models.resnet import resnet56
from evosynth.train import train

from .conftest import write_fake_cifar

NARROW = {"depth": 14, "widths": (6, 8, 10)}


def narrow_resnet(seed=0):
    torch.manual_seed(seed)
    model = resnet56(**NARROW)
    layers = prunable_layers(model)
    return model, layers, Coupling.build(model, torch.randn(2, 3, 32, 32), layers)


def test_weight_counts_of_the_papers_networks():
    for model, weights in ((resnet56(), 851_504), (AlexNetCifar(), 2_471_104)):
        layers = prunable_layers(model)
        assert sum(layer.synapses for layer in layers.values()) == weights
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert len(prunable_layers(resnet56())) == 55 + 2 + 1  # 55 convs, 2 shortcuts, fc
    with pytest.raises(UserError, match="6n\\+2"):
        build_model("resnet56", 10, (3, 32, 32), {"depth": 55})


def test_residual_streams_are_tied_groups():
    _, _, coupling = narrow_resnet()
    ties = coupling.ties()
    assert sorted(g.channels for g in ties) == [6, 8, 10]
    writers = {g.channels: sorted(m.module for m in g.by_role("out")) for g in ties}
    # stage 1: the stem and each block's second conv; stage 2: + the projection shortcut
    assert writers[6] == sorted(["conv1", "layer1.0.conv2", "layer1.1.conv2"])
    assert writers[8] == sorted(["layer2.0.conv2", "layer2.0.shortcut.0", "layer2.1.conv2"])


@pytest.mark.parametrize("seed", range(4))
def test_tied_channels_live_and_die_together_at_filter_granularity(seed):
    model, layers, coupling = narrow_resnet()
    cfg = EncodingConfig(granularity="filter", cluster_factor=0.7, synapse_factor=0.8)
    enc = make_encoding(cfg, layers, coupling.ties())
    weights = layer_weights(model, layers)
    masks = Genome.dense(model, layers).masks
    g = torch.Generator().manual_seed(seed)
    for gen in range(1, 4):
        masks = coupling.propagate(enc.sample(weights, masks, gen, g), {"fc"}, tie=True)
        for group in coupling.ties():
            sets = []
            for m in group.by_role("out"):
                f = live_filters(masks[m.module])
                if f.any():  # a writer with no filter left is a residual branch gone whole
                    sets.append(set(m.root[f[m.idxs]].tolist()))
            assert all(s == sets[0] for s in sets), f"gen {gen}: twins disagree"
    alive, total = coupling.tied_channels(masks)
    assert 0 < alive < total


def test_kernel_granularity_stays_per_kernel():
    model, layers, coupling = narrow_resnet()
    enc = make_encoding(EncodingConfig(granularity="kernel", cluster_factor=0.5), layers,
                        coupling.ties())
    weights = layer_weights(model, layers)
    masks = enc.sample(weights, Genome.dense(model, layers).masks, 1,
                       torch.Generator().manual_seed(0))
    kept = masks["layer1.0.conv2"].reshape(6 * 6, -1).any(1).float().mean()
    assert 0.2 < float(kept) < 0.8  # kernels drawn one by one, not tied


def test_batchnorm_of_a_dead_branch_filter_is_zeroed_and_masks_hold_in_training():
    model, layers, coupling = narrow_resnet()
    masks = Genome.dense(model, layers).masks
    masks["layer1.0.conv2"][2] = False  # dead in one writer, alive in its twins
    masks["layer2.0.conv1"][:3] = False  # an internal channel of a block
    masks = coupling.propagate(masks, {"fc"})
    assert masks["layer1.1.conv2"][2].all(), "the twin must keep the channel"
    pm = coupling.param_masks(model, masks)
    assert not pm["layer1.0.bn2.weight"][2] and not pm["layer1.0.bn2.bias"][2]
    assert pm["layer1.0.bn2.bias"][[0, 1, 3]].all()
    assert not pm["layer2.0.bn1.bias"][:3].any()
    assert "bn1.bias" not in pm  # the stem's channel 2 is alive
    apply_param_masks(model, pm)
    g = torch.Generator().manual_seed(0)
    data = TensorData(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 10, (64,),
                                                                            generator=g))
    train(model, data, TrainConfig(epochs=2, batch_size=16, lr=0.1, weight_decay=1e-3), pm,
          g, torch.device("cpu"), progress=False)
    params = dict(model.named_parameters())
    for name, mask in pm.items():
        assert torch.all(params[name][~mask] == 0), name
    # evaluation is exact: the masked BatchNorm channel emits zero, the compact net agrees
    model.eval()
    x = torch.randn(8, 3, 32, 32, generator=g)
    inner = {}
    h = model.layer1[0].bn2.register_forward_hook(lambda m, i, o: inner.setdefault("o", o))
    expect = model(x)
    h.remove()
    assert torch.all(inner["o"][:, 2] == 0)
    c = compact(model, x[:2], masks)
    assert c.removed.get("layer2.0.conv1") == 3
    assert torch.allclose(c.model(x), expect, atol=1e-5)


def test_dead_everywhere_channel_is_removed_by_compaction():
    model, layers, coupling = narrow_resnet(1)
    masks = Genome.dense(model, layers).masks
    for name in ("conv1", "layer1.0.conv2", "layer1.1.conv2"):
        masks[name][4] = False
    masks = coupling.propagate(masks, {"fc"}, tie=True)
    assert not masks["layer1.0.conv1"][:, 4].any(), "readers of a dead stream channel"
    apply_param_masks(model, coupling.param_masks(model, masks))
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    c = compact(model, x[:2], masks)
    assert c.model.conv1.out_channels == 5 and c.model.layer1[0].conv1.in_channels == 5
    assert torch.allclose(c.model(x), model(x), atol=1e-5)


@pytest.mark.parametrize("model,args", [("resnet56", {"depth": 8, "widths": [4, 6, 8]}),
                                        ("alexnet-cifar", {"widths": [8, 12, 16, 12, 12]})])
def test_cifar_networks_evolve_end_to_end(tmp_path, model, args):
    from evosynth.api import run
    from evosynth.config import validate

    data = write_fake_cifar(tmp_path / "cifar", tarball=True)
    cfg = validate({"model": model, "model_args": args, "dataset": "cifar10",
                    "data_dir": str(data), "device": "cpu",
                    "encoding": {"granularity": "filter", "cluster_factor": 0.7},
                    "evolution": {"generations": 2, "max_drop": None,
                                  "environment": {"kind": "schedule"}},
                    "ancestor_train": {"epochs": 1}, "train": {"epochs": 1},
                    "measure": {"latency_repeats": 1, "latency_batch": 4}})
    result = run(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    hist = [json.loads(line) for line in (tmp_path / "run" / "history.jsonl").open()]
    assert [h["generation"] for h in hist] == [0, 1, 2]
    assert hist[2]["synapses"] < hist[1]["synapses"] < hist[0]["synapses"]
    assert hist[2]["compact_params"] < hist[0]["compact_params"]
    if model == "resnet56":
        assert hist[0]["coupled_channels"] == hist[0]["dense_coupled_channels"] == 18
        assert hist[2]["coupled_channels"] <= hist[0]["coupled_channels"]
    # the network handed back carries its masks: dead synapses are exactly zero
    for name, mask in result.best_genome.masks.items():
        w = result.best_model.get_submodule(name).weight
        assert bool((w[~mask] == 0).all()) and int(mask.sum()) == int((w != 0).sum())
