"""Attention with fewer heads: what a ``MultiheadAttention`` becomes once heads died.

``nn.MultiheadAttention`` ties its head count to its width (``embed_dim = heads x
head_dim``), so it cannot lose a head and keep its residual width. ``HeadPrunedAttention``
computes exactly what the masked attention computed with only the live heads: the same
q/k/v projections (the kept heads' rows of ``in_proj_weight``), the same scaled dot-product
softmax per head, and the output projection's kept columns. Its parameter names are
``MultiheadAttention``'s, so compact training maps its entries back index by index.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .folding import fold_into


class HeadPrunedAttention(nn.Module):
    """A drop-in for ``nn.MultiheadAttention`` (same call, same outputs) holding the heads
    ``kept`` of an attention that had ``total_heads``."""

    # tells nn.TransformerEncoderLayer not to take its fused path (which assumes
    # embed_dim == heads x head_dim)
    _qkv_same_embed_dim = False

    def __init__(self, source: nn.MultiheadAttention, kept: list[int]):
        super().__init__()
        e, hd = source.embed_dim, source.head_dim
        self.embed_dim, self.head_dim = e, hd
        self.num_heads, self.total_heads = len(kept), source.num_heads
        self.kept = list(kept)
        self.batch_first, self.dropout = source.batch_first, source.dropout
        rows = torch.tensor([part * e + h * hd + i for part in range(3) for h in kept
                             for i in range(hd)], dtype=torch.long)
        cols = rows[2 * len(rows) // 3:] - 2 * e if kept else rows
        with torch.no_grad():
            self.in_proj_weight = nn.Parameter(source.in_proj_weight[rows].clone())
            self.in_proj_bias = (nn.Parameter(source.in_proj_bias[rows].clone())
                                 if source.in_proj_bias is not None else None)
            out = source.out_proj
            self.out_proj = nn.Linear(len(cols), e, bias=out.bias is not None,
                                      device=out.weight.device, dtype=out.weight.dtype)
            self.out_proj.weight.copy_(out.weight[:, cols])
            if out.bias is not None:
                self.out_proj.bias.copy_(out.bias)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            batch_first = False
        else:
            batch_first = self.batch_first
        if not batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        b, t, _ = query.shape
        s, h, hd = key.shape[1], self.num_heads, self.head_dim
        d = h * hd
        w, bias = self.in_proj_weight, self.in_proj_bias
        parts = [F.linear(x, w[i * d:(i + 1) * d],
                          bias[i * d:(i + 1) * d] if bias is not None else None)
                 for i, x in enumerate((query, key, value))]
        q, k, v = (p.reshape(b, -1, h, hd).transpose(1, 2) for p in parts)
        mask = self._additive_mask(attn_mask, key_padding_mask, is_causal, b, t, s, q.dtype,
                                   q.device)
        dropout = self.dropout if self.training else 0.0
        attn = None
        if need_weights:
            scores = q @ k.transpose(-2, -1) / math.sqrt(hd)
            attn = torch.softmax(scores if mask is None else scores + mask, dim=-1)
            mixed = F.dropout(attn, dropout) @ v if dropout else attn @ v
        else:  # PyTorch's fused kernel, as MultiheadAttention takes it
            mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)
        out = self.out_proj(mixed.transpose(1, 2).reshape(b, t, d))
        if not batch_first:
            out = out.transpose(0, 1)
        if unbatched:
            out = out.squeeze(1)
        weights = None
        if attn is not None:
            weights = attn.mean(1) if average_attn_weights else attn
            if unbatched:
                weights = weights.squeeze(0)
        return out, weights

    def _additive_mask(self, attn_mask, key_padding_mask, is_causal, b, t, s, dtype, device
                       ) -> torch.Tensor | None:
        """MultiheadAttention's masks as one additive term (-inf where a key is hidden);
        None without masks."""
        if attn_mask is None and key_padding_mask is None and not is_causal:
            return None
        total = torch.zeros(b, self.num_heads, t, s, dtype=dtype, device=device)
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(t, s, dtype=torch.bool, device=device).triu(1)
        for m, shape in ((attn_mask, None), (key_padding_mask, (b, 1, 1, s))):
            if m is None:
                continue
            add = (torch.zeros(m.shape, dtype=dtype, device=device).masked_fill(m, -math.inf)
                   if m.dtype == torch.bool else m.to(dtype))
            if shape is not None:
                add = add.reshape(shape)
            elif add.dim() == 3:  # one mask per (batch, head): keep the live heads'
                add = add.reshape(b, self.total_heads, t, s)[:, self.kept]
            total = total + add
        return total


def dead_heads(mask: torch.Tensor, heads: int) -> torch.Tensor:
    """Heads whose every v row is dead: their output is at most a constant (the v bias,
    averaged by a softmax that sums to one), so they can leave the network."""
    e = mask.shape[1]
    v_rows = mask.reshape(mask.shape[0], -1).any(dim=1)[2 * e:]
    return ~v_rows.reshape(heads, e // heads).any(dim=1).cpu()


def shrink_heads(net: nn.Module, twin: nn.Module, name: str, dead: torch.Tensor) -> bool:
    """Replace attention ``name`` (in ``net`` and its index ``twin``) by one without the
    ``dead`` heads; a dead head's v bias goes into the output bias (exact). True when a bias
    changed."""
    source = net.get_submodule(name)
    kept = [h for h in range(source.num_heads) if not bool(dead[h])]
    e, hd = source.embed_dim, source.head_dim
    folded = False
    if source.in_proj_bias is not None:
        gone = dead.repeat_interleave(hd).nonzero().flatten()  # their v rows, from 0
        folded = fold_into(source.out_proj, gone, source.in_proj_bias.detach()[2 * e + gone])
    for model in (net, twin):
        parent, _, child = name.rpartition(".")
        holder = model.get_submodule(parent) if parent else model
        setattr(holder, child, HeadPrunedAttention(model.get_submodule(name), kept))
    return folded
