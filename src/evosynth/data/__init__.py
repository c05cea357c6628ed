"""Data sets as in-memory tensors, and the seeded train/validation split.

The papers' data sets fit in memory many times over; whole tensors make an epoch a loop
over index slices, with no loader machinery between the reader and the training step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import UserError


@dataclass
class TensorData:
    x: torch.Tensor  # float, normalized
    y: torch.Tensor  # int64 class indices

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, idx: torch.Tensor) -> TensorData:
        return TensorData(self.x[idx], self.y[idx])


@dataclass
class Splits:
    train: TensorData
    val: TensorData
    test: TensorData | None
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])


def split_validation(data: TensorData, fraction: float, generator: torch.Generator
                     ) -> tuple[TensorData, TensorData]:
    """Hold out a seeded random ``fraction`` of the training data for selection."""
    n_val = max(1, round(len(data) * fraction))
    if n_val >= len(data):
        raise UserError(f"val_fraction {fraction} leaves no training data ({len(data)} samples)")
    perm = torch.randperm(len(data), generator=generator)
    return data.subset(perm[n_val:]), data.subset(perm[:n_val])


Loader = Callable[[str | None], tuple[TensorData, TensorData | None, int]]


def _mnist(data_dir: str | None):
    from .mnist import load_mnist

    return load_mnist(data_dir)


def _digits(data_dir: str | None):
    from .digits import load_digits

    return load_digits()


DATASETS: dict[str, Loader] = {"mnist": _mnist, "digits": _digits}


def load_dataset(name: str, data_dir: str | None, val_fraction: float,
                 generator: torch.Generator) -> Splits:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    train, test, num_classes = DATASETS[name](data_dir)
    train, val = split_validation(train, val_fraction, generator)
    return Splits(train, val, test, num_classes)
