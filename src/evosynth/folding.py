"""A removed channel that carried a constant: its constant goes into the next layer's bias.

Dead filters with a live bias or BatchNorm shift, and attention heads whose v rows died
(a constant v, averaged by a softmax that sums to one), emit the same value for every input;
removing them is exact once what they added is folded into the bias of the layer reading
them.
"""

from __future__ import annotations

import torch
from torch import nn


def fold_delta(layer: nn.Module, idxs: torch.Tensor, const: torch.Tensor
               ) -> torch.Tensor | None:
    """What constant inputs ``idxs`` add to each of ``layer``'s outputs, or None where no
    bias can express it: a zero-padded conv sees the constant only away from the border."""
    if not bool(const.abs().gt(0).any()):
        return torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype)
    if isinstance(layer, nn.Linear):
        return layer.weight[:, idxs] @ const
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return None  # strided transposed kernels overlap unevenly: no bias can express it
    padding = layer.padding if isinstance(layer.padding, tuple) else (layer.padding,)
    if layer.padding == "same" or any(p != 0 for p in padding):
        return None
    w = layer.weight[:, idxs]
    return (w.reshape(w.shape[0], len(idxs), -1).sum(-1) * const).sum(1)


def add_bias(layer: nn.Module, delta: torch.Tensor) -> None:
    with torch.no_grad():
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros_like(delta))
        layer.bias += delta


def fold_into(layer: nn.Linear, idxs: torch.Tensor, const: torch.Tensor) -> bool:
    """Fold the constant inputs ``idxs`` of a linear ``layer`` into its bias (made if it had
    none); True when the bias changed."""
    delta = fold_delta(layer, idxs, const)
    if not bool(delta.ne(0).any()):
        return False
    add_bias(layer, delta.detach())
    return True
