"""Shipping a compact network: ONNX (loads anywhere, checked against onnxruntime) or
safetensors weights with a JSON description of every layer's shape (loads into the model's
class, shrunk to fit). Neither format is a pickle."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn

from .attention import HeadPrunedAttention
from .errors import UserError
from .io import atomic_write, save_safetensors, write_json

FORMATS = ("onnx", "safetensors")
ONNX_TOL = 1e-4

_SHAPE_ARGS = {
    nn.Conv1d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups"),
    nn.Conv2d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups"),
    nn.Conv3d: ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation",
                "groups"),
    nn.Linear: ("in_features", "out_features"),
    nn.BatchNorm1d: ("num_features", "eps", "momentum"),
    nn.BatchNorm2d: ("num_features", "eps", "momentum"),
    nn.BatchNorm3d: ("num_features", "eps", "momentum"),
}
_TYPES = {cls.__name__: cls for cls in _SHAPE_ARGS}


def architecture(model: nn.Module) -> dict[str, Any]:
    """Every shaped layer's type and constructor arguments, by module name."""
    arch: dict[str, Any] = {}
    for name, m in model.named_modules():
        if any(name.startswith(f"{a}.") for a, v in arch.items()
               if v["type"] == "HeadPrunedAttention"):
            continue  # made by the attention itself
        if isinstance(m, HeadPrunedAttention):  # the heads kept of the model's attention
            arch[name] = {"type": "HeadPrunedAttention", "args": {"kept": m.kept}}
        elif type(m) in _SHAPE_ARGS:
            kwargs = {k: getattr(m, k) for k in _SHAPE_ARGS[type(m)]}
            if hasattr(m, "bias") and not isinstance(m, nn.modules.batchnorm._BatchNorm):
                kwargs["bias"] = m.bias is not None
            arch[name] = {"type": type(m).__name__, "args": kwargs}
    return arch


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> float:
    """Write ONNX with a dynamic batch axis; returns the max abs difference between
    onnxruntime and PyTorch on ``example`` (raises if above ``ONNX_TOL``)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX export needs: pip install 'evosynth[export]'") from None
    model = model.cpu().eval()
    example = example.cpu()

    def write(tmp: Path) -> None:
        batch = torch.export.Dim("batch", min=1)
        quiet = logging.getLogger("torch.onnx")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # it warns about torchvision ops we never use
        with warnings.catch_warnings():  # and about its own deprecations
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(tmp), dynamo=True, external_data=False,
                              input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), verbose=False)
        quiet.setLevel(level)

    atomic_write(path, write)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(example).numpy()
    got = session.run(None, {"input": example.numpy()})[0]
    diff = float(np.abs(got - ref).max())
    if diff > ONNX_TOL:
        path.unlink()
        raise RuntimeError(f"ONNX output differs from PyTorch by {diff:.2e} > {ONNX_TOL}")
    return diff


def export_safetensors(model: nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """``path`` (weights) and ``path.with_suffix('.json')`` (architecture and metadata)."""
    save_safetensors(model.state_dict(), path)
    write_json(path.with_suffix(".json"), {**meta, "architecture": architecture(model)})


def load_safetensors(base: nn.Module, path: str | Path) -> nn.Module:
    """Shrink ``base`` (a fresh instance of the exported model's class) to the recorded
    shapes and load the weights."""
    path = Path(path)
    spec = json.loads(path.with_suffix(".json").read_text())
    for name, layer in spec["architecture"].items():
        parent_name, _, attr = name.rpartition(".")
        parent = base.get_submodule(parent_name) if parent_name else base
        if layer["type"] == "HeadPrunedAttention":
            setattr(parent, attr, HeadPrunedAttention(getattr(parent, attr), **layer["args"]))
        else:
            setattr(parent, attr, _TYPES[layer["type"]](**layer["args"]))
    base.load_state_dict(load_file(str(path)))
    return base.eval()
