"""The generational loop: sample offspring from the parent's encoding, train, select, record.

``Evolution`` owns one run directory. Every random draw takes a generator seeded from the run
seed, a purpose and the generation, so a resumed run repeats exactly what the uninterrupted
one would have done.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .checks import check_data
from .clusters import Layer, prunable_layers
from .compact import CompactionError, compact
from .config import RunConfig, schedule_at
from .costs import count_macs, count_params, latency_ms, size_bytes
from .coupling import Coupling
from .data import Splits
from .encoding import Environment, make_encoding
from .environment import factors as env_factors
from .environment import headroom, next_pressure, retries
from .errors import UserError
from .genome import Genome, apply_param_masks, layer_weights
from .io import read_json, read_state, save_state, write_json
from .progress import Mode, RunProgress
from .report import format_record
from .rundir import RunDir
from .seeding import generator, resolve_device
from .tasks import CLASSIFICATION
from .train import train

# in every record, whatever the task; the task adds val_<metric> and test_<metric>
HISTORY_KEYS = ("generation", "metric", "synapses", "kernel_clusters", "filters",
                "synaptic_efficiency", "cluster_efficiency", "wall_seconds")


def reinitialize(model: nn.Module, layers: dict[str, Layer], gen: torch.Generator) -> None:
    """PyTorch's default Conv/Linear initialization, drawn from ``gen`` (``scratch`` mode)."""
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name in layers:
            m = modules[name]
            w = torch.empty(m.weight.shape)
            nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=gen)
            m.weight.copy_(w)
            if m.bias is not None:
                fan_in = m.weight[0].numel()
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
                m.bias.copy_(torch.empty(m.bias.shape).uniform_(-bound, bound, generator=gen))


@dataclass
class Fitness:
    """An offspring's validation score (higher is better) and the task's details."""

    value: float
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Offspring:
    """A trained offspring: its network, its masks and how it did."""

    index: int
    model: nn.Module
    genome: Genome
    fitness: Fitness

    @property
    def rank(self) -> tuple[float, int]:
        """Higher is better: fitness first, then fewer synapses."""
        return self.fitness.value, -self.genome.synapses()


@dataclass
class EvolutionResult:
    history: list[dict[str, Any]]
    best_generation: int
    best_model: nn.Module
    best_genome: Genome
    run_dir: RunDir


class Evolution:
    def __init__(self, cfg: RunConfig, model: nn.Module, data: Splits, run_dir: RunDir,
                 log: Callable[[str], None] = print, progress: bool | Mode = True):
        self.cfg, self.model, self.data, self.run = cfg, model, data, run_dir
        self.log = log
        self.mode: Mode = ("bar" if progress else "plain") if isinstance(progress, bool) \
            else progress
        self._observer: RunProgress | None = None
        self.device = resolve_device(cfg.device)
        if self.device.type == "cuda":  # cuDNN's fastest kernels differ run to run
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        self.layers = prunable_layers(model, cfg.encoding.exclude)
        self.task = data.task or CLASSIFICATION
        self.val_key = f"val_{self.task.metric}"
        check_data(model, data, self.task)
        # what a parent's strengths are read from: its layers and their BatchNorm scales
        self.strength_modules = set(self.layers) | {
            n for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.weight is not None}
        example = data.train.inputs(slice(0, 2))
        self.coupling = (Coupling.build(copy.deepcopy(model).cpu().eval(), example.cpu(),
                                        self.layers)
                         if cfg.encoding.couple else Coupling([], self.layers))
        self.encoding = make_encoding(cfg.encoding, self.layers, self.coupling.ties(),
                                      self.coupling)
        self.history: list[dict[str, Any]] = []
        self.compaction = self._dry_run()  # "exact", or why compaction is off

    def _dry_run(self) -> str:
        """Before any training: compact a randomly thinned genome and run one training step
        of the compact network, so a shape or tracing problem costs seconds, not an
        ancestor. A model that cannot be compacted exactly evolves masked, without the
        cheaper compact training and without compact costs (said once, recorded)."""
        if not (self.cfg.evolution.compact_training or self.cfg.measure.costs):
            return "not used"
        model = copy.deepcopy(self.model).cpu()
        weights = layer_weights(model, self.layers)
        dense = Genome.dense(model, self.layers)
        masks = self.encoding.sample(weights, dense.masks, 1, generator(self.cfg.seed, "dry"),
                                     Environment(cluster=0.7, synapse=0.85, kernel=0.85))
        genome = Genome(self.layers, self.coupling.propagate(masks, self.encoding.protected,
                                                             tie=self.encoding.tie))
        apply_param_masks(model, self.coupling.param_masks(model, genome.masks))
        try:
            small = self._compact(model, genome).model.train()
            x, y = self.data.train.inputs(slice(0, 2)), self.data.train.y[:2]
            self.task.loss(small(x.cpu()), y.cpu()).backward()
        except CompactionError as exc:
            self.log(f"warning: {exc}")
            return str(exc)
        return "exact"

    @property
    def observer(self) -> RunProgress:
        """The run's progress display and TensorBoard writer, made at first use."""
        if self._observer is None:
            self._observer = RunProgress(self.mode, self.cfg.evolution.generations,
                                         len(self.history), self.cfg.logging.tensorboard,
                                         self.log)
        return self._observer

    # -- one step of each kind --------------------------------------------------------------
    def _compact(self, model: nn.Module, genome: Genome):
        example = self.data.train.inputs(slice(0, 2)).to(next(model.parameters()).device)
        return compact(model, example, genome.masks, tuple(self.cfg.encoding.exclude))

    def _train(self, model: nn.Module, genome: Genome, train_cfg, gen: torch.Generator,
               desc: str, tag: str, teacher: nn.Module | None = None) -> Fitness:
        """Train (resuming from the phase's checkpoint if one exists) and evaluate."""
        pm = self.coupling.param_masks(model, genome.masks)
        apply_param_masks(model, pm)
        if train_cfg is not None and train_cfg.epochs:
            ckpt = self.run.checkpoint_path(tag)
            bars = self.observer.epoch_bars

            def on_epoch(epoch: int, loss: float) -> None:
                self.observer.epoch(tag, epoch, loss)

            c = (self._compact_or_none(model, genome)
                 if self.cfg.evolution.compact_training else None)
            if c is not None and c.folded == 0:
                # dead channels carry exact zeros, so the compact network trains the same
                # function with the same gradients on the live entries, only cheaper
                train(c.model, self.data.train, train_cfg, c.compact_masks(pm), gen,
                      self.device, desc, bars, self.task.loss, ckpt, teacher, on_epoch)
                c.expand_into(model)
            else:
                train(model, self.data.train, train_cfg, pm, gen, self.device, desc, bars,
                      self.task.loss, ckpt, teacher, on_epoch)
        return Fitness(*self.task.evaluate(model, self.data.val, self.device))

    def _compact_or_none(self, model: nn.Module, genome: Genome):
        """The compact offspring, or None once compaction has been refused for this model
        (said once, recorded in the summary; the run goes on masked)."""
        if self.compaction not in ("exact", "not used"):
            return None
        try:
            return self._compact(model, genome)
        except CompactionError as exc:
            self.log(f"warning: {exc}; evolving on without compaction")
            self.compaction = str(exc)
            return None

    def _teacher(self) -> nn.Module | None:
        """The compact parent (or ancestor) whose soft targets an offspring learns from."""
        if not self.cfg.train.distill:
            return None
        if self.cfg.train.teacher == "ancestor":
            model = copy.deepcopy(self.model)
            genome = self.run.load_generation(0, model, self.layers)
        else:
            model, genome = self.model, self.genome
        c = self._compact_or_none(model, genome)  # the masked network when compaction is off
        return copy.deepcopy(c.model if c is not None else model).to(self.device).eval()

    def _costs(self, model: nn.Module, genome: Genome) -> dict[str, Any]:
        mc = self.cfg.measure
        c = self._compact_or_none(model, genome) if mc.costs else None
        if c is None:
            return {}
        small = c.model.to(self.device)
        x = self.data.train.inputs(slice(0, mc.latency_batch)).to(self.device)
        return {"compact_params": count_params(small),
                "compact_macs": count_macs(small, x[:8]),
                "model_bytes": size_bytes(small),
                "latency_ms": latency_ms(small, x, mc.latency_repeats),
                "latency_batch": len(x)}

    def _tied(self, genome: Genome) -> dict[str, int]:
        """Channels of the residual streams (written by several layers) still alive."""
        if not self.coupling.ties():
            return {}
        alive, total = self.coupling.tied_channels(genome.masks)
        return {"coupled_channels": alive, "dense_coupled_channels": total}

    def _record(self, g: int, model: nn.Module, genome: Genome, fit: Fitness,
                offspring_fitness: list[float], seconds: float,
                environment: dict[str, Any] | None = None) -> dict[str, Any]:
        stats = genome.stats(self.cfg.encoding.granularity)
        anc = self.history[0] if self.history else stats
        test = (Fitness(*self.task.evaluate(model, self.data.test, self.device))
                if self.data.test else Fitness(None))
        metric = self.task.metric
        floor = self.floor(fit.value if g == 0 else self.history[0][self.val_key])
        rec = {
            "generation": g,
            "metric": metric,
            f"val_{metric}": fit.value,
            f"test_{metric}": test.value,
            **{f"val_{k}": v for k, v in fit.details.items()},
            **{f"test_{k}": v for k, v in test.details.items()},
            "synapses": stats["synapses"],
            "dense_synapses": stats["dense_synapses"],
            "kernel_clusters": stats["kernel_clusters"],
            "dense_kernel_clusters": stats["dense_kernel_clusters"],
            "filters": stats["filters"],
            "dense_filters": stats["dense_filters"],
            "clusters": stats["clusters"],
            "granularity": self.cfg.encoding.granularity,
            "synaptic_efficiency": anc["synapses"] / max(1, stats["synapses"]),
            "cluster_efficiency": anc["kernel_clusters"] / max(1, stats["kernel_clusters"]),
            "filter_efficiency": anc["filters"] / max(1, stats["filters"]),
            **self._tied(genome),
            **self._costs(model, genome),
            "meets_floor": fit.value >= floor,
            f"offspring_val_{metric}": offspring_fitness,
            **({"environment": environment} if environment else {}),
            "wall_seconds": seconds,
            "layers": stats["layers"],
        }
        self.history.append(rec)
        self.run.write_generation(g, model, genome, rec)
        self.run.clear_checkpoints()
        self.run.write_history(self.history)
        self.run.write_summary(self.summary())
        self.observer.generation(rec, format_record(rec))
        return rec

    def floor(self, ancestor_val: float | None = None) -> float:
        """The validation score every generation must hold, from the ancestor's."""
        ev = self.cfg.evolution
        anc = ancestor_val if ancestor_val is not None else self.history[0][self.val_key]
        floor = -math.inf
        if ev.min_accuracy is not None:
            floor = max(floor, ev.min_accuracy)
        if ev.max_drop is not None:
            floor = max(floor, anc - ev.max_drop)
        return floor

    def summary(self) -> dict[str, Any]:
        meeting = [r for r in self.history if r["meets_floor"]] or self.history[:1]
        best = min(meeting, key=lambda r: (r["synapses"], -r[self.val_key]))
        last = self.history[-1]
        stopped = ("floor" if not last["meets_floor"] and last["generation"] > 0
                   else "target" if last["generation"] > 0 and self.reached(last)
                   else "generations" if last["generation"] >= self.cfg.evolution.generations
                   else "running")
        floor = self.floor()
        return {
            "best_generation": best["generation"],
            "floor": None if floor == -math.inf else floor,
            "granularity": self.cfg.encoding.granularity,
            "encoding": self.cfg.encoding.kind,
            "generations_done": last["generation"],
            "metric": self.task.metric,
            "stopped": stopped,
            "compaction": self.compaction,
            "best": {k: v for k, v in best.items() if k != "layers"},
        }

    # -- the loop ---------------------------------------------------------------------------
    def start(self, ancestor_state: dict[str, torch.Tensor] | None = None) -> None:
        """Generation 0: train (or load) the ancestor and record it. After a kill during
        ancestor training, the same call continues from its last epoch."""
        t0 = time.perf_counter()
        self.run.save_tensors("ancestor_init.safetensors", self.model.state_dict())
        genome = Genome.dense(self.model, self.layers)
        if ancestor_state is not None:
            try:
                self.model.load_state_dict(ancestor_state)
            except RuntimeError as exc:
                raise UserError(f"ancestor weights do not fit the model: "
                                f"{str(exc).splitlines()[0]}") from None
            genome = Genome.from_weights(self.model, self.layers)
        train_cfg = None if ancestor_state is not None else self.cfg.ancestor_train
        fit = self._train(self.model, genome, train_cfg, generator(self.cfg.seed, "ancestor"),
                          "ancestor", "gen0-0")
        self.genome = genome
        self._record(0, self.model, genome, fit, [fit.value], time.perf_counter() - t0)

    def restore(self) -> bool:
        """Load the last complete generation as the parent (``evosynth resume``); False
        when none is complete yet (the ancestor is still to finish: call ``start``)."""
        self.run.clean_temporaries()
        done = self.run.complete_generations()
        if not done:
            return False
        required = (*HISTORY_KEYS, self.val_key, "meets_floor")
        self.history = [self.run.read_metrics(g, required) for g in done]
        self.genome = self.run.load_generation(done[-1], self.model, self.layers)
        self.run.clear_checkpoints(upto=done[-1])
        self.run.write_history(self.history)
        self.run.write_summary(self.summary())
        return True

    def finished(self) -> bool:
        last = self.history[-1]
        return (last["generation"] >= self.cfg.evolution.generations
                or (last["generation"] > 0 and not last["meets_floor"])
                or (last["generation"] > 0 and self.reached(last)))

    def reached(self, rec: dict[str, Any]) -> bool:
        """The record meets every value of ``evolution.target`` (none set: never)."""
        goal = {k: v for k, v in dataclasses.asdict(self.cfg.evolution.target).items()
                if v is not None}
        keys = {"macs": "compact_macs", "params": "compact_params"}
        return bool(goal) and rec["meets_floor"] and all(
            rec.get(keys.get(k, k), math.inf) <= v for k, v in goal.items())

    def breed(self, g: int, k: int, n_offspring: int, env: Environment | None = None,
              attempt: int = 0, teacher: nn.Module | None = None) -> Offspring:
        """Offspring ``k`` of generation ``g`` (``attempt``: the how-many-th sampling of the
        parent): sample its masks from the parent, set its weights, train it under its masks
        and evaluate it. Depends only on the parent, these numbers and the run seed."""
        ev, seed = self.cfg.evolution, self.cfg.seed
        at = (g, k) if attempt == 0 else (g, k, "try", attempt)
        parent_w = layer_weights(self.model, self.strength_modules)
        masks = self.encoding.sample(parent_w, self.genome.masks, g,
                                     generator(seed, "sample", *at), env)
        masks = self.coupling.propagate(masks, self.encoding.protected,
                                       tie=self.encoding.tie)
        child = copy.deepcopy(self.model)
        if ev.weights == "scratch":
            reinitialize(child, self.layers, generator(seed, "scratch", *at))
        elif ev.weights == "rewind":
            child.load_state_dict(self.run.load_tensors("ancestor_init.safetensors"))
        genome = Genome(self.layers, masks)
        fit = self._train(child, genome, self.cfg.train, generator(seed, "train", *at),
                          f"gen {g}" + (f".{k}" if n_offspring > 1 else ""),
                          _tag(g, attempt, str(k)), teacher)
        return Offspring(k, child, genome, fit)

    def pressure(self, g: int) -> float:
        """Generation ``g``'s first pressure, from the last recorded generation."""
        env = self.cfg.evolution.environment
        last = self.history[-1]
        if g == 1 or "environment" not in last:
            return env.pressure
        anc = self.history[0][self.val_key]
        reserve = headroom(last[self.val_key], self.floor(), anc)
        return next_pressure(env, last["environment"]["pressure"], reserve)

    def step(self) -> dict[str, Any]:
        """One generation. Schedule mode: breed the offspring, keep the best. Adaptive mode:
        the same at the generation's pressure; if the best falls below the floor, sample
        the parent again in a gentler environment (bounded tries)."""
        g = self.history[-1]["generation"] + 1
        t0 = time.perf_counter()
        n_offspring = int(schedule_at(self.cfg.evolution.offspring, g))
        teacher = self._teacher()
        if self.cfg.evolution.environment.kind == "schedule":
            best, scores = self._generation(g, n_offspring, None, 0, teacher)
            self.model, self.genome = best.model, best.genome
            return self._record(g, best.model, best.genome, best.fitness, scores,
                                time.perf_counter() - t0)
        env_cfg = self.cfg.evolution.environment
        rejected = self._load_attempts(g)
        floor = self.floor()
        pressures = retries(env_cfg, self.pressure(g))
        for attempt in range(len(rejected), len(pressures)):
            p = pressures[attempt]
            best, scores = self._generation(g, n_offspring, env_factors(env_cfg, p), attempt,
                                            teacher)
            env = {"pressure": p, "tries": attempt + 1, "rejected": rejected}
            if best.fitness.value >= floor or attempt == len(pressures) - 1:
                break
            rejected.append({"pressure": p, self.val_key: best.fitness.value,
                             "synapses": best.genome.synapses()})
            write_json(self.run.checkpoint_path(f"gen{g}-attempts").with_suffix(".json"),
                       rejected)
        self.model, self.genome = best.model, best.genome
        return self._record(g, best.model, best.genome, best.fitness, scores,
                            time.perf_counter() - t0, env)

    def _generation(self, g: int, n_offspring: int, env: Environment | None, attempt: int,
                    teacher: nn.Module | None) -> tuple[Offspring, list[float]]:
        """Breed a generation's offspring (resuming after the last one saved); the best and
        every offspring's score."""
        best, scores = self._load_progress(g, attempt)
        for k in range(len(scores), n_offspring):
            child = self.breed(g, k, n_offspring, env, attempt, teacher)
            scores.append(child.fitness.value)
            if best is None or child.rank > best.rank:
                best = child
            if n_offspring > 1:
                self._save_progress(g, attempt, best, scores)
        return best, scores

    def _load_attempts(self, g: int) -> list[dict[str, Any]]:
        path = self.run.checkpoint_path(f"gen{g}-attempts").with_suffix(".json")
        return list(read_json(path)) if path.is_file() else []

    def _save_progress(self, g: int, attempt: int, best: Offspring, scores: list[float]
                       ) -> None:
        tensors = {**{f"weights/{k}": v for k, v in best.model.state_dict().items()},
                   **{f"masks/{k}": v.to(torch.uint8) for k, v in best.genome.masks.items()}}
        meta = {"scores": scores, "index": best.index, "value": best.fitness.value,
                "details": best.fitness.details}
        save_state(tensors, meta, self.run.checkpoint_path(_tag(g, attempt, "best")))

    def _load_progress(self, g: int, attempt: int) -> tuple[Offspring | None, list[float]]:
        path = self.run.checkpoint_path(_tag(g, attempt, "best"))
        if not path.is_file():
            return None, []
        tensors, meta = read_state(path)
        model = copy.deepcopy(self.model)
        model.load_state_dict({k[8:]: v for k, v in tensors.items() if k.startswith("weights/")})
        masks = {k[6:]: v.bool() for k, v in tensors.items() if k.startswith("masks/")}
        best = Offspring(meta["index"], model, Genome(self.layers, masks),
                         Fitness(meta["value"], meta["details"]))
        return best, list(meta["scores"])

    def run_all(self) -> EvolutionResult:
        try:
            while not self.finished():
                self.step()
        finally:
            self.observer.close()
        return self.result()

    def result(self) -> EvolutionResult:
        best_g = self.summary()["best_generation"]
        model = copy.deepcopy(self.model)
        genome = self.run.load_generation(best_g, model, self.layers)
        return EvolutionResult(self.history, best_g, model, genome, self.run)


def _tag(g: int, attempt: int, what: str) -> str:
    """Checkpoint names: ``gen3-0`` (offspring 0), ``gen3-t1-best`` (second try's best)."""
    return f"gen{g}-{what}" if attempt == 0 else f"gen{g}-t{attempt}-{what}"
