"""Checks before any training: the data fits the model, so a mistake costs seconds, not an
ancestor's hours."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .data import Splits
from .errors import UserError
from .inputs import call, per_example_shape, tensors


def check_data(model: nn.Module, data: Splits, task) -> None:
    """Seconds, not hours: refuse data the model cannot take before the ancestor trains."""
    shape = per_example_shape(data.train.x)
    for name, split in (("validation", data.val), ("test", data.test)):
        if split is not None and per_example_shape(split.x) != shape:
            raise UserError(f"{name} inputs have shape {per_example_shape(split.x)}, training "
                            f"inputs {shape}")
    for name, split in (("training", data.train), ("validation", data.val),
                        ("test", data.test)):
        if split is not None and any(t.is_floating_point() and not bool(
                torch.isfinite(t).all()) for t in tensors(split.x)):
            raise UserError(f"the {name} inputs hold NaN or infinite values")
    x, y = data.train.inputs(slice(0, 2)), data.train.y[:2]
    probe = copy.deepcopy(model).cpu().eval()
    with torch.no_grad():
        out = _probe(lambda: call(probe, x.cpu()))
        check = getattr(task, "check_targets", None)
        if check is not None:
            for name, split in (("training", data.train), ("validation", data.val),
                                ("test", data.test)):
                if split is not None:
                    check(out, split.y, name)
        _probe(lambda: task.loss(out, y.cpu()))


def _probe(step: Callable[[], Any]) -> Any:
    try:
        return step()
    except Exception as exc:  # any failure here is the data not fitting the model
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise UserError(f"the model cannot take the training data ({type(exc).__name__}: "
                        f"{why})") from None
