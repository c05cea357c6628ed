"""Ask/tell: evosynth's heredity with your own training loop.

``Synthesis.ask()`` proposes a generation's offspring, each a masked ``nn.Module`` that
inherited its parents' weights; you train each your way (Lightning, HF Trainer, a plain
loop) and ``tell`` its validation score. evosynth keeps the lineage, the environment, the
floor, the population and the run directory, exactly as ``evolve`` does.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .api import PYTHON
from .breeding import Fitness, Job, Parent
from .config import RunConfig, schedule_at, validate
from .errors import UserError
from .evolution import Evolution, select
from .genome import apply_param_masks
from .inputs import as_inputs
from .rundir import RunDir
from .seeding import module_device


@dataclass
class Candidate:
    """An offspring to train: ``model`` holds its inherited weights with its dead synapses
    at zero. Keep them there: ``attach(optimizer)`` re-zeroes them after every step (or
    call ``enforce()`` yourself); ``tell`` refuses a candidate whose dead synapses moved."""

    id: str
    model: nn.Module
    masks: dict[str, torch.Tensor]  # by layer: True = alive
    param_masks: dict[str, torch.Tensor]  # by parameter: weights, dead filters' biases, BN
    parents: tuple[str, ...]
    job: Job

    def enforce(self) -> None:
        apply_param_masks(self.model, self.param_masks)

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Re-zero the dead synapses after each ``optimizer.step()``; returns the hook's
        handle (``.remove()`` it when done)."""
        return optimizer.register_step_post_hook(lambda *_: self.enforce())


class Synthesis:
    """Evolutionary synthesis driven from outside: ``ask`` for candidates, ``tell`` scores.

    ``model`` is the trained ancestor (its zeros are dead synapses), ``example`` a batch of
    its inputs (for the channel coupling and compaction), ``fitness`` its validation score
    (higher is better, e.g. accuracy), ``test`` its test score if you have one (reported,
    never used for selection). ``config`` as for ``evolve``; its ``train`` and
    ``ancestor_train`` sections are yours to honour, the rest applies. ``example`` may be a
    tuple or dict of tensors for a model of several inputs. With ``device: auto`` (the
    default) the candidates live where ``model`` does, since your loop trains them.
    """

    def __init__(self, model: nn.Module, example: Any, fitness: float,
                 config: RunConfig | dict[str, Any] | None = None, test: float | None = None,
                 run_dir: str | Path | None = None, force: bool = False,
                 log: Callable[[str], None] = print, _resume: bool = False):
        cfg = config if isinstance(config, RunConfig) else validate(dict(config or {}))
        asked = cfg.device  # recorded as given: a resume resolves ``auto`` from its model
        if cfg.device == "auto":
            cfg = dataclasses.replace(cfg, device=str(module_device(model)))
        example = as_inputs(example)
        if example is None:
            raise UserError("example: expected a batch of the model's inputs (a tensor, or a "
                            "tuple or dict of tensors)")
        rd = RunDir(run_dir if run_dir is not None else tempfile.mkdtemp(prefix="evosynth-"))
        self.evo = Evolution(cfg, copy.deepcopy(model), None, rd, log=log, progress="quiet",
                             example=example)
        self.cfg = cfg
        if _resume:
            if not self.evo.restore():
                raise UserError(f"{rd.path}: no generation is complete; start a new run")
        else:
            rd.create(dataclasses.replace(cfg, model=f"{PYTHON}{type(model).__name__}",
                                          dataset=PYTHON.rstrip(":"), device=asked),
                      force=force or run_dir is None)
            self.evo.start(ancestor_state=model.state_dict(), fitness=Fitness(float(fitness)),
                           test=Fitness(float(test)) if test is not None else None)
        self._asked: dict[int, Candidate] = {}
        self._told: dict[int, Parent] = {}
        self._tests: dict[str, float] = {}
        self._rejected = self.evo.load_attempts(self.generation)
        self._attempt, self._t0 = len(self._rejected), 0.0

    @classmethod
    def resume(cls, model: nn.Module, example: Any, run_dir: str | Path,
               log: Callable[[str], None] = print) -> Synthesis:
        """Continue an ask/tell run: the candidates told in the generation in progress are
        kept (their test scores, if told, are not), the others are asked again, the same."""
        cfg = RunDir(run_dir).config()
        return cls(model, example, 0.0, cfg, run_dir=run_dir, log=log, _resume=True)

    # -- state ------------------------------------------------------------------------------
    @property
    def history(self) -> list[dict[str, Any]]:
        return self.evo.history

    @property
    def generation(self) -> int:
        """The generation the next ``ask`` proposes."""
        return self.evo.history[-1]["generation"] + 1

    @property
    def done(self) -> bool:
        """The run is over: the floor failed, the target or the generation cap was reached."""
        return self.evo.finished()

    @property
    def best(self) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        """The best generation that holds the floor: its network and masks."""
        res = self.evo.result()
        return res.best_model, res.best_genome.masks

    def close(self) -> None:
        self.evo.close()

    # -- ask / tell -------------------------------------------------------------------------
    def ask(self) -> list[Candidate]:
        """The current generation's candidates not yet told (the same ones, asked again);
        ``[]`` once the run is ``done``."""
        if self.done:
            return []
        if not self._asked:
            self._t0 = time.perf_counter()
            g, evo = self.generation, self.evo
            n = int(schedule_at(self.cfg.evolution.offspring, g))
            env = None
            if self.cfg.evolution.environment.kind == "adaptive":
                env = evo.environment(g, self._attempt, self._rejected)
            population = {p.id: p for p in evo.population}
            for job in evo.jobs(g, n, env, self._attempt):
                child, genome = evo.breeder.sample([population[i] for i in job.parents], job)
                pm = {n: m.to(evo.device)  # sampled on the CPU; trained where asked
                      for n, m in evo.coupling.param_masks(child, genome.masks).items()}
                child = child.to(evo.device)
                self._asked[job.k] = Candidate(job.id, child, genome.masks, pm, job.parents,
                                               job)
            self._told = evo.load_progress(g, self._attempt, n)  # told before a resume
        return [c for k, c in sorted(self._asked.items()) if k not in self._told]

    def tell(self, candidate: Candidate, fitness: float, test: float | None = None
             ) -> dict[str, Any] | None:
        """Record a trained candidate's validation score (and, optionally, its test score,
        unused for selection). Returns the generation's record once its last candidate is
        told, else None."""
        k = candidate.job.k
        if self._asked.get(k) is not candidate:
            raise UserError(f"candidate {candidate.id} is not one of generation "
                            f"{self.generation}'s pending candidates")
        params = dict(candidate.model.named_parameters())
        for name, mask in candidate.param_masks.items():
            moved = int((params[name].detach().cpu()[~mask.cpu()] != 0).sum())
            if moved:
                raise UserError(f"candidate {candidate.id}: {moved} dead entries of {name} "
                                "are no longer zero; call candidate.attach(optimizer) before "
                                "training, or candidate.enforce() after each step")
        state = {n: v.detach().cpu().clone() for n, v in candidate.model.state_dict().items()}
        if test is not None:
            self._tests[candidate.id] = float(test)
        self._told[k] = Parent(candidate.id, state, candidate.masks, Fitness(float(fitness)),
                               list(candidate.parents))
        if len(self._asked) > 1:
            self.evo.save_progress(candidate.job.g, candidate.job.attempt, self._told[k])
        if len(self._told) < len(self._asked):
            return None
        return self._settle()

    def _settle(self) -> dict[str, Any] | None:
        """Every candidate told: keep the generation, or (adaptive, below the floor, tries
        left) ask the parents again in a gentler environment."""
        evo, g = self.evo, self.generation
        offspring = [self._told[k] for k in sorted(self._told)]
        self._asked, self._told = {}, {}
        env = None
        if self.cfg.evolution.environment.kind == "adaptive":
            env = evo.verdict(g, self._attempt, offspring, self._rejected)
            if env is None:  # below the floor: the same generation, a gentler try
                self._attempt, self._tests = self._attempt + 1, {}
                return None
        test = self._tests.get(select(offspring, 1)[0].id)
        rec = evo.keep(g, offspring, time.perf_counter() - self._t0, env,
                       test=Fitness(test) if test is not None else None)
        self._attempt, self._rejected, self._tests = 0, [], {}
        return rec
