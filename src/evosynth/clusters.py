"""The cluster/mask model: which layers hold synapses, and how synapses group into clusters.

Every encoding, metric and report sees a layer's weight through the views defined here, so
there is one definition of "kernel" and "filter" in the project.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

import torch
from torch import nn

from .errors import UserError

Granularity = Literal["kernel", "filter", "filter+kernel"]
# filter+kernel draws filters, then kernels inside them; its clusters are the filters
GRANULARITIES: tuple[str, ...] = ("kernel", "filter", "filter+kernel")

PRUNABLE_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass(frozen=True)
class Layer:
    """A prunable layer: its module name, type and weight shape."""

    name: str
    kind: Literal["conv", "linear"]
    shape: tuple[int, ...]

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def synapses(self) -> int:
        return int(torch.Size(self.shape).numel())


def matches(name: str, patterns: Iterable[str]) -> bool:
    """fnmatch-style name patterns (``features.*``, ``fc?``), as users write them in YAML."""
    return any(fnmatchcase(name, p) for p in patterns)


def prunable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, Layer]:
    """Conv1d/2d/3d and Linear layers in registration order, minus those excluded by pattern.

    Transposed convolutions are not included: their weight layout is (in, out, ...), and a
    "filter" there is a different slice; they are left dense.
    """
    exclude = list(exclude)
    layers: dict[str, Layer] = {}
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and not matches(name, exclude):
            kind = "linear" if isinstance(module, nn.Linear) else "conv"
            layers[name] = Layer(name, kind, tuple(module.weight.shape))
    if not layers:
        raise UserError("the model has no prunable layer (Conv1d/2d/3d or Linear) left to evolve")
    return layers


def cluster_view(t: torch.Tensor, layer: Layer, granularity: str) -> torch.Tensor:
    """A 2-D view (clusters, synapses per cluster) of a weight-shaped tensor.

    ``kernel``: a conv kernel ``weight[o, i]``; a linear layer's cluster is its neuron (row),
    since one synapse per cluster would make clusters meaningless (README, "The method in
    brief").
    ``filter``: everything feeding one output channel or neuron, ``weight[o]``.
    """
    if granularity == "kernel" and layer.kind == "conv":
        return t.reshape(layer.shape[0] * layer.shape[1], -1)
    if granularity in GRANULARITIES:
        return t.reshape(layer.shape[0], -1)
    raise UserError(f"unknown cluster granularity {granularity!r} (use one of {GRANULARITIES})")


def live_clusters(mask: torch.Tensor, layer: Layer, granularity: str) -> torch.Tensor:
    """Boolean vector: a cluster lives while at least one of its synapses does."""
    return cluster_view(mask, layer, granularity).any(dim=1)


def live_filters(mask: torch.Tensor) -> torch.Tensor:
    """Boolean vector over output channels / neurons."""
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def resolve_output_layer(layers: dict[str, Layer], name: str | None) -> str | None:
    """The layer whose neurons are the network's outputs (classes): the last prunable layer
    unless named. Registration order is the forward order for the usual model definitions;
    name it in the config when it is not."""
    if name is None:
        return next(reversed(layers)) if layers else None
    if name not in layers:
        raise UserError(f"output_layer {name!r} is not a prunable layer; prunable: {list(layers)}")
    return name
