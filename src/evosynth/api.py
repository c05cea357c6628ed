"""Entry points: ``evolve`` for any ``nn.Module`` and data, ``run``/``resume`` for configs."""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .clusters import prunable_layers
from .config import ExecutionConfig, RunConfig, validate
from .data import Splits, TensorData, load_dataset, split_validation
from .data.stream import StreamData, is_stream
from .errors import UserError
from .evolution import Evolution, EvolutionResult
from .genome import Genome
from .inputs import as_inputs, input_tensor
from .io import read_safetensors
from .models import build_model
from .rundir import RunDir
from .seeding import derive_seed, generator, resolve_device
from .tasks import Task

PYTHON = "python:"  # a run's recorded model, when it came from evosynth.evolve
DataLike = TensorData | tuple[Any, torch.Tensor] | Dataset | Iterable[Any]


def as_tensor_data(data: DataLike, what: str) -> TensorData:
    """Materialize ``(inputs, targets)`` or a map-style Dataset of (x, y) pairs in memory.
    ``inputs`` is a tensor, a tuple of tensors (the model takes them by position) or a dict
    of tensors (by name), every tensor with the examples along its first axis."""
    if isinstance(data, TensorData):
        return data
    x = None
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[1], torch.Tensor):
        x, y = as_inputs(data[0]), data[1]
    if x is None:
        try:
            pairs = [data[i] for i in range(len(data))]
            x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
            y = torch.as_tensor([int(p[1]) for p in pairs])
        except (TypeError, IndexError, KeyError, RuntimeError) as exc:
            raise UserError(f"{what}: expected (inputs, targets) with inputs a tensor, a tuple "
                            "or a dict of tensors, or a Dataset of (x, y) pairs") from exc
        x = input_tensor(x)
    y = torch.as_tensor(y)
    if y.is_floating_point() and y.dim() > 1:
        raise UserError(f"{what}: float labels of shape {tuple(y.shape)} look one-hot or soft; "
                        "pass class indices (y.argmax(-1))")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise UserError(f"{what}: labels must be class indices, these have fractions")
    if len(x) != len(y):
        raise UserError(f"{what}: {len(x)} inputs but {len(y)} labels")
    return TensorData(x, y.to(torch.int64))


def evolve(model: nn.Module, train_data: DataLike, test_data: DataLike | None = None,
           config: RunConfig | dict[str, Any] | None = None, *, val_data: DataLike | None = None,
           run_dir: str | Path | None = None, force: bool = False, trained: bool = False,
           task: Task | None = None, log: Callable[[str], None] = print,
           progress: bool = False) -> EvolutionResult:
    """Evolve ``model`` (the ancestor) and return the history and the best offspring.

    ``train_data``/``test_data``/``val_data``: ``(inputs, targets)`` with inputs a tensor, a
    tuple of tensors (the model takes them by position) or a dict (by name); a map-style
    Dataset of (x, y) pairs (held in memory); or a ``DataLoader`` (any re-iterable of such
    batches that is not indexable), streamed batch by batch every epoch, never held whole.
    Validation is a seeded ``config.evolution.val_fraction`` of ``train_data`` unless
    ``val_data`` is given (a stream needs it).
    ``trained=True`` takes ``model``'s weights as the trained ancestor (no ancestor training;
    its zeros become dead synapses). The model is not modified; the result holds copies.
    ``task`` is what the network is trained and judged on (default: classification by
    cross-entropy and accuracy); a task's data must be ``TensorData`` in its own format,
    e.g. ``load_kitti``'s ``DetectionData`` with its ``Detection`` task.
    """
    if config is not None and not isinstance(config, (RunConfig, dict)):
        raise UserError(f"config: expected a RunConfig or a dict of settings, "
                        f"got {type(config).__name__}")
    if not isinstance(model, nn.Module):
        raise UserError(f"model: expected an nn.Module, got {type(model).__name__}")
    cfg = config if isinstance(config, RunConfig) else validate(dict(config or {}))

    def own(data: DataLike, what: str) -> TensorData | StreamData:
        if is_stream(data):
            return StreamData(data)
        if task is None:
            return as_tensor_data(data, what)
        if not isinstance(data, TensorData):
            raise UserError(f"{what}: with a task, pass the task's TensorData "
                            f"(got {type(data).__name__})")
        return data

    train = own(train_data, "train_data")
    test = own(test_data, "test_data") if test_data is not None else None
    if val_data is None:
        if isinstance(train, StreamData):
            raise UserError("train_data is streamed (a data loader): pass val_data too, a "
                            "stream cannot be split")
        train, val = split_validation(train, cfg.evolution.val_fraction,
                                      generator(cfg.seed, "split"))
    else:
        val = own(val_data, "val_data")
    if task is None:  # (a stream's: from its first batch; the model's outputs decide)
        num_classes = int(max(int(train.y.max()), int(val.y.max())) + 1)
    else:
        num_classes = len(getattr(task, "classes", ()))
    splits = Splits(train, val, test, num_classes, task)
    rd = RunDir(run_dir if run_dir is not None else tempfile.mkdtemp(prefix="evosynth-"))
    model = copy.deepcopy(model)
    evo = Evolution(cfg, model, splits, rd, log=log, progress=progress)  # checks the data
    # the run records that its model and data live in the caller's code, not the registry
    rd.create(dataclasses.replace(cfg, model=f"{PYTHON}{type(model).__name__}",
                                  dataset=PYTHON.rstrip(":")),
              force=force or run_dir is None)
    evo.start(ancestor_state=model.state_dict() if trained else None)
    return evo.run_all()


def build(cfg: RunConfig) -> tuple[nn.Module, Splits]:
    """A config's model (seeded initialization) and data (seeded split), as a run builds
    them: what a benchmark or a user's own loop needs to share one run's setting."""
    if cfg.model.startswith(PYTHON):
        raise UserError(f"this run was made from Python ({cfg.model[len(PYTHON):]}, with "
                        "evosynth.evolve): its model and data are in your code; resume and "
                        "export it there (evosynth.export.export_onnx(compact(model, example, "
                        "masks).model, example, path))")
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.evolution.val_fraction,
                        generator(cfg.seed, "split"), cfg.data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "model-init"))
        model = build_model(cfg.model, data.num_classes, data.input_shape, cfg.model_args)
    return model, data


def run(cfg: RunConfig, out: str | Path, force: bool = False,
        log: Callable[[str], None] = print, progress: bool | str = True) -> EvolutionResult:
    """A registry model on a registry data set, as ``evosynth evolve`` runs it."""
    model, data = build(cfg)  # fails on bad model/data before the directory is touched
    ancestor = _ancestor_state(cfg)
    rd = RunDir(out)
    evo = Evolution(cfg, model, data, rd, log=log, progress=progress)  # checks the data
    rd.create(cfg, force=force)
    evo.start(ancestor_state=ancestor)
    return evo.run_all()


def _ancestor_state(cfg: RunConfig) -> dict[str, torch.Tensor] | None:
    if cfg.ancestor_weights is None:
        return None
    p = Path(cfg.ancestor_weights)
    if not p.is_file():
        raise UserError(f"ancestor weights {p} do not exist")
    return read_safetensors(p, "ancestor_weights must be a safetensors state dict")


def _match_environment(rd: RunDir, log: Callable[[str], None]) -> None:
    """Resume under the thread count the run recorded: another one changes float sums, and
    so the weights, from the next generation on."""
    env = rd.environment()
    threads = env.get("threads")
    if not isinstance(threads, int):
        log(f"warning: {rd.path} recorded no thread count; resuming with "
            f"{torch.get_num_threads()}, which may change the results")
    elif threads != torch.get_num_threads():
        torch.set_num_threads(threads)
        log(f"resuming with {threads} threads, as the run was started")
    device = env.get("device")
    if device and device != str(resolve_device(rd.config().device)):
        log(f"warning: the run was started on {device}; continuing on "
            f"{resolve_device(rd.config().device)} may change the results")


@dataclass
class LoadedRun:
    """A generation of a run, rebuilt from its directory."""

    model: nn.Module  # with the generation's weights, in eval mode
    genome: Genome
    config: RunConfig
    example: torch.Tensor  # a batch of training inputs, for compaction and export


def load_run(run_dir: str | Path, generation: int | None = None,
             data_dir: str | Path | None = None) -> LoadedRun:
    """A registry run's generation (default: its best, from summary.json); ``data_dir``
    says where the data lies now, for a run moved off the machine that made it."""
    rd = RunDir(run_dir)
    cfg = rd.config()
    if data_dir is not None:
        cfg = dataclasses.replace(cfg, data_dir=str(data_dir))
    model, data = build(cfg)
    done = rd.complete_generations()
    if generation is None:
        generation = rd.best_generation()
    if generation not in done:
        raise UserError(f"{rd.path}: generation {generation} is not complete; "
                        f"complete: {done or 'none'}")
    genome = rd.load_generation(generation, model, prunable_layers(model, cfg.encoding.exclude))
    return LoadedRun(model.eval(), genome, cfg, data.train.inputs(slice(0, 8)))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_resume_settings(out: str | Path, given: RunConfig, whole: bool,
                          keys: list[str]) -> None:
    """``evolve --resume`` continues the run as it was configured: settings given with it
    that differ from the run's are refused by name, never silently ignored."""
    from .config import to_dict

    run = _flat(to_dict(RunDir(out).config()))
    new = _flat(to_dict(given))
    names = sorted(run) if whole else [k for k in keys if k in run]
    names = [k for k in names if not k.startswith("execution.")]  # where, not what
    differ = [k for k in names if run.get(k) != new.get(k)]
    if differ:
        shown = ", ".join(f"{k} (run: {run.get(k)!r}, given: {new.get(k)!r})"
                          for k in differ[:3])
        raise UserError(f"--resume continues the run as configured, but these settings "
                        f"differ: {shown}; drop them, or start a new run")


def export_run(run_dir: str | Path, fmt: str = "onnx", generation: int | None = None,
               out: str | Path | None = None, force: bool = False,
               data_dir: str | Path | None = None) -> tuple[list[Path], str]:
    """Write a generation's compact network; returns the files written and a note. Never
    writes over the run's own files, a folder, or (without ``force``) any existing file.
    ``data_dir``: where the run's data lies now (its example batch traces the network)."""
    from .compact import compact
    from .export import FORMATS, export_onnx, export_safetensors

    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    rd = RunDir(run_dir)
    g = generation if generation is not None else rd.best_generation()
    out = Path(out) if out is not None else rd.export_path(g, fmt)
    targets = [out] + ([out.with_suffix(".json")] if fmt == "safetensors" else [])
    if len(set(targets)) < len(targets):
        raise UserError(f"--out {out}: its JSON description would overwrite it; name the "
                        "weights file *.safetensors")
    for t in targets:
        if t.is_dir():
            raise UserError(f"--out {out}: {t} is a folder; name a file")
        if rd.owns(t):
            raise UserError(f"--out {out}: {t} is one of the run's own files")
        if (t.exists() or t.is_symlink()) and not force:
            raise UserError(f"{t} exists; pass --force to overwrite it")
    run = load_run(run_dir, g, data_dir)
    model, genome, cfg, example = run.model, run.genome, run.config, run.example
    small = compact(model, example, genome.masks, tuple(cfg.encoding.exclude)).model
    if fmt == "onnx":
        diff = export_onnx(small, example, out)
        return targets, f" (onnxruntime vs PyTorch: max abs diff {diff:.1e})"
    meta = {"model": cfg.model, "model_args": cfg.model_args, "generation": g,
            "input_shape": list(example.shape[1:]), "source": str(run_dir)}
    export_safetensors(small, out, meta)
    return targets, ""


def resume(out: str | Path, log: Callable[[str], None] = print, progress: bool | str = True,
           execution: ExecutionConfig | None = None) -> EvolutionResult:
    """Continue a run from its last complete generation, exactly as if never stopped.
    ``execution``: where to breed from now on (the run's own settings by default); the
    backend does not change the result at the same thread count."""
    rd = RunDir(out)
    cfg = rd.config()
    if execution is not None:
        cfg = dataclasses.replace(cfg, execution=execution)
    _match_environment(rd, log)
    model, data = build(cfg)
    evo = Evolution(cfg, model, data, rd, log=log, progress=progress)
    if not evo.restore():  # killed before the ancestor was recorded: continue its training
        evo.start(ancestor_state=_ancestor_state(cfg))
    elif evo.finished():
        log(f"{rd.path}: already finished at generation {evo.history[-1]['generation']}")
    return evo.run_all()
