"""A small Vision Transformer (Dosovitskiy et al., 2021) for 28x28 digits.

Patches of ``patch`` x ``patch`` pixels, a class token, learned positions, ``depth``
pre-norm ``nn.TransformerEncoderLayer`` blocks (``heads`` heads of width ``dim / heads``,
a GELU feed-forward of ``mlp`` neurons) and a linear head on the normalized class token.
Evolved, its clusters are attention heads and feed-forward neurons; the residual stream
(``dim``, normalized by every block's LayerNorm) keeps its width.
"""

from __future__ import annotations

import torch
from torch import nn


class ViT(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28),
                 patch: int = 7, dim: int = 64, depth: int = 4, heads: int = 4, mlp: int = 128):
        super().__init__()
        c, h, w = input_shape
        if h % patch or w % patch:
            raise ValueError(f"patch {patch} does not divide the {h}x{w} input")
        self.patch = patch
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Linear(c * patch * patch, dim)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, heads, mlp, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        p = self.patch
        x = x.unfold(2, p, p).unfold(3, p, p)  # (b, c, h/p, w/p, p, p)
        x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, -1, c * p * p)
        x = torch.cat([self.cls.expand(b, -1, -1), self.embed(x)], dim=1) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x[:, 0]))
