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


def train(model: nn.Module, data: TensorData | StreamData, cfg: TrainConfig,
          param_masks: dict[str, torch.Tensor], generator: torch.Generator,
          device: torch.device, desc: str = "train", progress: bool = True,
          loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = F.cross_entropy,
          checkpoint: Path | None = None, teacher: nn.Module | None = None,
          on_epoch: Callable[[int, float], None] | None = None) -> float:
    """Train in place; returns the last epoch's mean loss.

    Masked entries get zero gradient before the step (so momentum and Adam moments never
    see them) and are re-zeroed after it (so weight decay cannot revive them): a dead
    synapse stays exactly zero through any optimizer. With ``checkpoint``, the whole state
    is saved after every epoch and training continues from it if it exists, exactly.
    With ``teacher``, a share ``cfg.distill`` of the loss is the KL divergence to its
    softened outputs (temperature ``cfg.temperature``; Hinton et al.'s T^2 scaling).
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
    for epoch in range(start, cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        batches = tqdm(data.batches(cfg.batch_size, generator), total=steps_per_epoch,
                       desc=f"{desc} epoch {epoch + 1}/{cfg.epochs}", leave=False,
                       disable=not progress, unit="step")
        for x, y in batches:
            out = call(model, x)
            loss = loss_fn(out, y)
            if teacher is not None:
                loss = (1 - cfg.distill) * loss + cfg.distill * soft_loss(out, teacher, x, cfg)
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


def soft_loss(out: torch.Tensor, teacher: nn.Module, x: torch.Tensor, cfg: TrainConfig
              ) -> torch.Tensor:
    """Distillation: KL(teacher || student) of the temperature-softened class outputs."""
    with torch.no_grad():
        target = F.softmax(class_scores(call(teacher, x), None) / cfg.temperature, dim=1)
    t2 = cfg.temperature ** 2
    out = class_scores(out, None)
    return t2 * F.kl_div(F.log_softmax(out / cfg.temperature, dim=1), target,
                         reduction="batchmean")
