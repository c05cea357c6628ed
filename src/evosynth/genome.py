"""A network's genome: the binary masks of its prunable layers, and what they count."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .clusters import Layer, live_clusters, live_filters, weight_of
from .errors import UserError
from .io import read_safetensors, save_safetensors


@dataclass
class Genome:
    layers: dict[str, Layer]
    masks: dict[str, torch.Tensor]  # bool, weight-shaped; True = synapse alive

    @classmethod
    def dense(cls, model: nn.Module, layers: dict[str, Layer]) -> Genome:
        modules = dict(model.named_modules())
        return cls(layers, {n: torch.ones_like(weight_of(modules[n]), dtype=torch.bool)
                            for n in layers})

    @classmethod
    def from_weights(cls, model: nn.Module, layers: dict[str, Layer]) -> Genome:
        """Masks from the zeros a (pre-pruned) model already has."""
        modules = dict(model.named_modules())
        return cls(layers, {n: weight_of(modules[n]).detach() != 0 for n in layers})

    def synapses(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    def stats(self, granularity: str) -> dict[str, Any]:
        """Synapse, cluster and filter counts, overall and per layer."""
        per_layer = {}
        for name, layer in self.layers.items():
            m = self.masks[name]
            kernels = live_clusters(m, layer, "kernel")
            filters = live_filters(m)
            heads = ({"heads": int(live_clusters(m, layer, "filter").sum()),
                      "dense_heads": layer.heads} if layer.kind == "attention" else {})
            per_layer[name] = {
                **heads,
                "synapses": int(m.sum()),
                "dense_synapses": layer.synapses,
                "kernel_clusters": int(kernels.sum()),
                "dense_kernel_clusters": int(kernels.numel()),
                "filters": int(filters.sum()),
                "dense_filters": int(filters.numel()),
                "clusters": int(live_clusters(m, layer, granularity).sum()),
            }
        keys = dict.fromkeys(k for v in per_layer.values() for k in v)
        total = {k: sum(v.get(k, 0) for v in per_layer.values()) for k in keys}
        return {**total, "layers": per_layer}

    def save(self, path: Path) -> None:
        save_safetensors({n: m.to(torch.uint8).cpu().contiguous() for n, m in self.masks.items()},
                         path)

    @classmethod
    def load(cls, path: Path, layers: dict[str, Layer]) -> Genome:
        raw = read_safetensors(path)
        if set(raw) != set(layers):
            raise UserError(f"{path}: masks for {sorted(raw)} do not match the model's "
                            f"prunable layers {sorted(layers)}")
        return cls(layers, {n: raw[n].bool() for n in layers})


def layer_weights(model: nn.Module, layers: dict[str, Layer] | set[str]
                  ) -> dict[str, torch.Tensor]:
    """The weights of ``layers`` by name: what an encoding reads a parent's strengths from."""
    return {n: weight_of(m).detach() for n, m in model.named_modules() if n in layers}


def weight_masks(masks: dict[str, torch.Tensor], layers: dict[str, Layer] | None = None
                 ) -> dict[str, torch.Tensor]:
    """Parameter masks of the weights alone (``apply_param_masks`` takes them)."""
    return {layers[name].weight_key if layers and name in layers else f"{name}.weight": mask
            for name, mask in masks.items()}


def apply_param_masks(model: nn.Module, param_masks: dict[str, torch.Tensor]) -> None:
    """Zero every masked parameter entry (after each optimizer step, and once at birth)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in param_masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
