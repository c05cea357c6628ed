"""Training and evaluation under masks: the whole step is in ``train``, on purpose."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import load_training, save_training
from .config import TrainConfig
from .data import TensorData
from .data.stream import StreamData
from .inputs import call
from .io import fault_point
from .tasks import class_scores


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if cfg.lr_schedule == "step":
        return 0.1 ** ((t >= 0.5) + (t >= 0.75))
    return 1.0


Teacher = nn.Module | torch.Tensor  # a network, or its class scores on every training example
_MAX_CACHED_SCORES = 2 ** 26  # floats (256 MB): beyond, the teacher runs per batch


@torch.no_grad()
def teacher_scores(teacher: nn.Module, data: TensorData | StreamData, device: torch.device
                   ) -> Teacher:
    """A fixed teacher's class scores on every training example, computed once (float32, on
    the CPU), so that distillation costs a lookup per batch instead of the teacher's forward
    pass: with a large teacher (the ancestor) and a small student, that pass is most of a
    step. Only where each example is the same in every epoch (held in memory, no
    augmentation); otherwise the teacher itself, run per batch."""
    if not isinstance(data, TensorData) or data.augment is not None or not len(data):
        return teacher
    teacher = teacher.to(device).eval()
    batches = data.to(device).eval_batches()
    first = teacher_output(teacher, *next(batches)).float().cpu()
    if first.numel() / len(first) * len(data) > _MAX_CACHED_SCORES:  # a vocabulary per token
        return teacher
    return torch.cat([first, *(teacher_output(teacher, x, y).float().cpu()
                               for x, y in batches)])


def train(model: nn.Module, data: TensorData | StreamData, cfg: TrainConfig,
          param_masks: dict[str, torch.Tensor], generator: torch.Generator,
          device: torch.device, desc: str = "train", progress: bool = True,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
          checkpoint: Path | None = None, teacher: Teacher | None = None,
          on_epoch: Callable[[int, float], None] | None = None) -> float:
    """Train in place; returns the last epoch's mean loss.

    Masked entries get zero gradient before the step (so momentum and Adam moments never
    see them) and are re-zeroed after it (so weight decay cannot revive them): a dead
    synapse stays exactly zero through any optimizer. With ``checkpoint``, the whole state
    is saved after every epoch and training continues from it if it exists, exactly.
    With ``teacher`` (a network, or its scores from ``teacher_scores``), a share
    ``cfg.distill`` of the loss is the KL divergence to its softened outputs (temperature
    ``cfg.temperature``; Hinton et al.'s T^2 scaling).
    """
    model.to(device).train()
    params = dict(model.named_parameters())
    masked = [params[n] for n in param_masks]
    masks = [m.to(device=device, dtype=params[n].dtype) for n, m in param_masks.items()]
    opt = make_optimizer(model, cfg)
    steps_per_epoch = data.steps(cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(cfg, s, total))
    data = data.to(device)
    loss_sum, start = 0.0, 0
    if checkpoint is not None and checkpoint.is_file():
        start, extra = load_training(checkpoint, model, opt, sched, generator)
        loss_sum = extra.get("loss", 0.0)
    scores = teacher.to(device) if isinstance(teacher, torch.Tensor) else None
    for epoch in range(start, cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        batches = tqdm(data.indexed_batches(cfg.batch_size, generator)
                       if scores is not None else
                       ((None, x, y) for x, y in data.batches(cfg.batch_size, generator)),
                       total=steps_per_epoch, desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}",
                       leave=False, disable=not progress, unit="step")
        for idx, x, y in batches:
            out = call(model, x)
            loss = loss_fn(out, y)
            if teacher is not None:
                target = scores[idx] if scores is not None else teacher_output(teacher, x, y)
                loss = (1 - cfg.distill) * loss + cfg.distill * soft_loss(out, y, target, cfg)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if masks:
                torch._foreach_mul_([p.grad if p.grad is not None else torch.zeros_like(p)
                                     for p in masked], masks)
            opt.step()
            sched.step()
            if masks:
                with torch.no_grad():
                    torch._foreach_mul_(masked, masks)
            loss_sum += loss.detach()
        loss_sum = float(loss_sum) / steps_per_epoch
        if checkpoint is not None:
            save_training(checkpoint, model, opt, sched, generator, epoch + 1,
                          {"loss": loss_sum})
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_sum)
        fault_point("epoch")
    return float(loss_sum)


@torch.no_grad()
def teacher_output(teacher: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The teacher's class scores as cross-entropy lays them out: (N, C, ...)."""
    return class_scores(call(teacher, x), y)


def soft_loss(out: torch.Tensor, y: torch.Tensor, teacher: torch.Tensor, cfg: TrainConfig
              ) -> torch.Tensor:
    """Distillation: KL(teacher || student) of the temperature-softened class scores
    (``teacher``: the teacher's, class axis 1), summed over classes and averaged over
    examples and positions (per token for a sequence's scores)."""
    scores = class_scores(out, y)
    target = F.softmax(teacher.to(scores.dtype) / cfg.temperature, dim=1)
    log_p = F.log_softmax(scores / cfg.temperature, dim=1)
    kl = (F.kl_div(log_p, target, reduction="batchmean") if log_p.dim() == 2 else
          F.kl_div(log_p, target, reduction="none").sum(1).mean())
    return cfg.temperature ** 2 * kl
