"""A compact network computes what the masked one did (max abs difference <= 1e-5)."""

import copy

import pytest
import torch
from torch import nn

from evosynth.clusters import prunable_layers
from evosynth.compact import compact
from evosynth.coupling import Coupling
from evosynth.genome import Genome, apply_param_masks, weight_masks
from evosynth.models.lenet import LeNet5, LeNet300


class ResBlockNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.c1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.c1(x)))
        x = torch.relu(x + self.bn2(self.c2(y)))
        return self.head(x.mean((2, 3)))


class ConcatNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3)
        self.b = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(14)
        self.c = nn.Conv2d(14, 10, 1)
        self.head = nn.Linear(10 * 6 * 6, 4)

    def forward(self, x):
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        return self.head(torch.relu(self.c(x)).flatten(1))


def randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.3)


def kill(model, layers, seed, filters=0.35, kernels=0.3, synapses=0.3):
    """Random masks with whole dead filters, dead kernels/columns and dead synapses."""
    g = torch.Generator().manual_seed(seed)
    masks = Genome.dense(model, layers).masks
    for name, m in masks.items():
        if name == list(layers)[-1]:
            continue
        m[torch.rand(m.shape[0], generator=g) < filters] = False
        m[:, torch.rand(m.shape[1], generator=g) < kernels] = False
        m &= torch.rand(m.shape, generator=g) > synapses
    return masks


def masked_copy(model, masks, zero_bias: bool, ex: torch.Tensor):
    """The masked network as training leaves it (zero_bias: evosynth's coupled masks) or as a
    plain mask leaves it (biases and BatchNorm shifts of dead filters still live)."""
    net = copy.deepcopy(model).eval()
    apply_param_masks(net, weight_masks(masks))
    if zero_bias:
        coupling = Coupling.build(net, ex, prunable_layers(net))
        apply_param_masks(net, coupling.param_masks(net, masks))
    return net


MODELS = {
    "lenet5": (LeNet5, (1, 28, 28)),
    "mlp": (LeNet300, (1, 28, 28)),
    "resnet": (ResBlockNet, (3, 12, 12)),
    "concat": (ConcatNet, (3, 8, 8)),
}


@pytest.mark.parametrize("zero_bias", [True, False])
@pytest.mark.parametrize("name", list(MODELS))
def test_compact_is_exact(name, zero_bias):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    randomize_bn(model)
    layers = prunable_layers(model)
    masks = kill(model, layers, seed=3)
    ex = torch.randn(8, *shape)
    ref = masked_copy(model, masks, zero_bias, ex)
    c = compact(ref, ex, masks)
    for x in (torch.randn(32, *shape), torch.rand(32, *shape) * 3):
        assert (c.model(x) - ref(x)).abs().max() <= 1e-5
    n_before = sum(p.numel() for p in ref.parameters())
    n_after = sum(p.numel() for p in c.model.parameters())
    assert n_after < n_before, "nothing was removed"
    # the carried masks match the compact weights' zeros
    mods = dict(c.model.named_modules())
    for n, m in c.masks.items():
        assert torch.all(mods[n].weight[~m] == 0)


def test_compact_on_real_digits():
    from evosynth.data.digits import load_digits

    train, _, _ = load_digits()
    torch.manual_seed(0)
    model = LeNet5().eval()
    layers = prunable_layers(model)
    masks = kill(model, layers, seed=5, filters=0.5)
    ref = masked_copy(model, masks, False, train.x[:16])
    c = compact(ref, train.x[:16], masks)
    assert (c.model(train.x[:500]) - ref(train.x[:500])).abs().max() <= 1e-5
    assert c.model.conv1.out_channels < 20 and c.model.fc1.out_features < 500


def test_residual_channel_kept_while_any_producer_lives():
    torch.manual_seed(0)
    model = ResBlockNet().eval()
    randomize_bn(model)
    layers = prunable_layers(model)
    masks = Genome.dense(model, layers).masks
    masks["c2"][3] = False  # dead in c2, alive in the stem: the sum still carries it
    masks["stem"][5] = False
    masks["c2"][5] = False  # dead in both producers
    ex = torch.randn(4, 3, 12, 12)
    ref = masked_copy(model, masks, True, ex)
    c = compact(ref, ex, masks)
    assert c.model.stem.out_channels == 15 and c.model.c2.out_channels == 15
    x = torch.randn(8, 3, 12, 12)
    assert (c.model(x) - ref(x)).abs().max() <= 1e-5


def test_expand_into_writes_compact_training_back():
    """Values trained in the compact network land on the right entries of the full one."""
    torch.manual_seed(0)
    model = ResBlockNet().eval()
    randomize_bn(model)
    layers = prunable_layers(model)
    masks = kill(model, layers, seed=2, filters=0.3, kernels=0.0, synapses=0.2)
    ex = torch.randn(4, 3, 12, 12)
    ref = masked_copy(model, masks, True, ex)
    c = compact(ref, ex, masks)
    assert c.folded == 0
    pm = c.compact_masks(Coupling.build(ref, ex, layers).param_masks(ref, masks))
    with torch.no_grad():
        for p in c.model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    apply_param_masks(c.model, pm)
    c.expand_into(ref)
    x = torch.randn(8, 3, 12, 12)
    assert (c.model(x) - ref(x)).abs().max() <= 1e-5
