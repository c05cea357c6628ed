"""Detection data: a detector's images, its dense targets and the labelled objects."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from ..data import TensorData

DEFAULT_CLASSES = ("Car", "Pedestrian", "Cyclist")


@dataclass
class Objects:
    """One image's labels, in pixels of the image as loaded (after resizing)."""

    boxes: torch.Tensor  # (k, 4) float x1 y1 x2 y2
    labels: torch.Tensor  # (k,) int64 index into the class list
    ignore: torch.Tensor  # (m, 4) DontCare regions


@dataclass
class DetectionData(TensorData):
    """Images, the dense training targets of a detector (``y``), and the labels."""

    objects: list[Objects] = field(default_factory=list)
    classes: tuple[str, ...] = DEFAULT_CLASSES

    def subset(self, idx: torch.Tensor) -> DetectionData:
        return dataclasses.replace(self, x=self.x[idx], y=self.y[idx],
                                   objects=[self.objects[int(i)] for i in idx])
