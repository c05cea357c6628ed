"""Breeding one offspring: a pure unit of work, the same on any machine.

An offspring is a function of its parents (weights, masks, fitness), the generation, its
index, the attempt, the environment and the run's seed, config and data: combine the
parents, sample the offspring's masks from their encoding, set its weights, train it under
its masks and evaluate it. ``Breeder`` holds what stays fixed during a run (a Ray worker
receives it once per run); ``Parent`` is what changes per generation. The loop in
``evolution.py`` is a thin driver over ``Breeder.offspring``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .clusters import Layer, prunable_layers
from .compact import Compacted, CompactionError, compact
from .config import RunConfig
from .coupling import Coupling
from .data import Splits
from .encoding import Environment, make_encoding
from .genome import Genome, apply_param_masks
from .mating import combine
from .seeding import draw_generator
from .tasks import CLASSIFICATION, Task
from .train import Teacher, train


@dataclass
class Fitness:
    """An offspring's validation score (higher is better) and the task's details."""

    value: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Parent:
    """A member of the population as a worker needs it: weights on the CPU, masks, score."""

    id: str
    state: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    fitness: Fitness
    parents: list[str] = field(default_factory=list)

    @property
    def synapses(self) -> int:
        return int(sum(int(m.sum()) for m in self.masks.values()))

    @property
    def rank(self) -> tuple[float, int]:
        """Higher is better: fitness first, then fewer synapses."""
        return self.fitness.value, -self.synapses

    @property
    def index(self) -> int:
        """k of ``g.k``: which offspring of its generation it is."""
        return int(self.id.rsplit(".", 1)[1])

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON metadata, for ``io.save_state``."""
        tensors = {**{f"weights/{k}": v for k, v in self.state.items()},
                   **{f"masks/{k}": v.to(torch.uint8) for k, v in self.masks.items()}}
        meta = {"id": self.id, "parents": self.parents, "value": self.fitness.value,
                "details": self.fitness.details}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Parent:
        state = {k[8:]: v for k, v in tensors.items() if k.startswith("weights/")}
        masks = {k[6:]: v.bool() for k, v in tensors.items() if k.startswith("masks/")}
        return cls(meta["id"], state, masks, Fitness(meta["value"], meta["details"]),
                   list(meta["parents"]))


@dataclass(frozen=True)
class Job:
    """Which offspring to breed: generation ``g``, index ``k``, the ``attempt``-th sampling
    of the generation, its environment (adaptive mode) and its parents' ids."""

    g: int
    k: int
    attempt: int
    env: Environment | None
    parents: tuple[str, ...]

    @property
    def id(self) -> str:
        return f"{self.g}.{self.k}"

    @property
    def at(self) -> tuple[Any, ...]:
        """The seed path of this offspring's draws."""
        return (self.g, self.k) if self.attempt == 0 else (self.g, self.k, "try", self.attempt)


@dataclass
class TrainHooks:
    """What the local driver adds to training: a checkpoint to resume from, progress."""

    checkpoint: Path | None = None
    bars: bool = False
    on_epoch: Callable[[int, float], None] | None = None


class Breeder:
    """Everything fixed during a run that breeding an offspring needs."""

    def __init__(self, cfg: RunConfig, model: nn.Module, data: Splits | None,
                 example: torch.Tensor, ancestor_init: dict[str, torch.Tensor] | None = None):
        self.cfg, self.data, self.example = cfg, data, example.cpu()
        self.model = copy.deepcopy(model).cpu()  # the architecture; weights come from parents
        self.ancestor_init = ancestor_init
        self.task: Task = (data.task if data is not None else None) or CLASSIFICATION
        self.device = torch.device("cpu")
        self.compaction = "not checked"
        self._derive()

    def _derive(self) -> None:
        """What follows from the model alone (rebuilt, not shipped, on a worker)."""
        cfg, model = self.cfg, self.model
        self.layers: dict[str, Layer] = prunable_layers(model, cfg.encoding.exclude)
        # what a parent's strengths are read from: its layers and their BatchNorm scales, by
        # module, named as in the state dict
        self.strength_keys = {n: layer.weight_key for n, layer in self.layers.items()} | {
            n: f"{n}.weight" for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None}
        self.coupling = (Coupling.build(copy.deepcopy(model).eval(), self.example[:2],
                                        self.layers)
                         if cfg.encoding.couple else Coupling([], self.layers))
        self.encoding = make_encoding(cfg.encoding, self.layers, self.coupling.ties(),
                                      self.coupling)

    def __getstate__(self) -> dict[str, Any]:
        # the coupling holds a traced Torch-Pruning graph: rebuilt from the model instead
        return {k: v for k, v in self.__dict__.items()
                if k not in ("layers", "strength_keys", "coupling", "encoding")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive()

    # -- sampling ---------------------------------------------------------------------------
    def draws(self, *parts: object) -> torch.Generator:
        return draw_generator(self.cfg.seed, self.cfg.evolution.draw_seed, *parts)

    def sample(self, parents: list[Parent], job: Job) -> tuple[nn.Module, Genome]:
        """The offspring's masks, drawn from its parents' encoding, and its initial weights
        (on the CPU)."""
        ev = self.cfg.evolution
        strengths, masks, state = combine(parents, self.coupling, self.model,
                                          self.strength_keys, ev.mating)
        masks = self.encoding.sample(strengths, masks, job.g, self.draws("sample", *job.at),
                                     job.env)
        masks = self.coupling.propagate(masks, self.encoding.protected, tie=self.encoding.tie)
        child = copy.deepcopy(self.model)
        child.load_state_dict(state)
        if ev.weights == "scratch":
            reinitialize(child, self.layers, self.draws("scratch", *job.at))
        elif ev.weights == "rewind":
            child.load_state_dict(self.ancestor_init)
        genome = Genome(self.layers, masks)
        apply_param_masks(child, self.coupling.param_masks(child, genome.masks))
        return child, genome

    def offspring(self, parents: list[Parent], job: Job, teacher: Teacher | None = None,
                  hooks: TrainHooks | None = None, desc: str = "") -> Parent:
        """Sample, train and evaluate one offspring; its weights come back on the CPU."""
        child, genome = self.sample(parents, job)
        fit = self.train_and_evaluate(child, genome, self.cfg.train,
                                      self.draws("train", *job.at),
                                      desc or f"gen {job.id}", teacher, hooks or TrainHooks())
        state = {k: v.detach().cpu() for k, v in child.state_dict().items()}
        masks = {k: v.cpu() for k, v in genome.masks.items()}
        return Parent(job.id, state, masks, fit, list(job.parents))

    # -- training ---------------------------------------------------------------------------
    def train_and_evaluate(self, model: nn.Module, genome: Genome, train_cfg,
                           gen: torch.Generator, desc: str, teacher: Teacher | None,
                           hooks: TrainHooks) -> Fitness:
        """Train under the masks (as the compact network where that is exact) and score on
        the validation split."""
        pm = self.coupling.param_masks(model, genome.masks)
        apply_param_masks(model, pm)
        if train_cfg is not None and train_cfg.epochs:
            c = self.compact_or_none(model, genome) \
                if self.cfg.evolution.compact_training else None
            if c is not None and c.folded == 0:
                # dead channels carry exact zeros, so the compact network trains the same
                # function with the same gradients on the live entries, only cheaper
                train(c.model, self.data.train, train_cfg, c.compact_masks(pm), gen,
                      self.device, desc, hooks.bars, self.task.loss, hooks.checkpoint,
                      teacher, hooks.on_epoch)
                c.expand_into(model)
            else:
                train(model, self.data.train, train_cfg, pm, gen, self.device, desc,
                      hooks.bars, self.task.loss, hooks.checkpoint, teacher, hooks.on_epoch)
        return Fitness(*self.task.evaluate(model, self.data.val, self.device))

    # -- compaction -------------------------------------------------------------------------
    def compact(self, model: nn.Module, genome: Genome) -> Compacted:
        example = self.example[:2].to(next(model.parameters()).device)
        return compact(model, example, genome.masks, tuple(self.cfg.encoding.exclude))

    def compact_or_none(self, model: nn.Module, genome: Genome) -> Compacted | None:
        """The compact network, or None once compaction has been refused for this model
        (the run goes on masked)."""
        if self.compaction not in ("exact", "not used"):
            return None
        try:
            return self.compact(model, genome)
        except CompactionError as exc:
            self.compaction = str(exc)
            return None


def reinitialize(model: nn.Module, layers: dict[str, Layer], gen: torch.Generator) -> None:
    """PyTorch's default Conv/Linear initialization, drawn from ``gen`` (``scratch`` mode)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, layer in layers.items():
            m = modules[name]
            if layer.kind == "attention":  # MultiheadAttention's own: Xavier, zero biases
                w = torch.empty(layer.shape)
                nn.init.xavier_uniform_(w, generator=gen)
                m.in_proj_weight.copy_(w)
                if m.in_proj_bias is not None:
                    m.in_proj_bias.zero_()
                continue
            w = torch.empty(m.weight.shape)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
            m.weight.copy_(w)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                m.bias.copy_(torch.empty(m.bias.shape).uniform_(-bound, bound, generator=gen))
