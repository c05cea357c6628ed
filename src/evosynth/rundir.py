"""The run directory: the one record of a run, written atomically, read by every report.

    config.yaml                      fully resolved RunConfig
    ancestor_init.safetensors        the ancestor's initial weights (for ``rewind``)
    generations/<g>/weights.safetensors, masks.safetensors, metrics.json
    history.jsonl                    one JSON object per generation
    summary.json                     the best generation that meets the floor

A generation directory is first written under a temporary name and renamed into place,
so ``generations/<g>`` exists only once complete.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn

from .config import RunConfig, dump_yaml, validate
from .errors import UserError
from .genome import Genome
from .io import save_safetensors, write_json, write_text

GENERATIONS = "generations"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- creation ---------------------------------------------------------------------------
    def create(self, cfg: RunConfig, force: bool = False) -> None:
        """Start a new run here. An existing run is never touched unless ``force``."""
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            if not force:
                raise UserError(f"{self.path} already exists and is not empty; use "
                                "'evosynth resume' to continue it or --force to replace it")
            if (self.path / "config.yaml").is_file() or not any(self.path.iterdir()):
                shutil.rmtree(self.path)
            else:
                raise UserError(f"{self.path} is not an evosynth run directory; "
                                "refusing to delete it even with --force")
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", dump_yaml(cfg))

    def config(self) -> RunConfig:
        p = self.path / "config.yaml"
        if not p.is_file():
            raise UserError(f"{self.path} is not an evosynth run directory (no config.yaml)")
        try:
            return validate(yaml.safe_load(p.read_text()) or {}, str(p))
        except yaml.YAMLError as exc:
            raise UserError(f"{p}: malformed YAML: {exc}") from None

    # -- generations ------------------------------------------------------------------------
    def generation_dir(self, g: int) -> Path:
        return self.path / GENERATIONS / str(g)

    def write_generation(self, g: int, model: nn.Module, genome: Genome,
                         metrics: dict[str, Any]) -> None:
        final = self.generation_dir(g)
        tmp = final.parent / f".{g}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_safetensors(model.state_dict(), tmp / "weights.safetensors")
        genome.save(tmp / "masks.safetensors")
        write_json(tmp / "metrics.json", metrics)
        if final.exists():  # a generation redone after an interrupted resume
            shutil.rmtree(final)
        os.replace(tmp, final)

    def complete_generations(self) -> list[int]:
        """0..g for the longest run of complete generation directories."""
        done, g = [], 0
        while (self.generation_dir(g) / "metrics.json").is_file():
            done.append(g)
            g += 1
        return done

    def read_metrics(self, g: int) -> dict[str, Any]:
        return json.loads((self.generation_dir(g) / "metrics.json").read_text())

    def load_generation(self, g: int, model: nn.Module, layers) -> Genome:
        d = self.generation_dir(g)
        try:
            model.load_state_dict(load_file(str(d / "weights.safetensors")))
        except RuntimeError as exc:
            raise UserError(f"{d}: weights do not fit the model: {str(exc).splitlines()[0]}"
                            ) from None
        return Genome.load(d / "masks.safetensors", layers)

    # -- records ----------------------------------------------------------------------------
    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_text(self.path / "history.jsonl",
                   "".join(json.dumps(r) + "\n" for r in history))

    def history(self) -> list[dict[str, Any]]:
        p = self.path / "history.jsonl"
        if not p.is_file():
            raise UserError(f"{self.path} has no history.jsonl yet")
        return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.path / "summary.json", summary)

    def summary(self) -> dict[str, Any] | None:
        p = self.path / "summary.json"
        return json.loads(p.read_text()) if p.is_file() else None

    def best_generation(self) -> int:
        """The summary's best generation, else the last complete one."""
        summary = self.summary()
        if summary:
            return summary["best_generation"]
        done = self.complete_generations()
        return done[-1] if done else 0

    def save_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_safetensors(tensors, self.path / name)

    def load_tensors(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.path / name))
