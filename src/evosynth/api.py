"""Entry points: ``evolve`` for any ``nn.Module`` and data, ``run``/``resume`` for configs."""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from .config import RunConfig, validate
from .data import Splits, TensorData, load_dataset, split_validation
from .errors import UserError
from .evolution import Evolution, EvolutionResult, derive_seed, generator
from .models import build_model
from .rundir import RunDir
from .tasks import Task

DataLike = TensorData | tuple[torch.Tensor, torch.Tensor] | Dataset


def as_tensor_data(data: DataLike, what: str) -> TensorData:
    """Materialize (x, y) tensors or a map-style Dataset of (x, y) pairs in memory."""
    if isinstance(data, TensorData):
        return data
    if isinstance(data, tuple) and len(data) == 2:
        x, y = data
    else:
        try:
            pairs = [data[i] for i in range(len(data))]
        except (TypeError, IndexError) as exc:
            raise UserError(f"{what}: expected (x, y) tensors or a Dataset of pairs") from exc
        x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
        y = torch.as_tensor([int(p[1]) for p in pairs])
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64)
    if len(x) != len(y):
        raise UserError(f"{what}: {len(x)} inputs but {len(y)} labels")
    return TensorData(x, y)


def evolve(model: nn.Module, train_data: DataLike, test_data: DataLike | None = None,
           config: RunConfig | dict[str, Any] | None = None, *, val_data: DataLike | None = None,
           run_dir: str | Path | None = None, force: bool = False, trained: bool = False,
           task: Task | None = None, log: Callable[[str], None] = print,
           progress: bool = False) -> EvolutionResult:
    """Evolve ``model`` (the ancestor) and return the history and the best offspring.

    ``train_data``/``test_data``: ``(x, y)`` tensors or a map-style Dataset. Validation is a
    seeded ``config.evolution.val_fraction`` of ``train_data`` unless ``val_data`` is given.
    ``trained=True`` takes ``model``'s weights as the trained ancestor (no ancestor training;
    its zeros become dead synapses). The model is not modified; the result holds copies.
    ``task`` is what the network is trained and judged on (default: classification by
    cross-entropy and accuracy); a task's data must be ``TensorData`` in its own format,
    e.g. ``load_kitti``'s ``DetectionData`` with its ``Detection`` task.
    """
    cfg = config if isinstance(config, RunConfig) else validate(dict(config or {}))

    def own(data: DataLike, what: str) -> TensorData:
        if task is None:
            return as_tensor_data(data, what)
        if not isinstance(data, TensorData):
            raise UserError(f"{what}: with a task, pass the task's TensorData "
                            f"(got {type(data).__name__})")
        return data

    train = own(train_data, "train_data")
    test = own(test_data, "test_data") if test_data is not None else None
    if val_data is None:
        train, val = split_validation(train, cfg.evolution.val_fraction,
                                      generator(cfg.seed, "split"))
    else:
        val = own(val_data, "val_data")
    if task is None:
        num_classes = int(max(int(train.y.max()), int(val.y.max())) + 1)
    else:
        num_classes = len(getattr(task, "classes", ()))
    splits = Splits(train, val, test, num_classes, task)
    rd = RunDir(run_dir if run_dir is not None else tempfile.mkdtemp(prefix="evosynth-"))
    rd.create(cfg, force=force or run_dir is None)
    model = copy.deepcopy(model)
    evo = Evolution(cfg, model, splits, rd, log=log, progress=progress)
    evo.start(ancestor_state=model.state_dict() if trained else None)
    return evo.run_all()


def _from_config(cfg: RunConfig) -> tuple[nn.Module, Splits]:
    """A config builds its data (seeded split) and its model (seeded initialization)."""
    data = load_dataset(cfg.dataset, cfg.data_dir, cfg.evolution.val_fraction,
                        generator(cfg.seed, "split"), cfg.data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(cfg.seed, "model-init"))
        model = build_model(cfg.model, data.num_classes, data.input_shape, cfg.model_args)
    return model, data


def run(cfg: RunConfig, out: str | Path, force: bool = False,
        log: Callable[[str], None] = print, progress: bool = True) -> EvolutionResult:
    """A registry model on a registry data set, as ``evosynth evolve`` runs it."""
    model, data = _from_config(cfg)  # fails on bad model/data before the directory is touched
    ancestor = None
    if cfg.ancestor_weights is not None:
        p = Path(cfg.ancestor_weights)
        if not p.is_file():
            raise UserError(f"ancestor weights {p} do not exist")
        ancestor = load_file(str(p))
    rd = RunDir(out)
    rd.create(cfg, force=force)
    evo = Evolution(cfg, model, data, rd, log=log, progress=progress)
    evo.start(ancestor_state=ancestor)
    return evo.run_all()


def load_run(run_dir: str | Path, generation: int | None = None):
    """(model with the generation's weights, its Genome, the run's config, example input).

    ``generation`` defaults to the run's best (summary.json)."""
    rd = RunDir(run_dir)
    cfg = rd.config()
    model, data = _from_config(cfg)
    done = rd.complete_generations()
    if generation is None:
        generation = rd.best_generation()
    if generation not in done:
        raise UserError(f"{rd.path}: generation {generation} is not complete; "
                        f"complete: {done or 'none'}")
    from .clusters import prunable_layers

    genome = rd.load_generation(generation, model, prunable_layers(model, cfg.encoding.exclude))
    return model.eval(), genome, cfg, data.train.inputs(slice(0, 8))


def resume(out: str | Path, log: Callable[[str], None] = print, progress: bool = True
           ) -> EvolutionResult:
    """Continue a run from its last complete generation, exactly as if never stopped."""
    rd = RunDir(out)
    cfg = rd.config()
    model, data = _from_config(cfg)
    evo = Evolution(cfg, model, data, rd, log=log, progress=progress)
    evo.restore()
    if evo.finished():
        log(f"{rd.path}: already finished at generation {evo.history[-1]['generation']}")
    return evo.run_all()
