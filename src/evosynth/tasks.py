"""What a network is trained and judged on. The loop, the trainer and the reports ask the
task for the loss of a batch and the fitness of a network; they never assume classes."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .data import TensorData
from .errors import UserError


class Task(Protocol):
    metric: str  # the history's keys are val_<metric> and test_<metric>

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, data: TensorData, device: torch.device
                 ) -> tuple[float, dict[str, Any]]: ...


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorData, device: torch.device,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] (the classification task's fitness)."""
    model.to(device).eval()
    correct = 0
    for i in range(0, len(data), batch_size):
        x = data.inputs(slice(i, i + batch_size)).to(device)
        correct += int((model(x).argmax(dim=1).cpu() == data.y[i:i + batch_size]).sum())
    return correct / max(1, len(data))


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
        return accuracy(model, data, device), {}


CLASSIFICATION = Classification()
