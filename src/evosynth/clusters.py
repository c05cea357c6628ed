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
    """A prunable layer: its module name, type and weight shape. An ``attention`` layer is a
    ``MultiheadAttention``: its synapses are the q/k/v projections (``in_proj_weight``, rows
    q, then k, then v), its clusters at ``filter`` granularity its heads."""

    name: str
    kind: Literal["conv", "linear", "attention"]
    shape: tuple[int, ...]
    param: str = "weight"  # the parameter holding the synapses
    heads: int = 0  # attention: number of heads

    @property
    def weight_key(self) -> str:
        """The synapses' name in the model's state dict."""
        return f"{self.name}.{self.param}"

    @property
    def out_features(self) -> int:
        return self.shape[0]

    @property
    def synapses(self) -> int:
        return int(torch.Size(self.shape).numel())


def matches(name: str, patterns: Iterable[str]) -> bool:
    """fnmatch-style name patterns (``features.*``, ``fc?``), as users write them in YAML."""
    return any(fnmatchcase(name, p) for p in patterns)


def weight_name(module: nn.Module) -> str:
    """The parameter that holds a prunable module's synapses."""
    return "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"


def weight_of(module: nn.Module) -> torch.Tensor:
    return getattr(module, weight_name(module))


def evolvable_attention(module: nn.Module) -> bool:
    """A ``MultiheadAttention`` whose heads evolvable: one packed q/k/v projection and
    nothing that mixes heads (``bias_k``/``bias_v``, ``add_zero_attn``). Others stay dense."""
    return (isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim
            and module.in_proj_weight is not None and module.bias_k is None
            and not module.add_zero_attn)


def prunable_layers(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, Layer]:
    """Conv1d/2d/3d, Linear and MultiheadAttention layers in registration order, minus those
    excluded by pattern.

    Transposed convolutions are not included: their weight layout is (in, out, ...), and a
    "filter" there is a different slice; they are left dense. An attention's output
    projection belongs to its heads (its columns die with them; its rows write the residual
    stream) and is not a layer of its own.
    """
    exclude = list(exclude)
    layers: dict[str, Layer] = {}
    inside_attention: set[str] = set()
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            inside_attention.add(f"{name}.out_proj")
            if evolvable_attention(module) and not matches(name, exclude):
                layers[name] = Layer(name, "attention", tuple(module.in_proj_weight.shape),
                                     "in_proj_weight", module.num_heads)
        elif (isinstance(module, PRUNABLE_TYPES) and name not in inside_attention
              and not matches(name, exclude)):
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
    ``filter``: everything feeding one output channel or neuron, ``weight[o]``; for an
    attention layer, a head's q, k and v rows (its output projection's columns follow them).
    """
    if granularity == "kernel" and layer.kind == "conv":
        return t.reshape(layer.shape[0] * layer.shape[1], -1)
    if granularity != "kernel" and layer.kind == "attention":
        # rows q (E), k (E), v (E); head h owns rows h*hd..(h+1)*hd of each
        e = layer.shape[1]
        return t.reshape(3, layer.heads, e // layer.heads, e).transpose(0, 1).reshape(
            layer.heads, -1)
    if granularity in GRANULARITIES:
        return t.reshape(layer.shape[0], -1)
    raise UserError(f"unknown cluster granularity {granularity!r} (use one of {GRANULARITIES})")


def drop_clusters(mask: torch.Tensor, layer: Layer, granularity: str, dead: torch.Tensor
                  ) -> None:
    """Kill the clusters ``dead`` (a boolean per cluster) in ``mask``, in place."""
    if layer.kind == "attention" and granularity != "kernel":
        e = layer.shape[1]
        head_of_row = (torch.arange(layer.shape[0]) % e) // (e // layer.heads)
        mask[dead.cpu()[head_of_row].to(mask.device)] = False
    else:
        cluster_view(mask, layer, granularity)[dead.to(mask.device)] = False


def live_clusters(mask: torch.Tensor, layer: Layer, granularity: str) -> torch.Tensor:
    """Boolean vector: a cluster lives while at least one of its synapses does."""
    return cluster_view(mask, layer, granularity).any(dim=1)


def live_filters(mask: torch.Tensor) -> torch.Tensor:
    """Boolean vector over output channels / neurons."""
    return mask.reshape(mask.shape[0], -1).any(dim=1)


def width(mask: torch.Tensor) -> int:
    """A layer's live filters (neurons), counted on the CPU."""
    return int(live_filters(mask.cpu()).sum())


def resolve_output_layer(layers: dict[str, Layer], name: str | None) -> str | None:
    """The layer whose neurons are the network's outputs (classes): the last prunable layer
    unless named. Registration order is the forward order for the usual model definitions;
    name it in the config when it is not."""
    if name is None:
        return next(reversed(layers)) if layers else None
    if name not in layers:
        raise UserError(f"output_layer {name!r} is not a prunable layer; prunable: {list(layers)}")
    return name
