"""Seeds and devices: every random draw of a run comes from a generator made here.

A seed is derived from the run seed, a purpose and its coordinates (generation, offspring),
so each draw is independent of how many draws came before it, and a resumed run repeats
exactly what the uninterrupted one did.
"""

from __future__ import annotations

import hashlib
import itertools

import torch
from torch import nn

from .errors import UserError


def derive_seed(seed: int, *parts: object) -> int:
    """Independent, stable seeds for each purpose and generation."""
    digest = hashlib.sha256("/".join(map(str, (seed, *parts))).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, *parts: object) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(seed, *parts))


def draw_generator(seed: int, draw_seed: int | None, *parts: object) -> torch.Generator:
    """A generator for the evolution's own draws (offspring masks, re-initializations,
    training order, mates). ``draw_seed`` (``evolution.draw_seed``) gives another draw on
    the same split and ancestor, which come from the run seed alone; None keeps the run
    seed's draws."""
    if draw_seed is None:
        return generator(seed, *parts)
    return generator(seed, "draw", draw_seed, *parts)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available")
    return dev


def module_device(model: nn.Module) -> torch.device:
    """Where a model's tensors live (the CPU for a model that holds none)."""
    t = next(itertools.chain(model.parameters(), model.buffers()), None)
    return t.device if t is not None else torch.device("cpu")
