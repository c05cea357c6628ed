"""Masks hold: dead synapses stay exactly zero, coupled channels die together."""

import pytest
import torch
from torch import nn

from evosynth.clusters import prunable_layers
from evosynth.config import TrainConfig
from evosynth.coupling import Coupling
from evosynth.data import TensorData
from evosynth.genome import Genome, apply_param_masks
from evosynth.models.lenet import LeNet5
from evosynth.train import train


def random_masks(layers, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(layer.shape, generator=g) < p for n, layer in layers.items()}


def data(n=256, shape=(1, 28, 28), classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorData(torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,),
                                                                          generator=g))


@pytest.mark.parametrize("opt,wd", [("sgd", 5e-3), ("adam", 1e-3), ("adamw", 1e-2)])
def test_dead_stays_dead_through_training(opt, wd):
    torch.manual_seed(0)
    model = LeNet5()
    layers = prunable_layers(model)
    coupling = Coupling.build(model, torch.randn(2, 1, 28, 28), layers)
    masks = coupling.propagate(random_masks(layers), {"fc2"})
    pm = coupling.param_masks(model, masks)
    apply_param_masks(model, pm)
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer=opt, lr=0.05 if opt == "sgd" else 1e-2,
                      momentum=0.9, weight_decay=wd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, data(), cfg, pm, torch.Generator().manual_seed(0), torch.device("cpu"),
          progress=False)
    params = dict(model.named_parameters())
    for name, mask in pm.items():
        assert torch.all(params[name][~mask] == 0), f"{name}: a dead entry moved"
        assert not torch.equal(params[name][mask], before[name][mask]), f"{name} did not train"


def test_dead_filter_silences_readers_and_unread_channel_kills_filter():
    torch.manual_seed(0)
    model = LeNet5()
    layers = prunable_layers(model)
    coupling = Coupling.build(model, torch.randn(2, 1, 28, 28), layers)
    masks = Genome.dense(model, layers).masks
    masks["conv1"][3] = False  # filter 3 of conv1 dies
    masks["conv2"][:, 5] = False  # nobody reads conv1's channel 5
    masks["conv2"][7] = False  # conv2 filter 7 dies: its 16 flattened fc1 inputs go silent
    out = coupling.propagate(masks, {"fc2"})
    assert not out["conv2"][:, 3].any(), "kernels reading a dead filter survived"
    assert not out["conv1"][5].any(), "a filter nobody reads survived"
    assert not out["fc1"][:, 7 * 16:8 * 16].any()
    assert out["fc1"][:, 6 * 16:7 * 16].all() and out["fc1"][:, 8 * 16:].all()
    pm = coupling.param_masks(model, out)
    assert not pm["conv1.bias"][3] and pm["conv1.bias"][0]


def test_masked_model_equals_model_without_dead_channels():
    """A dead conv1 filter (and its bias) contributes exactly nothing downstream."""
    torch.manual_seed(0)
    model = LeNet5()
    layers = prunable_layers(model)
    coupling = Coupling.build(model, torch.randn(2, 1, 28, 28), layers)
    masks = Genome.dense(model, layers).masks
    masks["conv1"][[1, 4]] = False
    masks = coupling.propagate(masks, {"fc2"})
    apply_param_masks(model, coupling.param_masks(model, masks))
    x = torch.randn(8, 1, 28, 28)
    y = model(x)
    model.conv2.weight.data[:, [1, 4]] = 123.0  # those inputs are zero: weights are moot
    assert torch.allclose(model(x), y)


def test_batchnorm_of_dead_channel_is_zeroed():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3),
                          nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
    with torch.no_grad():
        model[1].bias.fill_(0.5)
    layers = prunable_layers(model)
    coupling = Coupling.build(model, torch.randn(2, 3, 8, 8), layers)
    masks = Genome.dense(model, layers).masks
    masks["0"][2] = False
    masks = coupling.propagate(masks, {"5"})
    pm = coupling.param_masks(model, masks)
    assert not pm["1.bias"][2] and not pm["1.weight"][2] and pm["1.bias"][0]
    assert not masks["3"][:, 2].any()
    apply_param_masks(model, pm)
    model.train()
    train(model, data(64, (3, 8, 8), 3), TrainConfig(epochs=1, batch_size=16), pm,
          torch.Generator().manual_seed(0), torch.device("cpu"), progress=False)
    model.eval()
    feats = model[2](model[1](model[0](torch.randn(4, 3, 8, 8))))
    assert torch.all(feats[:, 2] == 0), "a dead filter's BatchNorm channel injects a constant"


def test_genome_counts():
    model = LeNet5()
    layers = prunable_layers(model)
    g = Genome.dense(model, layers)
    s = g.stats("kernel")
    assert s["synapses"] == 430_500
    assert s["kernel_clusters"] == 20 + 1000 + 500 + 10
    assert s["filters"] == 20 + 50 + 500 + 10
    g.masks["conv2"][0, 0] = False
    s = g.stats("filter")
    assert s["kernel_clusters"] == 1529 and s["synapses"] == 430_475 and s["clusters"] == 580


def test_genome_roundtrip(tmp_path):
    model = LeNet5()
    layers = prunable_layers(model)
    masks = random_masks(layers)
    Genome(layers, masks).save(tmp_path / "m.safetensors")
    back = Genome.load(tmp_path / "m.safetensors", layers)
    assert all(torch.equal(back.masks[n], masks[n]) for n in layers)
