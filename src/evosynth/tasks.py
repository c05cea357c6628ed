"""What a network is trained and judged on. The loop, the trainer and the reports ask the
task for the loss of a batch and the fitness of a network; they never assume classes."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .data import TensorData
from .errors import UserError
from .train import evaluate


class Task(Protocol):
    metric: str  # the history's keys are val_<metric> and test_<metric>

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, data: TensorData, device: torch.device
                 ) -> tuple[float, dict[str, Any]]: ...


class Classification:
    metric = "accuracy"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)

    def check_targets(self, output: torch.Tensor, y: torch.Tensor, what: str) -> None:
        """Class indices within the model's outputs, before any training."""
        classes = output.shape[1] if output.dim() > 1 else 0
        if y.dim() != 1:
            raise UserError(f"{what} labels have shape {tuple(y.shape)}; expected class "
                            "indices of shape (N,)")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise UserError(f"{what} labels range over {int(y.min())}..{int(y.max())}, but "
                            f"the model has {classes} outputs")

    def evaluate(self, model: nn.Module, data: TensorData, device: torch.device
                 ) -> tuple[float, dict[str, Any]]:
        return evaluate(model, data, device), {}


CLASSIFICATION = Classification()
