"""What a network costs to run: parameters, MACs (PyTorch's own FLOP counter), bytes on disk,
and measured latency. One measuring routine for every model, so ratios compare like with like."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

import torch
from safetensors.torch import save
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .inputs import Inputs, call


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass over ``example``'s batch, per sample."""
    model.eval()
    mha = getattr(torch.backends, "mha", None)  # the fused transformer path counts nothing
    fused = mha.get_fastpath_enabled() if mha is not None else False
    if mha is not None:
        mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False) as counter:
            call(model, example)
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(fused)
    return counter.get_total_flops() // 2 // max(1, len(example))


def size_bytes(model: nn.Module) -> int:
    """The model's weights as a safetensors file."""
    return len(save({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}))


def _sync(x) -> None:
    """Wait for the GPU (``x``: a tensor, Inputs, or an onnxruntime input, never on CUDA)."""
    t = x.tensors()[0] if isinstance(x, Inputs) else x
    if isinstance(t, torch.Tensor) and t.device.type == "cuda":
        torch.cuda.synchronize(t.device)


@torch.no_grad()
def latency_ms(fn, x: torch.Tensor, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time of ``fn(x)`` in milliseconds after warm-up (``x`` a tensor, or any
    input ``fn`` takes, such as a numpy array for onnxruntime)."""
    if isinstance(fn, nn.Module):
        fn.eval()
    for _ in range(warmup):
        call(fn, x)
    _sync(x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call(fn, x)
        _sync(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def interleaved_latency_ms(models: list[nn.Module], x: torch.Tensor, repeats: int = 30,
                           warmup: int = 3) -> list[float]:
    """Median wall time of each model on ``x``, timed round-robin (one pass of each model
    per round), so that anything else the machine does weighs on every model alike."""
    with torch.no_grad():
        for m in models:
            m.eval()
            for _ in range(warmup):
                call(m, x)
        times: list[list[float]] = [[] for _ in models]
        for _ in range(repeats):
            for i, m in enumerate(models):
                t0 = time.perf_counter()
                call(m, x)
                _sync(x)
                times[i].append((time.perf_counter() - t0) * 1e3)
    return [statistics.median(t) for t in times]


def machine() -> str:
    """The machine a measurement ran on, for every benchmark table."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")
