"""Attention written as separate q/k/v ``Linear`` layers (Hugging Face's BERT, ViT, RoBERTa
and the like): which layers form one attention's heads, and how dead heads leave it.

Such an attention module holds ``num_attention_heads`` and ``attention_head_size`` and its
projections ``query``/``key``/``value`` (or ``q_proj``/``k_proj``/``v_proj``); its output
projection is the next ``Linear`` under the same parent that reads ``heads x head_size``
features (BERT: ``attention.output.dense``). Head ``h`` owns rows ``h*d..(h+1)*d`` of q, k
and v and the same columns of the output projection. The module computes its head count
from the projections' width (``view(..., -1, head_size)``), so a compact model only needs
narrower projections and the new count in ``num_attention_heads``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .clusters import Layer
from .folding import fold_into

_PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))


@dataclass(frozen=True)
class HeadGroup:
    module: str  # the attention module (holds num_attention_heads)
    q: str
    k: str
    v: str
    out: str  # the output projection (its columns follow the heads)
    heads: int
    head_dim: int

    @property
    def projections(self) -> tuple[str, str, str]:
        return self.q, self.k, self.v

    def rows(self, head_alive: torch.Tensor) -> torch.Tensor:
        """Per row of q, k or v (and column of the output projection): its head lives."""
        return head_alive.repeat_interleave(self.head_dim)


def head_groups(model: nn.Module, layers: dict[str, Layer]) -> list[HeadGroup]:
    """The q/k/v attentions of ``model`` whose four projections are all evolved layers."""
    modules = dict(model.named_modules())
    order = list(layers)
    groups = []
    for name, m in modules.items():
        heads, dim = getattr(m, "num_attention_heads", None), getattr(
            m, "attention_head_size", None)
        if not isinstance(heads, int) or not isinstance(dim, int) or heads < 2:
            continue
        prefix = f"{name}." if name else ""
        for names in _PROJECTIONS:
            qkv = [f"{prefix}{p}" for p in names]
            if all(n in layers and layers[n].kind == "linear"
                   and layers[n].shape[0] == heads * dim for n in qkv):
                break
        else:
            continue
        parent = name.rpartition(".")[0]
        after = order[max(order.index(n) for n in qkv) + 1:]
        out = next((n for n in after if n.startswith(f"{parent}.") and layers[n].kind == "linear"
                    and layers[n].shape[1] == heads * dim), None)
        if out is not None:
            groups.append(HeadGroup(name, *qkv, out, heads, dim))
    return groups


def live_heads(group: HeadGroup, masks: dict[str, torch.Tensor]) -> torch.Tensor:
    """A head lives while any row of its v projection does (a head without v only adds a
    constant, which compaction folds)."""
    v = masks[group.v].reshape(group.heads, -1).any(dim=1)
    return v.cpu()


def shrink(net: nn.Module, twin: nn.Module, group: HeadGroup, dead: torch.Tensor) -> bool:
    """Remove the ``dead`` heads of ``group`` in ``net`` and its index ``twin``; a dead
    head's v bias (a constant after the softmax) goes into the output bias. True when a bias
    changed."""
    keep = group.rows(~dead).nonzero().flatten()
    gone = group.rows(dead).nonzero().flatten()
    v = net.get_submodule(group.v)
    folded = v.bias is not None and fold_into(net.get_submodule(group.out), gone,
                                              v.bias.detach()[gone])
    for model in (net, twin):
        for name in group.projections:
            _replace(model, name, _rows(model.get_submodule(name), keep))
        _replace(model, group.out, _columns(model.get_submodule(group.out), keep))
        attention = model.get_submodule(group.module)
        attention.num_attention_heads = int((~dead).sum())
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = attention.num_attention_heads * group.head_dim
    return folded


def _rows(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(layer.in_features, len(keep), bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[keep])
    return new


def _columns(layer: nn.Linear, keep: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(keep), layer.out_features, bias=layer.bias is not None,
                    device=layer.weight.device, dtype=layer.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(layer.weight[:, keep])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
    return new


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
