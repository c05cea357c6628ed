"""DetectNet's geometric augmentation (random shifts and horizontal flips), made exact on
the output grid: an image moves by whole cells, so its dense targets move by a whole
number of grid steps and no target is re-encoded.

DIGITS' DetectNet example for KITTI shifts up to 32 pixels each way and flips half of the
images (it also scales and changes hue, which this does not). Flipping mirrors the grid,
and a box's left and right corner offsets swap and change sign. Cells shifted in from
outside the image carry no loss (their care mask is zero), since the grey fill was never
labelled.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import window
from .grid import GridCoder


@dataclass(frozen=True)
class GridAugment:
    coder: GridCoder
    max_shift: int = 2  # grid cells each way: 32 pixels at stride 16, as DetectNet's
    flip: bool = True

    def __call__(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        n, k = x.shape[0], self.max_shift
        shifts = torch.randint(-k, k + 1, (2, n), generator=generator)
        mirror = (torch.rand(n, generator=generator) < 0.5) & self.flip
        return self.apply(x, y, shifts, mirror)

    def apply(self, x: torch.Tensor, y: torch.Tensor, shifts: torch.Tensor,
              mirror: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Move down and right by ``shifts`` (2, n) cells, then mirror where ``mirror``."""
        k, s = self.max_shift, self.coder.stride
        x = window(x, (k - shifts) * s, k * s, mirror)
        y = window(y, k - shifts, k, mirror)
        c = self.coder.classes
        corners = y[:, c:5 * c].reshape(len(y), c, 4, *y.shape[2:])
        swapped = torch.stack([-corners[:, :, 2], corners[:, :, 1],
                               -corners[:, :, 0], corners[:, :, 3]], dim=2)
        m = mirror.to(y.device)[:, None, None, None, None]
        corners = torch.where(m, swapped, corners).reshape(len(y), 4 * c, *y.shape[2:])
        return x, torch.cat([y[:, :c], corners, y[:, 5 * c:]], dim=1)
