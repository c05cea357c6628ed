"""Epoch-level training state in one safetensors file, so that a kill costs at most an epoch.

Model, optimizer, scheduler and generator states are flattened into tensors and a JSON
string in the file's metadata: no pickle, and one atomic write per epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .io import damaged, read_state, save_state

_HINT = "delete it to retrain that phase from its start"


def save_training(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                  sched: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator,
                  epoch: int, extra: dict[str, Any] | None = None) -> None:
    """The state after ``epoch`` completed epochs."""
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt_state["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{idx}/{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    tensors["rng/generator"] = generator.get_state()
    tensors["rng/torch"] = torch.get_rng_state()
    sched_state = {k: v for k, v in sched.state_dict().items() if k != "lr_lambdas"}
    meta = {"epoch": epoch, "param_groups": opt_state["param_groups"],
            "optim_scalars": scalars, "scheduler": sched_state, "extra": extra or {}}
    save_state(tensors, meta, path)


def load_training(path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                  sched: torch.optim.lr_scheduler.LRScheduler, generator: torch.Generator
                  ) -> tuple[int, dict[str, Any]]:
    """Restore what ``save_training`` wrote; returns (completed epochs, extra)."""
    tensors, meta = read_state(path, _HINT)
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    except (KeyError, ValueError, RuntimeError) as exc:
        raise damaged(path, f"not a training checkpoint of this model: "
                      f"{str(exc).splitlines()[0]}", _HINT) from None
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, scalars in meta["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(scalars)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict({**meta["scheduler"], "lr_lambdas": [None] * len(opt.param_groups)})
    generator.set_state(tensors["rng/generator"])
    torch.set_rng_state(tensors["rng/torch"])
    return int(meta["epoch"]), meta["extra"]
