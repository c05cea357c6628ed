"""Models that take several tensors: positional (``model(a, b)``) or by name (``model(**d)``).

``Inputs`` holds such tensors, indexed along their common first (example) axis as one, so
data splits, batches, examples and devices treat them as they treat one tensor. ``call``
is the one place a model is called on data.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .errors import UserError


class Inputs:
    """Several tensors that form one model input; ``args`` go by position, ``kwargs`` by
    name. Every tensor's first axis is the example axis."""

    def __init__(self, args: tuple[torch.Tensor, ...] = (),
                 kwargs: dict[str, torch.Tensor] | None = None):
        self.args, self.kwargs = tuple(args), dict(kwargs or {})
        lengths = {len(t) for t in self.tensors()}
        if len(lengths) > 1:
            raise ValueError(f"the input tensors hold different numbers of examples: "
                             f"{sorted(lengths)}")

    def tensors(self) -> list[torch.Tensor]:
        return [*self.args, *self.kwargs.values()]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Inputs:
        return Inputs(tuple(fn(t) for t in self.args), {k: fn(v) for k, v in self.kwargs.items()})

    def __getitem__(self, idx: Any) -> Inputs:
        return self.map(lambda t: t[idx])

    def __len__(self) -> int:
        return len(self.tensors()[0])

    def to(self, *args: Any, **kwargs: Any) -> Inputs:
        return self.map(lambda t: t.to(*args, **kwargs))

    def cpu(self) -> Inputs:
        return self.map(lambda t: t.cpu())

    @property
    def shape(self) -> tuple[tuple[int, ...], ...]:
        """Per tensor, its shape (the example axis included)."""
        return tuple(tuple(t.shape) for t in self.tensors())

    def __repr__(self) -> str:
        names = [f"#{i}" for i in range(len(self.args))] + list(self.kwargs)
        shapes = (f"{n}: {tuple(t.shape)}" for n, t in zip(names, self.tensors(), strict=True))
        return f"Inputs({', '.join(shapes)})"


Batch = torch.Tensor | Inputs


def input_tensor(t: Any) -> torch.Tensor:
    """Token ids (and other integers) stay as they are; everything else is float32."""
    t = torch.as_tensor(t)
    return t if not t.is_floating_point() and t.dtype != torch.bool else t.to(torch.float32)


def as_inputs(x: Any) -> Batch | None:
    """A tensor, a tuple/list of tensors (positional inputs) or a dict of tensors (named);
    None for anything else."""
    if isinstance(x, torch.Tensor):
        return input_tensor(x)
    try:
        if isinstance(x, (tuple, list)) and x and all(isinstance(t, torch.Tensor) for t in x):
            return Inputs(tuple(input_tensor(t) for t in x))
        if isinstance(x, dict) and x and all(isinstance(t, torch.Tensor) for t in x.values()):
            return Inputs(kwargs={str(k): input_tensor(t) for k, t in x.items()})
    except ValueError as exc:
        raise UserError(f"inputs: {exc}") from None
    return None


def as_batch(batch: Any) -> tuple[Batch, torch.Tensor]:
    """A loader's batch ``(inputs, targets)`` with inputs as ``as_inputs`` takes them."""
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        x = as_inputs(batch[0])
        if x is not None:
            return x, torch.as_tensor(batch[1])
    raise UserError(f"a data loader's batch must be (inputs, targets), got "
                    f"{type(batch).__name__}")


def call(model: Callable[..., Any], x: Batch) -> Any:
    """``model`` on one batch, its tensors by position or name as the data holds them."""
    if isinstance(x, Inputs):
        return model(*x.args, **x.kwargs)
    return model(x)


def tensors(x: Batch) -> list[torch.Tensor]:
    return x.tensors() if isinstance(x, Inputs) else [x]


def map_tensors(x: Batch, fn: Callable[[torch.Tensor], torch.Tensor]) -> Batch:
    return x.map(fn) if isinstance(x, Inputs) else fn(x)


def per_example_shape(x: Batch) -> tuple:
    """What one example looks like: a tensor's shape without its first axis, per tensor."""
    return tuple(tuple(t.shape[1:]) for t in tensors(x)) if isinstance(x, Inputs) \
        else tuple(x.shape[1:])


def as_double(x: Batch) -> Batch:
    """Floating tensors in float64 on the CPU (token ids stay integers): for exact checks."""
    return map_tensors(x, lambda t: t.cpu().double() if t.is_floating_point() else t.cpu())


def probe_like(x: Batch, seed: int = 0) -> Batch:
    """A second input of the same kind: random values for floating tensors, the same ids
    for integer ones."""
    gen = torch.Generator().manual_seed(seed)
    return map_tensors(x, lambda t: torch.randn(t.shape, generator=gen).to(t)
                       if t.is_floating_point() else t)
