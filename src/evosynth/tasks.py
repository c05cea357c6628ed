"""What a network is trained and judged on. The loop, the trainer and the reports ask the
task for the loss of a batch and the fitness of a network; they never assume classes."""

from __future__ import annotations

from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .data import TensorData
from .errors import UserError
from .inputs import call


class Task(Protocol):
    metric: str  # the history's keys are val_<metric> and test_<metric>

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def evaluate(self, model: nn.Module, data: TensorData, device: torch.device
                 ) -> tuple[float, dict[str, Any]]: ...


def class_scores(output: Any, y: torch.Tensor | None) -> torch.Tensor:
    """A model's class scores laid out as cross-entropy wants them, (N, C, ...): HF-style
    outputs give their ``.logits``; per-token scores (N, T, C) for targets (N, T) move
    their class axis to 1."""
    output = getattr(output, "logits", output)
    if isinstance(output, (tuple, list)):
        output = output[0]
    if y is not None and output.dim() > 2 and tuple(output.shape[:-1]) == tuple(y.shape):
        output = output.movedim(-1, 1)
    return output


@torch.no_grad()
def accuracy(model: nn.Module, data: TensorData, device: torch.device,
             batch_size: int = 1000) -> float:
    """Top-1 accuracy in [0, 1] (the classification task's fitness), over every target:
    per example, or per token for per-token targets."""
    model.to(device).eval()
    correct, total = 0, 0
    for x, y in data.eval_batches(batch_size):
        y = y.cpu()
        correct += int((class_scores(call(model, x.to(device)), y).argmax(dim=1).cpu() == y)
                       .sum())
        total += y.numel()
    return correct / max(1, total)


class Classification:
    metric = "accuracy"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(class_scores(output, target), target)

    def check_targets(self, output: torch.Tensor, y: torch.Tensor, what: str) -> None:
        """Class indices that the model's outputs can score, before any training."""
        scores = class_scores(output, y[:len(output)])
        classes = scores.shape[1] if scores.dim() > 1 else 0
        if scores.dim() < 2 or tuple(scores.shape[2:]) != tuple(y.shape[1:]):
            raise UserError(f"{what} targets of shape {tuple(y.shape[1:])} per example cannot "
                            f"match outputs of shape {tuple(output.shape[1:])}: expected "
                            "class indices (N,), or per position (N, T) with outputs "
                            "(N, T, C) or (N, C, T)")
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise UserError(f"{what} labels range over {int(y.min())}..{int(y.max())}, but "
                            f"the model has {classes} outputs")

    def evaluate(self, model: nn.Module, data: TensorData, device: torch.device
                 ) -> tuple[float, dict[str, Any]]:
        return accuracy(model, data, device), {}


CLASSIFICATION = Classification()
