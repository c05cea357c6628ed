"""The run directory: the one record of a run, written atomically, read by every report.

    run.json                         evosynth's marker: format, versions, device, threads
    config.yaml                      fully resolved RunConfig
    ancestor_init.safetensors        the ancestor's initial weights (for ``rewind``)
    checkpoints/<tag>.safetensors    training state of the phase in progress (epoch-level)
    generations/<g>/weights.safetensors, masks.safetensors, metrics.json
    generations/<g>/population/<i>.safetensors   every member of a population (population > 1)
    genealogy.json                   every individual bred, its parents, score and size
    history.jsonl                    one JSON object per generation
    summary.json                     the best generation that meets the floor

A generation directory is first written under a temporary name and renamed into place,
so ``generations/<g>`` exists only once complete. Every path of a run is named by one
method here; no other module builds one.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from .breeding import Parent
from .config import RunConfig, dump_yaml, validate
from .errors import UserError
from .genome import Genome
from .io import (
    damaged,
    fault_point,
    read_json,
    read_safetensors,
    read_state,
    save_safetensors,
    save_state,
    write_json,
    write_text,
)
from .seeding import resolve_device

FORMAT = 1
GENERATIONS = "generations"
POPULATION = "population"  # in a generation's folder: every member of a population
CHECKPOINTS = "checkpoints"
MARKER = "run.json"
# every name evosynth writes at a run's top level (exports default to compact-gen*)
OWN_NAMES = (MARKER, "config.yaml", "ancestor_init.safetensors", GENERATIONS, CHECKPOINTS,
             "history.jsonl", "summary.json", "genealogy.json", "compact-gen*", "report.html",
             ".*.tmp")
OUTPUTS = ("compact-gen*", "report.html")  # what exports and reports may (re)write


def _environment(device: str) -> dict[str, Any]:
    from . import __version__

    return {"format": FORMAT, "evosynth": __version__, "torch": torch.__version__,
            "python": sys.version.split()[0], "device": str(resolve_device(device)),
            "threads": torch.get_num_threads()}


def check_out_path(path: Path) -> None:
    """Refuse places that can never be a run directory: the current folder or one above
    it, the root, the home folder, a file or a symbolic link."""
    if str(path).strip() in ("", "."):
        raise UserError("--out must name a folder for the run, not the current folder")
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link; give the folder it points to")
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is not a folder")
    real, cwd = path.resolve(), Path.cwd().resolve()
    if real == Path(real.anchor) or real == Path.home().resolve() or cwd.is_relative_to(real):
        raise UserError(f"{path} is the root, the home folder or a folder above the current "
                        "one; a run needs a folder of its own")


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- paths (the only place that names them) ---------------------------------------------
    @property
    def marker(self) -> Path:
        return self.path / MARKER

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def history_path(self) -> Path:
        return self.path / "history.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @property
    def genealogy_path(self) -> Path:
        return self.path / "genealogy.json"

    def generation_dir(self, g: int) -> Path:
        return self.path / GENERATIONS / str(g)

    def checkpoint_path(self, tag: str) -> Path:
        return self.path / CHECKPOINTS / f"{tag}.safetensors"

    def attempts_path(self, g: int) -> Path:
        """Generation ``g``'s rejected tries so far (adaptive mode), until it is recorded."""
        return self.path / CHECKPOINTS / f"gen{g}-attempts.json"

    def export_path(self, g: int, fmt: str) -> Path:
        return self.path / f"compact-gen{g}.{'onnx' if fmt == 'onnx' else 'safetensors'}"

    def owns(self, path: Path) -> bool:
        """``path`` is one of this run's own files (exports aside), which nothing else may
        overwrite."""
        try:
            rel = path.resolve().relative_to(self.path.resolve())
        except ValueError:
            return False
        return bool(rel.parts) and not any(fnmatchcase(rel.parts[0], p) for p in OUTPUTS)

    # -- creation ---------------------------------------------------------------------------
    def is_run(self) -> bool:
        """A folder evosynth made: its marker names our format."""
        if not self.marker.is_file():
            return False
        try:
            return isinstance(json.loads(self.marker.read_text()).get("format"), int)
        except (OSError, ValueError, AttributeError):
            return False

    def foreign_entries(self) -> list[str]:
        return sorted(p.name for p in self.path.iterdir()
                      if not any(fnmatchcase(p.name, pat) for pat in OWN_NAMES))

    def create(self, cfg: RunConfig, force: bool = False) -> None:
        """Start a new run here. An existing run is replaced only with ``force``, only if
        evosynth wrote everything in it, and only once the new one has started: it is first
        renamed aside, so a failure leaves it whole."""
        check_out_path(self.path)
        aside = None
        if self.path.exists():  # a kill while the run was being created leaves temp files
            self.clean_temporaries()
        if self.path.exists() and any(self.path.iterdir()):
            if not force:
                raise UserError(f"{self.path} already exists and is not empty; use "
                                "'evosynth resume' to continue it or --force to replace it")
            if not self.is_run():
                raise UserError(f"{self.path} is not an evosynth run (no {MARKER}); refusing "
                                "to delete it even with --force")
            foreign = self.foreign_entries()
            if foreign:
                raise UserError(f"{self.path} holds files evosynth did not write "
                                f"({', '.join(foreign[:3])}); move them out before --force")
            aside = self.path.with_name(f".{self.path.name}.replaced-{os.getpid()}")
            os.replace(self.path, aside)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            write_text(self.config_path, dump_yaml(cfg))
            write_json(self.marker, _environment(cfg.device))
        except BaseException:
            if aside is not None:  # put the old run back as it was
                shutil.rmtree(self.path, ignore_errors=True)
                os.replace(aside, self.path)
            raise
        if aside is not None:
            fault_point("replaced")
            shutil.rmtree(aside, ignore_errors=True)
            if aside.exists():
                print(f"evosynth: warning: could not remove the replaced run, now at {aside}; "
                      "delete it by hand", file=sys.stderr)

    def environment(self) -> dict[str, Any]:
        """What the run recorded of the machine (thread count, versions, device)."""
        if not self.marker.is_file():
            return {}
        env = read_json(self.marker)
        return env if isinstance(env, dict) else {}

    def config(self) -> RunConfig:
        p = self.config_path
        if not self.path.is_dir():
            raise UserError(f"{self.path} is not a folder")
        if not p.is_file():
            raise UserError(f"{self.path} is not an evosynth run directory (no config.yaml)")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            why = str(exc).splitlines()[0]
            raise damaged(p, f"not valid YAML: {why}", "restore it or start the run "
                          "again") from None
        raw = raw or {}
        if isinstance(raw, dict) and isinstance(raw.get("evolution"), dict) \
                and "environment" not in raw["evolution"]:
            # recorded before the adaptive environment existed: those runs followed the
            # encoding's factors, which is the schedule environment
            raw["evolution"]["environment"] = {"kind": "schedule"}
        return validate(raw, str(p))

    def clear_checkpoints(self, upto: int | None = None) -> None:
        """Drop the training checkpoints of generations up to ``upto`` (default: all),
        once those generations are recorded."""
        folder = self.path / CHECKPOINTS
        if not folder.is_dir():
            return
        for p in folder.glob("gen*-*"):
            g = p.name[3:].split("-", 1)[0]
            if upto is None or (g.isdigit() and int(g) <= upto):
                p.unlink(missing_ok=True)

    def clean_temporaries(self) -> None:
        """Temp files and half-written generations of a process that was killed."""
        for tmp in self.path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        gens = self.path / GENERATIONS
        if gens.is_dir():
            for partial in gens.glob(".*.partial"):
                shutil.rmtree(partial, ignore_errors=True)

    # -- generations ------------------------------------------------------------------------
    def write_generation(self, g: int, model: nn.Module, genome: Genome,
                         metrics: dict[str, Any], members: list[Parent] | None = None) -> None:
        """The generation's best (weights, masks, metrics) and, for a population, every
        member (``population/<i>.safetensors``), written together or not at all."""
        final = self.generation_dir(g)
        tmp = final.parent / f".{g}.partial"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        save_safetensors(model.state_dict(), tmp / "weights.safetensors")
        genome.save(tmp / "masks.safetensors")
        for i, member in enumerate(members or []):
            (tmp / POPULATION).mkdir(exist_ok=True)
            save_state(*member.to_state(), tmp / POPULATION / f"{i}.safetensors")
        write_json(tmp / "metrics.json", metrics)
        fault_point("generation-written")
        if final.exists():  # a generation redone after an interrupted resume
            shutil.rmtree(final)
        os.replace(tmp, final)

    def load_population(self, g: int, layers) -> list[Parent]:
        """A population run's members at generation ``g`` (empty for a single lineage)."""
        folder = self.generation_dir(g) / POPULATION
        files = sorted(folder.glob("*.safetensors"), key=lambda p: int(p.stem)) \
            if folder.is_dir() else []
        members = [Parent.from_state(*read_state(p)) for p in files]
        for p, m in zip(files, members, strict=True):
            if set(m.masks) != set(layers):
                raise damaged(p, "masks for other layers than the model's",
                              "restore it or start the run again")
        return members

    def weights_path(self, g: int) -> Path:
        """A generation's weights: what ``ancestor_weights`` takes from another run."""
        return self.generation_dir(g) / "weights.safetensors"

    def complete_generations(self) -> list[int]:
        """0..g for the longest run of complete generation directories."""
        done, g = [], 0
        while (self.generation_dir(g) / "metrics.json").is_file():
            done.append(g)
            g += 1
        return done

    def read_metrics(self, g: int, required: tuple[str, ...] = ()) -> dict[str, Any]:
        p = self.generation_dir(g) / "metrics.json"
        rec = read_json(p)
        missing = [k for k in required if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise damaged(p, f"no {', '.join(missing)}", "restore it or start the run again")
        return rec

    def load_generation(self, g: int, model: nn.Module, layers) -> Genome:
        d = self.generation_dir(g)
        try:
            model.load_state_dict(read_safetensors(d / "weights.safetensors"))
        except RuntimeError as exc:
            raise UserError(f"{d}: weights do not fit the model: {str(exc).splitlines()[0]}"
                            ) from None
        return Genome.load(d / "masks.safetensors", layers)

    # -- records ----------------------------------------------------------------------------
    def write_history(self, history: list[dict[str, Any]]) -> None:
        write_text(self.history_path, "".join(json.dumps(r) + "\n" for r in history))

    def history(self) -> list[dict[str, Any]]:
        p = self.history_path
        if not p.is_file():
            raise UserError(f"{self.path} has no history.jsonl yet")
        try:
            return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()
                    if line.strip()]
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise damaged(p, f"not JSON lines: {str(exc).splitlines()[0]}",
                          "'evosynth resume' rewrites it from the generations") from None

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary_path, summary)

    def summary(self) -> dict[str, Any] | None:
        p = self.summary_path
        if not p.is_file():
            return None
        s = read_json(p, "'evosynth resume' rewrites it from the generations")
        if not isinstance(s, dict) or not isinstance(s.get("best_generation"), int):
            raise damaged(p, "no best_generation", "'evosynth resume' rewrites it")
        return s

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
        return read_safetensors(self.path / name)
