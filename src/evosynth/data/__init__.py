"""Data sets as in-memory tensors, and the seeded train/validation split.

The papers' data sets fit in memory many times over; whole tensors make an epoch a loop
over index slices, with no loader machinery between the reader and the training step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from ..config import DataConfig
from ..errors import UserError
from ..inputs import Inputs, per_example_shape

if TYPE_CHECKING:  # tasks read data; data only names the type
    from ..tasks import Task

# a training batch's inputs and targets, transformed together
Augment = Callable[[torch.Tensor, torch.Tensor, torch.Generator],
                   tuple[torch.Tensor, torch.Tensor]]
Decode = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class TensorData:
    x: torch.Tensor | Inputs  # network inputs (float, normalized; several: Inputs), or
    # their stored form (decode)
    y: torch.Tensor  # int64 class indices, or a task's dense targets
    augment: Augment | None = None  # applied to each training batch, never in evaluation
    # stored form -> network input, applied per batch: images held as uint8 take a
    # quarter of float32's memory (full-size KITTI: 10.8 GB, not 43 GB)
    decode: Decode | None = None

    def __len__(self) -> int:
        return len(self.y)

    def inputs(self, idx: slice | torch.Tensor) -> torch.Tensor | Inputs:
        """The network inputs of examples ``idx``, on the device the data is on."""
        x = self.x[idx]
        return x if self.decode is None else self.decode(x)

    def subset(self, idx: torch.Tensor) -> TensorData:
        return dataclasses.replace(self, x=self.x[idx], y=self.y[idx])

    def to(self, device: torch.device) -> TensorData:
        return dataclasses.replace(self, x=self.x.to(device), y=self.y.to(device))

    def steps(self, batch_size: int) -> int:
        """Training batches per epoch."""
        return math.ceil(len(self) / batch_size)

    def batches(self, batch_size: int, generator: torch.Generator
                ) -> Iterator[tuple[torch.Tensor | Inputs, torch.Tensor]]:
        """One epoch of training batches, shuffled by ``generator``, augmented."""
        for _, x, y in self.indexed_batches(batch_size, generator):
            yield x, y

    def indexed_batches(self, batch_size: int, generator: torch.Generator
                        ) -> Iterator[tuple[torch.Tensor, torch.Tensor | Inputs, torch.Tensor]]:
        """``batches`` with each batch's example indices (the same draws)."""
        perm = torch.randperm(len(self), generator=generator).to(self.y.device)
        for i in range(self.steps(batch_size)):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            x, y = self.inputs(idx), self.y[idx]
            yield idx, *(self.augment(x, y, generator) if self.augment is not None else (x, y))

    def eval_batches(self, batch_size: int = 1000
                     ) -> Iterator[tuple[torch.Tensor | Inputs, torch.Tensor]]:
        """The examples in order, in batches."""
        for i in range(0, len(self), batch_size):
            yield self.inputs(slice(i, i + batch_size)), self.y[i:i + batch_size]


@dataclass
class Splits:
    train: TensorData
    val: TensorData
    test: TensorData | None
    num_classes: int
    task: Task | None = None  # None: classification

    @property
    def input_shape(self) -> tuple[int, ...]:
        return per_example_shape(self.train.x)


@dataclass
class Loaded:
    """What a data set's loader returns."""

    train: TensorData
    test: TensorData | None
    num_classes: int
    task: Task | None = None
    prepared: bool = False  # the loader applied the data options itself (detection)


def split_validation(data: TensorData, fraction: float, generator: torch.Generator
                     ) -> tuple[TensorData, TensorData]:
    """Hold out a seeded random ``fraction`` of the training data for selection."""
    n_val = max(1, round(len(data) * fraction))
    if n_val >= len(data):
        raise UserError(f"val_fraction {fraction} leaves no training data ({len(data)} samples)")
    perm = torch.randperm(len(data), generator=generator)
    val = data.subset(perm[:n_val])
    val.augment = None
    return data.subset(perm[n_val:]), val


Loader = Callable[[str | None, DataConfig], Loaded]


def _mnist(data_dir: str | None, cfg: DataConfig) -> Loaded:
    from .mnist import load_mnist

    return Loaded(*load_mnist(data_dir))


def _digits(data_dir: str | None, cfg: DataConfig) -> Loaded:
    from .digits import load_digits

    return Loaded(*load_digits())


def _cifar10(data_dir: str | None, cfg: DataConfig) -> Loaded:
    from .cifar import load_cifar10

    return Loaded(*load_cifar10(data_dir))


def _kitti(data_dir: str | None, cfg: DataConfig) -> Loaded:
    from ..detection.kitti import load_kitti

    return load_kitti(data_dir, cfg)


DATASETS: dict[str, Loader] = {"mnist": _mnist, "digits": _digits, "cifar10": _cifar10,
                               "kitti": _kitti}


def _reshape(data: TensorData, size: int | None, channels: int | None) -> TensorData:
    x = data.x
    if size is not None and tuple(x.shape[2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    if channels is not None and x.shape[1] != channels:
        if x.shape[1] != 1:
            raise UserError(f"data.channels {channels}: only 1-channel images can be "
                            f"repeated, these have {x.shape[1]}")
        x = x.expand(-1, channels, -1, -1).contiguous()
    return dataclasses.replace(data, x=x)


def prepare(data: TensorData, cfg: DataConfig, limit: int | None, train: bool) -> TensorData:
    """The config's view of a data set: the first ``limit`` examples, resized, with the
    channels repeated (MNIST digits as 32x32 RGB for the CIFAR networks), augmented."""
    if limit is not None:
        data = dataclasses.replace(data, x=data.x[:limit], y=data.y[:limit])
    if data.x.dim() != 4 and (cfg.size or cfg.channels):
        raise UserError("data.size and data.channels apply to image data (N, C, H, W)")
    if isinstance(cfg.size, list):
        raise UserError("data.size [h, w] is for detection data; give one side for square "
                        "images")
    data = _reshape(data, cfg.size, cfg.channels)
    if not train or cfg.augment == "none":
        data.augment = None
    elif cfg.augment != "auto":
        from .augment import AUGMENTATIONS

        if cfg.augment not in AUGMENTATIONS:
            raise UserError(f"data.augment {cfg.augment} is for detection data (kitti); "
                            f"classification takes {', '.join(AUGMENTATIONS)}")

        data.augment = AUGMENTATIONS[cfg.augment]
    return data


def load_dataset(name: str, data_dir: str | None, val_fraction: float,
                 generator: torch.Generator, cfg: DataConfig | None = None) -> Splits:
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    cfg = cfg or DataConfig()
    loaded = DATASETS[name](data_dir, cfg)
    train, test = loaded.train, loaded.test
    if not loaded.prepared:
        train = prepare(train, cfg, cfg.train_limit, train=True)
        test = prepare(test, cfg, cfg.test_limit, train=False) if test is not None else None
    train, val = split_validation(train, val_fraction, generator)
    return Splits(train, val, test, loaded.num_classes, loaded.task)
