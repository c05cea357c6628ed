"""What a network costs to run: parameters, MACs (PyTorch's own FLOP counter), bytes on disk,
and measured latency. One measuring routine for every model, so ratios compare like with like."""

from __future__ import annotations

import statistics
import time

import torch
from safetensors.torch import save
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over ``example``'s batch, per sample."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    return counter.get_total_flops() // 2 // max(1, len(example))


def size_bytes(model: nn.Module) -> int:
    """The model's weights as a safetensors file."""
    return len(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def latency_ms(fn, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn(x)`` in milliseconds after warm-up."""
    if isinstance(fn, nn.Module):
        fn.eval()
    for _ in range(warmup):
        fn(x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        _sync(x.device)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)
