"""Data streamed batch by batch from a ``DataLoader`` (or any re-iterable of batches),
never held in memory as a whole.

Each pass iterates the loader once: an epoch of training, or one evaluation. The loader owns
the order, the batch size and any augmentation; for runs that repeat (and resume exactly),
give it a seeded generator (``DataLoader(..., shuffle=True, generator=g)``) or no shuffling.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from ..errors import UserError
from ..inputs import Inputs, as_batch


def is_stream(data: Any) -> bool:
    """A DataLoader, or any iterable that cannot be indexed (a generator's batches come once:
    pass something re-iterable)."""
    from torch.utils.data import DataLoader

    if isinstance(data, DataLoader):
        return True
    return (hasattr(data, "__iter__") and not hasattr(data, "__getitem__")
            and not isinstance(data, (torch.Tensor, dict, str)))


class StreamData:
    """A stream of ``(inputs, targets)`` batches; ``inputs`` a tensor, a tuple or a dict."""

    augment = None  # the loader's business
    decode = None

    def __init__(self, loader: Iterable[Any], device: torch.device | None = None):
        self.loader, self.device = loader, device
        self._first: tuple[torch.Tensor | Inputs, torch.Tensor] | None = None

    def __iter__(self) -> Iterator[tuple[torch.Tensor | Inputs, torch.Tensor]]:
        count = 0
        for batch in self.loader:
            x, y = as_batch(batch)
            if self.device is not None:
                x, y = x.to(self.device), y.to(self.device)
            count += 1
            yield x, y
        if count == 0:
            raise UserError("a data loader gave no batches")

    def first(self) -> tuple[torch.Tensor | Inputs, torch.Tensor]:
        """The first batch (kept: the checks, the coupling and compaction look at it)."""
        if self._first is None:
            x, y = next(iter(self))
            self._first = (x.cpu(), y.cpu())
        return self._first

    @property
    def x(self) -> torch.Tensor | Inputs:
        """The first batch's inputs: what one example looks like."""
        return self.first()[0]

    @property
    def y(self) -> torch.Tensor:
        return self.first()[1]

    def inputs(self, idx: slice) -> torch.Tensor | Inputs:
        """Examples ``idx`` of the first batch (a stream has no random access)."""
        return self.first()[0][idx]

    def __len__(self) -> int:
        dataset = getattr(self.loader, "dataset", None)
        try:
            return len(dataset) if dataset is not None else len(self.loader) * len(self.y)
        except TypeError:
            raise UserError("streamed data needs a loader with len() (a DataLoader over a "
                            "map-style Dataset, or a list of batches)") from None

    def steps(self, batch_size: int) -> int:
        try:
            return len(self.loader)
        except TypeError:
            raise UserError("streamed data needs a loader with len(), to schedule the "
                            "learning rate") from None

    def batches(self, batch_size: int, generator: torch.Generator
                ) -> Iterator[tuple[torch.Tensor | Inputs, torch.Tensor]]:
        return iter(self)

    def eval_batches(self, batch_size: int = 1000
                     ) -> Iterator[tuple[torch.Tensor | Inputs, torch.Tensor]]:
        return iter(self)

    def to(self, device: torch.device) -> StreamData:
        out = StreamData(self.loader, device)
        out._first = self._first
        return out
