"""Detection scenes made of real MNIST digits, written in the KITTI object format.

KITTI cannot be downloaded on the project's machines; these scenes exercise the same reader,
training and evaluation on real images: digits pasted at random scales and positions onto
a noisy canvas, each labelled with its class and box; digits of classes not asked for are
pasted too and labelled ``DontCare`` (a region that evaluation ignores). Every draw comes
from one seeded generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def digit_box(img: np.ndarray) -> tuple[int, int, int, int]:
    """The tight box (x1, y1, x2, y2) of a digit's ink (pixels above 1/4 of full scale)."""
    ys, xs = np.nonzero(img > 63)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def write_scenes(out: Path, images: np.ndarray, labels: np.ndarray, n: int, *,
                 split: str = "training", size: int = 128, digits: tuple[int, ...] = (0, 1, 2),
                 per_image: tuple[int, int] = (1, 4), scale: tuple[int, int] = (24, 48),
                 distractors: float = 0.3, seed: int = 0) -> Path:
    """Write ``n`` scenes to ``out/<split>/image_2/*.png`` and ``label_2/*.txt``."""
    from PIL import Image

    if len(images) == 0:
        raise UserError("no source digits to paste")
    g = torch.Generator().manual_seed(seed)

    def randint(lo: int, hi: int) -> int:  # inclusive
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    img_dir, lab_dir = out / split / "image_2", out / split / "label_2"
    img_dir.mkdir(parents=True, exist_ok=True)
    lab_dir.mkdir(parents=True, exist_ok=True)
    wanted = np.isin(labels, digits)
    pool_in, pool_out = np.nonzero(wanted)[0], np.nonzero(~wanted)[0]
    for k in range(n):
        canvas = (torch.rand(size, size, generator=g) * 40).numpy()
        lines, placed = [], []
        count = randint(*per_image)
        extra = int(torch.rand(1, generator=g) < distractors) if len(pool_out) else 0
        for j in range(count + extra):
            pool = pool_in if j < count else pool_out
            index = int(pool[randint(0, len(pool) - 1)])
            side = randint(*scale)
            digit = np.asarray(Image.fromarray(images[index]).resize((side, side),
                                                                     Image.BILINEAR))
            for _ in range(20):  # find a spot that overlaps no earlier digit much
                x0, y0 = randint(0, size - side), randint(0, size - side)
                if all(_overlap((x0, y0, x0 + side, y0 + side), b) < 0.2 for b in placed):
                    break
            placed.append((x0, y0, x0 + side, y0 + side))
            region = canvas[y0:y0 + side, x0:x0 + side]
            np.maximum(region, digit, out=region)
            bx1, by1, bx2, by2 = digit_box(digit)
            cls = NAMES[int(labels[index])] if j < count else "DontCare"
            lines.append(f"{cls} 0.00 0 0.00 {x0 + bx1:.2f} {y0 + by1:.2f} {x0 + bx2:.2f} "
                         f"{y0 + by2:.2f} 0.00 0.00 0.00 0.00 0.00 0.00 0.00")
        Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)).convert("RGB").save(
            img_dir / f"{k:06d}.png")
        (lab_dir / f"{k:06d}.txt").write_text("\n".join(lines) + "\n")
    return out


def _overlap(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
