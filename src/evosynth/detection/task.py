"""Detection as a task of the loop: DetectNet's loss for training, mAP for fitness."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import TensorData
from .data import DetectionData
from .grid import GridCoder
from .metrics import average_precision


class Detection:
    """mAP at IoU 0.5 over the classes, in [0, 1]; with ``strict`` classes (KITTI's Car)
    their AP at IoU 0.7 is reported too, as KITTI's benchmark asks for cars."""

    metric = "map"

    def __init__(self, coder: GridCoder, classes: tuple[str, ...], strict: tuple[str, ...] = (),
                 threshold: float = 0.05, nms_iou: float = 0.5):
        self.coder, self.classes, self.strict = coder, classes, strict
        self.threshold, self.nms_iou = threshold, nms_iou

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.coder.loss(output, target)

    @torch.no_grad()
    def detect(self, model: nn.Module, data: TensorData, device: torch.device,
               batch_size: int = 64):
        model.to(device).eval()
        dets = []
        for i in range(0, len(data), batch_size):
            out = model(data.inputs(slice(i, i + batch_size)).to(device))
            dets += self.coder.decode(out, self.threshold, self.nms_iou)
        return dets

    def evaluate(self, model: nn.Module, data: DetectionData, device: torch.device
                 ) -> tuple[float, dict[str, Any]]:
        dets = self.detect(model, data, device)
        ap = average_precision(dets, data.objects, len(self.classes), 0.5)
        details: dict[str, Any] = {"ap": {self.classes[k]: v for k, v in ap.items()}}
        strict = [self.classes.index(c) for c in self.strict if c in self.classes]
        if strict:
            ap7 = average_precision(dets, data.objects, len(self.classes), 0.7, only=strict)
            details["ap_iou70"] = {self.classes[k]: v for k, v in ap7.items()}
        score = sum(ap.values()) / len(ap) if ap else 0.0
        return score, details
