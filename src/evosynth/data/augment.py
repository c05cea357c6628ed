"""Batch augmentation on tensors, every draw from the training generator.

An augmentation takes a batch of inputs and targets and returns both, so that a detector's
dense targets move with its images; a classifier's labels pass through. Drawing offsets
and flips on the CPU generator keeps a run reproducible on any device; the crop itself is
one gather on the batch's own device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAD = 4


def window(x: torch.Tensor, offsets: torch.Tensor, pad: int, mirror: torch.Tensor
           ) -> torch.Tensor:
    """Per example, the (h, w) window at ``offsets`` (2, n) of the zero-padded batch,
    mirrored left-right where ``mirror``: a shift by ``pad - offset`` pixels."""
    n, _, h, w = x.shape
    offsets, mirror = offsets.to(x.device), mirror.to(x.device)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)  # (n, h)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)  # (n, w)
    cols = torch.where(mirror[:, None], cols.flip(1), cols)
    b = torch.arange(n, device=x.device)[:, None, None, None]
    c = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


def random_crop(x: torch.Tensor, generator: torch.Generator, pad: int, flip: bool
                ) -> torch.Tensor:
    """Random crops of the zero-padded batch (``pad`` pixels each side; zero is the mean
    colour after normalization), and horizontal flips with probability 1/2 if ``flip``."""
    n = x.shape[0]
    offsets = torch.randint(0, 2 * pad + 1, (2, n), generator=generator)
    mirror = (torch.rand(n, generator=generator) < 0.5) & flip
    return window(x, offsets, pad, mirror)


def crop_flip(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR's standard: 4-pixel padded crops and horizontal flips (He et al. 2016)."""
    return random_crop(x, generator, PAD, flip=True), y


def shift(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits: translations of up to 2 pixels each way, no mirror (a mirrored 2 is no 2)."""
    return random_crop(x, generator, 2, flip=False), y


AUGMENTATIONS = {"crop-flip": crop_flip, "shift": shift}
