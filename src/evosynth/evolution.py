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
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backends import make_backend
from .blame import blame_order
from .breeding import Breeder, Fitness, Job, Parent, TrainHooks
from .checks import check_data
from .clusters import live_clusters
from .compact import Compacted
from .config import RunConfig, schedule_at
from .costs import count_macs, count_params, latency_ms, size_bytes
from .data import Splits
from .encoding import Environment
from .environment import factors as env_factors
from .environment import headroom, next_pressure, retries, standard_error
from .errors import UserError
from .genome import Genome, apply_param_masks, layer_weights
from .heads import live_heads
from .inputs import Inputs, call
from .io import fault_point, read_json, read_state, save_state, write_json
from .mating import choose_parents
from .progress import Mode, RunProgress
from .report import format_record
from .rundir import RunDir
from .seeding import generator, module_device, resolve_device
from .tasks import CLASSIFICATION
from .train import Teacher, teacher_scores

# in every record, whatever the task; the task adds val_<metric> and test_<metric>
HISTORY_KEYS = ("generation", "metric", "synapses", "kernel_clusters", "filters",
                "synaptic_efficiency", "cluster_efficiency", "wall_seconds")


@dataclass
class EvolutionResult:
    """A run's records and its best network, handed back on the device the ancestor came
    on (the CPU for a registry model), whatever device the run trained on."""

    history: list[dict[str, Any]]
    best_generation: int
    best_model: nn.Module
    best_genome: Genome
    run_dir: RunDir


class Evolution:
    """The driver: a population of parents, generation after generation. Breeding is the
    breeder's (``breeding.py``), where it runs the backend's (``backends.py``)."""

    def __init__(self, cfg: RunConfig, model: nn.Module, data: Splits | None, run_dir: RunDir,
                 log: Callable[[str], None] = print, progress: bool | Mode = True,
                 example: torch.Tensor | Inputs | None = None):
        self.cfg, self.model, self.data, self.run = cfg, model, data, run_dir
        self.log = log
        self.mode: Mode = ("bar" if progress else "plain") if isinstance(progress, bool) \
            else progress
        self._observer: RunProgress | None = None
        self.device = resolve_device(cfg.device)
        self.home = module_device(model)  # where the result goes back to, as it came
        if self.device.type == "cuda":  # cuDNN's fastest kernels differ run to run
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        if data is not None:
            check_data(model, data, data.task or CLASSIFICATION)
            example = data.train.inputs(slice(0, 2))
        self.breeder = Breeder(cfg, model, data, example)
        self._ancestor_teacher: Teacher | None = None  # distillation's, once computed
        self.breeder.device = self.device
        self.layers, self.coupling = self.breeder.layers, self.breeder.coupling
        self.encoding, self.task = self.breeder.encoding, self.breeder.task
        self.val_key = f"val_{self.task.metric}"
        self._check_something_evolves()
        self.history: list[dict[str, Any]] = []
        self.population: list[Parent] = []
        self.backend: Any = None
        self.breeder.compaction = self._dry_run()  # "exact", or why compaction is off

    @property
    def compaction(self) -> str:
        return self.breeder.compaction

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
        self.breeder.compaction = "exact"
        small = self._compact_or_none(model, genome)
        if small is None:
            return self.breeder.compaction
        if self.data is not None:
            x, y = self.data.train.inputs(slice(0, 2)), self.data.train.y[:2]
            self.task.loss(call(small.model.train(), x.cpu()), y.cpu()).backward()
        return "exact"

    @property
    def observer(self) -> RunProgress:
        """The run's progress display and TensorBoard writer, made at first use."""
        if self._observer is None:
            self._observer = RunProgress(self.mode, self.cfg.evolution.generations,
                                         len(self.history), self.cfg.logging.tensorboard,
                                         self.log)
        return self._observer

    # -- helpers ----------------------------------------------------------------------------
    def _compact_or_none(self, model: nn.Module, genome: Genome) -> Compacted | None:
        """The compact network, or None once compaction is refused (said once)."""
        before = self.breeder.compaction
        c = self.breeder.compact_or_none(model, genome)
        if c is None and self.breeder.compaction != before:
            self.log(f"warning: {self.breeder.compaction}; evolving on without compaction")
        return c

    def _rewind_point(self) -> None:
        """The ancestor's initial weights, which ``weights: rewind`` offspring start from."""
        if self.cfg.evolution.weights == "rewind":
            self.breeder.ancestor_init = self.run.load_tensors("ancestor_init.safetensors")

    def _hooks(self, tag: str) -> TrainHooks:
        """Per-epoch checkpoints and progress for training in this process."""
        def on_epoch(epoch: int, loss: float) -> None:
            self.observer.epoch(tag, epoch, loss)

        return TrainHooks(self.run.checkpoint_path(tag), self.observer.epoch_bars, on_epoch)

    def _materialize(self, member: Parent) -> tuple[nn.Module, Genome]:
        model = copy.deepcopy(self.model)
        model.load_state_dict(member.state)
        return model.to(self.device), Genome(self.layers, member.masks)

    def _member(self, id_: str, model: nn.Module, genome: Genome, fit: Fitness,
                parents: list[str]) -> Parent:
        return Parent(id_, {k: v.detach().cpu() for k, v in model.state_dict().items()},
                      {k: v.cpu() for k, v in genome.masks.items()}, fit, parents)

    def _teacher(self) -> Teacher | None:
        """The compact parent (or the ancestor, computed once per run) whose soft targets an
        offspring learns from. Soft targets are class scores, so other tasks (detection)
        train on their own loss."""
        if not self.cfg.train.distill or self.task.metric != "accuracy":
            return None
        if self.cfg.train.teacher == "parent":
            return self._scores(self.model, self.genome)
        if self._ancestor_teacher is None:
            model = copy.deepcopy(self.model)
            self._ancestor_teacher = self._scores(
                model, self.run.load_generation(0, model, self.layers))
        return self._ancestor_teacher

    def _scores(self, model: nn.Module, genome: Genome) -> Teacher:
        """A teacher's class scores on the training set (``teacher_scores``), or the
        compact network itself where they cannot be tabled (no data, augmentation)."""
        c = self._compact_or_none(model, genome)  # the masked network when compaction is off
        teacher = copy.deepcopy(c.model if c is not None else model).to(self.device).eval()
        return teacher_scores(teacher, self.data.train, self.device) \
            if self.data is not None else teacher

    def _costs(self, model: nn.Module, genome: Genome) -> dict[str, Any]:
        mc = self.cfg.measure
        c = self._compact_or_none(model, genome) if mc.costs else None
        if c is None:
            return {}
        small = c.model.to(self.device)
        x = (self.data.train.inputs(slice(0, mc.latency_batch)) if self.data is not None
             else self.breeder.example).to(self.device)
        return {"compact_params": count_params(small),
                "compact_macs": count_macs(small, x[:8]),
                "model_bytes": size_bytes(small),
                "latency_ms": latency_ms(small, x, mc.latency_repeats),
                "latency_batch": len(x)}

    def _heads(self, stats: dict[str, Any], genome: Genome) -> dict[str, int]:
        """Attention heads alive: MultiheadAttention's and q/k/v attentions' (heads.py)."""
        out = {k: stats[k] for k in ("heads", "dense_heads") if k in stats}
        for group in self.coupling.head_groups:
            out["heads"] = out.get("heads", 0) + int(live_heads(group, genome.masks).sum())
            out["dense_heads"] = out.get("dense_heads", 0) + group.heads
        return out

    def _tied(self, genome: Genome) -> dict[str, int]:
        """Channels of the residual streams (written by several layers) still alive."""
        if not self.coupling.ties():
            return {}
        alive, total = self.coupling.tied_channels(genome.masks)
        return {"coupled_channels": alive, "dense_coupled_channels": total}

    def _individual(self, member: Parent) -> dict[str, Any]:
        """One line of the genealogy."""
        stats = Genome(self.layers, member.masks).stats(self.cfg.encoding.granularity)
        return {"id": member.id, "parents": list(member.parents),
                self.val_key: member.fitness.value, "synapses": stats["synapses"],
                "kernel_clusters": stats["kernel_clusters"], "filters": stats["filters"]}

    def _record(self, g: int, best: Parent, offspring: list[Parent], survivors: list[Parent],
                seconds: float, environment: dict[str, Any] | None = None,
                test: Fitness | None = None) -> dict[str, Any]:
        model, genome = self._materialize(best)
        fit = best.fitness
        stats = genome.stats(self.cfg.encoding.granularity)
        anc = self.history[0] if self.history else stats
        if test is None:
            test = (Fitness(*self.task.evaluate(model, self.data.test, self.device))
                    if self.data is not None and self.data.test else Fitness(None))
        metric = self.task.metric
        floor = self.floor(fit.value if g == 0 else self.history[0][self.val_key])
        ev = self.cfg.evolution
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
            **self._heads(stats, genome),
            "granularity": self.cfg.encoding.granularity,
            "synaptic_efficiency": anc["synapses"] / max(1, stats["synapses"]),
            "cluster_efficiency": anc["kernel_clusters"] / max(1, stats["kernel_clusters"]),
            "filter_efficiency": anc["filters"] / max(1, stats["filters"]),
            **self._tied(genome),
            **self._costs(model, genome),
            "meets_floor": fit.value >= floor,
            f"offspring_val_{metric}": [o.fitness.value for o in offspring],
            **({"environment": environment} if environment else {}),
            "id": best.id,
            "parents": list(best.parents),
            "offspring": [self._individual(o) for o in offspring],
            "population": [s.id for s in survivors],
            "wall_seconds": seconds,
            "layers": stats["layers"],
        }
        self.history.append(rec)
        members = survivors if ev.population > 1 else []
        self.run.write_generation(g, model, genome, rec, members)
        self.run.clear_checkpoints()
        self.run.write_history(self.history)
        self.run.write_summary(self.summary())
        write_json(self.run.genealogy_path, genealogy(self.history, self.val_key))
        self.observer.generation(rec, format_record(rec))
        self.model, self.genome, self.population = model, genome, survivors
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
                   else "nothing left" if self.exhausted()
                   else "running")
        floor = self.floor()
        ev = self.cfg.evolution
        return {
            "best_generation": best["generation"],
            "floor": None if floor == -math.inf else floor,
            "granularity": self.cfg.encoding.granularity,
            "encoding": self.cfg.encoding.kind,
            "generations_done": last["generation"],
            "metric": self.task.metric,
            "stopped": stopped,
            "compaction": self.compaction,
            "population": ev.population,
            "parents": ev.parents,
            "individuals": sum(len(r.get("offspring", [None])) for r in self.history),
            "best": {k: v for k, v in best.items() if k not in ("layers", "offspring")},
        }

    # -- the loop ---------------------------------------------------------------------------
    def start(self, ancestor_state: dict[str, torch.Tensor] | None = None,
              fitness: Fitness | None = None, test: Fitness | None = None) -> None:
        """Generation 0: train (or load) the ancestor and record it. After a kill during
        ancestor training, the same call continues from its last epoch. ``fitness`` (with
        ``ancestor_state``): the ancestor's score as measured elsewhere (ask/tell)."""
        t0 = time.perf_counter()
        self.run.save_tensors("ancestor_init.safetensors", self.model.state_dict())
        self._rewind_point()
        genome = Genome.dense(self.model, self.layers)
        if ancestor_state is not None:
            try:
                self.model.load_state_dict(ancestor_state)
            except RuntimeError as exc:
                raise UserError(f"ancestor weights do not fit the model: "
                                f"{str(exc).splitlines()[0]}") from None
            genome = Genome.from_weights(self.model, self.layers)
        if fitness is None:
            train_cfg = None if ancestor_state is not None else self.cfg.ancestor_train
            fitness = self.breeder.train_and_evaluate(
                self.model, genome, train_cfg, generator(self.cfg.seed, "ancestor"),
                "ancestor", None, self._hooks("gen0-0"))
        ancestor = self._member("0.0", self.model, genome, fitness, [])
        self._record(0, ancestor, [ancestor], [ancestor], time.perf_counter() - t0, test=test)
        self._warn_if_the_floor_is_noise()

    def _warn_if_the_floor_is_noise(self) -> None:
        """A validation set too small to see the allowed drop (the score's standard error,
        or one example, weighs more than it) picks networks by chance: say so at the start."""
        anc, floor, n = self.history[0][self.val_key], self.floor(), self.val_size()
        if not n or not anc > floor > -math.inf:
            return
        noise = max(standard_error(anc, n), 1 / n)
        if noise > anc - floor:
            self.log(f"warning: the validation set has {n} examples: its accuracy moves by "
                     f"{noise:.2%} by chance, more than the {anc - floor:.2%} the floor allows "
                     "to drop, so the floor cannot tell a loss from luck; give more "
                     "validation data (val_data, evolution.val_fraction) or a larger drop")

    def restore(self) -> bool:
        """Load the last complete generation's population (``evosynth resume``); False
        when none is complete yet (the ancestor is still to finish: call ``start``)."""
        self.run.clean_temporaries()
        done = self.run.complete_generations()
        if not done:
            return False
        self._rewind_point()
        required = (*HISTORY_KEYS, self.val_key, "meets_floor")
        self.history = [self.run.read_metrics(g, required) for g in done]
        g, last = done[-1], self.history[-1]
        self.genome = self.run.load_generation(g, self.model, self.layers)
        self.model.to(self.device)
        members = self.run.load_population(g, self.layers)
        self.population = members or [self._member(
            last.get("id", f"{g}.0"), self.model, self.genome,
            Fitness(last[self.val_key]), last.get("parents", []))]
        self.run.clear_checkpoints(upto=g)
        self.run.write_history(self.history)
        self.run.write_summary(self.summary())
        write_json(self.run.genealogy_path, genealogy(self.history, self.val_key))
        return True

    def finished(self) -> bool:
        last = self.history[-1]
        return (last["generation"] >= self.cfg.evolution.generations
                or (last["generation"] > 0 and not last["meets_floor"])
                or (last["generation"] > 0 and self.reached(last))
                or self.exhausted())

    def exhausted(self) -> bool:
        """In the kernel phase with every filter down to one kernel and no synapse phase
        after it (``thin: false``): nothing is left to draw."""
        return (self.phase() == "kernels" and not self.phases_after()
                and not self.kernels_left())

    def reached(self, rec: dict[str, Any]) -> bool:
        """The record meets every value of ``evolution.target`` (none set: never)."""
        goal = {k: v for k, v in dataclasses.asdict(self.cfg.evolution.target).items()
                if v is not None}
        keys = {"macs": "compact_macs", "params": "compact_params"}
        return bool(goal) and rec["meets_floor"] and all(
            rec.get(keys.get(k, k), math.inf) <= v for k, v in goal.items())

    def jobs(self, g: int, n_offspring: int, env: Environment | None, attempt: int
             ) -> list[Job]:
        """Generation ``g``'s offspring, each with its parents drawn from the population
        (seeded by the offspring, so any worker, order or resume draws the same)."""
        m = self.cfg.evolution.parents
        out = []
        for k in range(n_offspring):
            job = Job(g, k, attempt, env, ())
            chosen = choose_parents(self.population, m, self.breeder.draws("mates", *job.at))
            out.append(dataclasses.replace(job, parents=tuple(p.id for p in chosen)))
        return out

    def pressure(self, g: int) -> float:
        """Generation ``g``'s first pressure, from the last recorded generation."""
        env = self.cfg.evolution.environment
        last = self.history[-1]
        if g == 1 or "environment" not in last:
            return env.pressure
        anc, floor = self.history[0][self.val_key], self.floor()
        reserve = headroom(last[self.val_key], floor, anc)
        error = self.val_error(last[self.val_key]) / (anc - floor) if anc > floor else 0.0
        parent = self.parent_score(last)
        cost = None
        if parent is not None and (env.parent_grows
                                   or last["environment"].get("phase", "clusters")
                                   != "clusters"):
            cost = (parent - last[self.val_key]) / (anc - floor) if anc > floor else 0.0
        return next_pressure(env, last["environment"]["pressure"], reserve, error, cost)

    def parent_score(self, rec: dict[str, Any]) -> float | None:
        """The best validation score among ``rec``'s parents (None if none is recorded)."""
        scores = {r["id"]: r[self.val_key] for r in self.history if "id" in r}
        scores.update({o["id"]: o[self.val_key] for r in self.history
                       for o in r.get("offspring", ())})
        known = [scores[p] for p in rec.get("parents", ()) if p in scores]
        return max(known) if known else None

    def val_size(self) -> int | None:
        """How many examples a validation accuracy is measured on (None for another
        metric, without validation data as in ask/tell, or for a stream of unknown
        length)."""
        if self.data is None or self.task.metric != "accuracy":
            return None
        try:
            return len(self.data.val)
        except UserError:  # a stream without len(): its size is unknown
            return None

    def val_error(self, value: float) -> float:
        """The standard error of a validation accuracy (0 where ``val_size`` is None)."""
        n = self.val_size()
        return standard_error(value, n) if n else 0.0

    def step(self) -> dict[str, Any]:
        """One generation. Schedule mode: breed the offspring, keep the fittest. Adaptive
        mode: the same at the generation's pressure; if the best falls below the floor,
        sample the parents again in a gentler environment (bounded tries)."""
        g = self.history[-1]["generation"] + 1
        t0 = time.perf_counter()
        n_offspring = int(schedule_at(self.cfg.evolution.offspring, g))
        teacher = self._teacher()
        if self.cfg.evolution.environment.kind == "schedule":
            offspring = self._generation(g, n_offspring, None, 0, teacher)
            return self.keep(g, offspring, time.perf_counter() - t0)
        rejected = self.load_attempts(g)
        env = None
        while env is None:  # each failed try is appended to ``rejected``
            attempt = len(rejected)
            offspring = self._generation(g, n_offspring, self.environment(g, attempt, rejected),
                                         attempt, teacher)
            env = self.verdict(g, attempt, offspring, rejected)
        return self.keep(g, offspring, time.perf_counter() - t0, env)

    def phase(self) -> str:
        """``clusters``, then ``kernels`` or ``synapses`` once a generation was accepted in
        the kernel phase (``environment.kernel_phase``) or the synapse phase (``thin``)."""
        return self.history[-1].get("environment", {}).get("phase", "clusters")

    def phases_after(self) -> list[str]:
        """The phases still to come after the current one, in order (cluster encoding
        only): ``kernels`` (``kernel_phase``, while a kernel is left to lose), then
        ``synapses`` (``thin``)."""
        env = self.cfg.evolution.environment
        if self.cfg.encoding.kind != "cluster":
            return []
        order = ["clusters", "kernels", "synapses"]
        wanted = {"kernels": env.kernel_phase and self.kernels_left(), "synapses": env.thin}
        return [p for p in order[order.index(self.phase()) + 1:] if wanted[p]]

    def kernels_left(self) -> bool:
        """Whether the kernel phase has anything to draw: a filter of a conv layer reading
        several channels (``Encoding.kernel_layers``) with more than one live kernel, in
        some parent (each filter keeps one)."""
        for parent in self.population:
            for name in self.breeder.encoding.kernel_layers():
                layer = self.layers[name]
                kernels = live_clusters(parent.masks[name].cpu(), layer, "kernel")
                if bool((kernels.reshape(layer.shape[0], -1).sum(dim=1) > 1).any()):
                    return True
        return False

    def pressures(self, g: int, rejected: list[dict[str, Any]] = ()
                  ) -> list[tuple[float, str]]:
        """Generation ``g``'s (pressure, phase) for each try (adaptive mode): ``tries`` of
        them, and ``tries`` more after each layer it may still retire, from the first
        generation's pressure again (the layers left were not the ones failing), and
        ``tries`` more where a ``revisit`` may bring earlier retired layers back (sooner when
        a round ended with no layer to retire: the entry marked ``revisit``); then
        ``tries`` in each phase still to come (``phases_after``: the kernel phase, the
        synapse phase), from that pressure (sooner: ``then``)."""
        env = self.cfg.evolution.environment
        first = retries(env, self.pressure(g))
        later = [(p, phase) for phase in self.phases_after() for p in retries(env, env.pressure)]
        if self.phase() == "kernels" and not self.kernels_left():
            return later  # every filter is down to one kernel: on to the synapse phase
        if self.phase() != "clusters":
            return [(p, self.phase()) for p in first] + later
        again = [(p, "clusters") for p in retries(env, env.pressure)]
        out = [(p, "clusters") for p in first] + again * self.retirements_left()
        if self.revisitable():
            out += again  # the revisit's round, last
        # a round that ended with no layer to retire: the revisit's round next, or none
        end = next((i + 1 for i, r in enumerate(rejected) if "revisit" in r or "then" in r),
                   None)
        if end is not None:
            out = out[:end] + (again if "revisit" in rejected[end - 1] else [])
        return out + later

    def _check_something_evolves(self) -> None:
        """With the pressure on clusters only, a network whose every layer keeps its
        filters (outputs, widths a normalization mixes) would go to the cap unchanged."""
        env = self.cfg.evolution.environment
        if (env.kind == "adaptive" and self.cfg.encoding.kind == "cluster"
                and env.synapse_share == 0 and not self.evolving()):
            raise UserError(
                "nothing can evolve: every prunable layer keeps its filters (the output "
                f"layer {self.encoding.output_layer!r} and the writers of a normalized "
                "width) and evolution.environment.synapse_share is 0; set it above 0 to "
                "thin their synapses, or name another encoding.output_layer")

    def evolving(self) -> list[str]:
        """The layers whose clusters the environment draws (not the protected ones)."""
        return [n for n in self.layers if not self.breeder.encoding.is_protected(n)]

    def retired(self, rejected: list[dict[str, Any]] = ()) -> set[str]:
        """Layers that no longer evolve: retired by earlier generations or by this
        generation's ``rejected`` tries, less those a revisit brought back."""
        out = set(self.history[-1].get("environment", {}).get("retired", []))
        for r in rejected:
            out = (out - set(r.get("revisit", []))) | ({r["retired"]} if "retired" in r
                                                        else set())
        return out

    def revisitable(self) -> list[str]:
        """The layers a revisit would bring back (``environment.revisit``): those retired
        by earlier generations, if the run has not revisited yet."""
        last = self.history[-1].get("environment", {})
        if not self.cfg.evolution.environment.revisit or last.get("revisited"):
            return []
        return sorted(last.get("retired", []))

    def retirements_left(self) -> int:
        """How many more layers the run may retire (one layer always keeps evolving)."""
        done = len(self.retired())
        return max(0, min(self.cfg.evolution.environment.retire - done,
                          len(self.evolving()) - 1 - done))

    def room_left(self, parent: Parent, layers: set[str]) -> bool:
        """Whether ``layers`` still have room to evolve in: at least one of the clusters the
        encoding draws (filters, neurons, heads; kernels at ``kernel`` granularity, and
        under ``filter+kernel`` the kernels too, at their share) expected to die per
        generation at the gentlest pressure, else the run would spend generations removing
        next to nothing. Counted in what is drawn: 13 live filters at 5% are 0.65 expected
        deaths, however many kernels live behind them."""
        env, granularity = self.cfg.evolution.environment, self.cfg.encoding.granularity
        expected = 0.0
        for n in layers:
            mask, layer = parent.masks[n], self.layers[n]
            expected += int(live_clusters(mask, layer, granularity).sum())
            if granularity == "filter+kernel" and layer.kind == "conv":
                expected += env.kernel_share * int(live_clusters(mask, layer, "kernel").sum())
        return expected * env.min_pressure >= 1

    def environment(self, g: int, attempt: int, rejected: list[dict[str, Any]]
                    ) -> Environment:
        """The factors of generation ``g``'s ``attempt``-th try (adaptive mode)."""
        pressure, phase = self.pressures(g, rejected)[attempt]
        return env_factors(self.cfg.evolution.environment, pressure, self.retired(rejected),
                           self.cfg.encoding.kind == "synaptic", phase)

    def verdict(self, g: int, attempt: int, offspring: list[Parent],
                rejected: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Adaptive mode: the try's environment record when its fittest holds the floor or
        no try is left; else None, the try recorded among ``rejected`` (and saved). The
        last of a round of ``tries`` failed tries retires a layer (``blame.blame_order``) or,
        with none to retire, moves the generation on to the next phase (kernels, synapses);
        a later phase's failed tries move it on to the phase after, or end the run."""
        pressures = self.pressures(g, rejected)
        (p, phase), best = pressures[attempt], select(offspring, 1)[0]
        retired = self.retired(rejected)
        revisited = bool(self.history[-1].get("environment", {}).get("revisited")
                         or any("revisit" in r for r in rejected))
        record = {"pressure": p, "phase": phase, "tries": attempt + 1, "rejected": rejected,
                  "retired": sorted(retired), **({"revisited": True} if revisited else {})}
        if best.fitness.value >= self.floor() or attempt == len(pressures) - 1:
            return record
        entry = {"pressure": p, "phase": phase, self.val_key: best.fitness.value,
                 "synapses": best.synapses}
        tries = self.cfg.evolution.environment.tries
        if phase == "clusters" and (attempt + 1) % tries == 0:
            layer, back = None, [] if revisited else self.revisitable()
            revisit_next = bool(back) and attempt + 1 == tries * (1 + self.retirements_left())
            if pressures[attempt + 1][1] == "clusters" and not revisit_next:
                parent = {m.id: m for m in self.population}[best.parents[0]]
                suspects = [n for n in self.evolving() if n not in retired]
                order = blame_order(self.breeder, parent, best.masks, suspects)
                layer = next((n for n in order if self.room_left(parent, set(suspects) - {n})),
                             None)
            if layer is not None:
                entry["retired"] = layer
                why = ("its cut alone cost the parent most" if layer == order[0] else
                       f"{order[0]}'s cut cost most, but the others would have no room left")
                self.log(f"gen {g}: no try held the floor; {layer} retires ({why}) and the "
                         "others evolve on")
            elif back:
                entry["revisit"] = back
                self.log(f"gen {g}: no try held the floor and no layer is left to retire; "
                         f"{', '.join(back)}, retired before, evolve again")
            elif after := self.phases_after():
                entry["then"] = after[0]
                self.log(f"gen {g}: no try held the floor and no layer is left to retire; "
                         f"the clusters stay and the {entry['then']} evolve on")
            else:
                return record
        elif pressures[attempt + 1][1] != phase:  # a later phase's round failed
            entry["then"] = pressures[attempt + 1][1]
            self.log(f"gen {g}: no try held the floor; the {phase} stay and the "
                     f"{entry['then']} evolve on")
        rejected.append(entry)
        self.save_attempts(g, rejected)
        return None

    def keep(self, g: int, offspring: list[Parent], seconds: float,
             env: dict[str, Any] | None = None, test: Fitness | None = None
             ) -> dict[str, Any]:
        """Select the generation's population from its offspring and record it."""
        survivors = select(offspring, self.cfg.evolution.population)
        return self._record(g, survivors[0], offspring, survivors, seconds, env, test)

    def _generation(self, g: int, n_offspring: int, env: Environment | None, attempt: int,
                    teacher: Teacher | None) -> list[Parent]:
        """Breed a generation's offspring (resuming after those already saved), in index
        order."""
        jobs = self.jobs(g, n_offspring, env, attempt)
        bred = self.load_progress(g, attempt, n_offspring)
        todo = [j for j in jobs if j.k not in bred]
        if self.backend is None:
            self.backend = make_backend(self.breeder, self.cfg.execution, self.log)
        population = {p.id: p for p in self.population}

        def desc(job: Job) -> str:
            return f"gen {g}" + (f".{job.k}" if n_offspring > 1 else "")

        for child in self.backend.breed(todo, population, teacher,
                                        lambda j: self._hooks(_tag(g, j.attempt, str(j.k))),
                                        desc):
            bred[child.index] = child
            if n_offspring > 1:
                self.save_progress(g, attempt, child)
                fault_point("offspring-saved")
        return [bred[k] for k in range(n_offspring)]

    def load_attempts(self, g: int) -> list[dict[str, Any]]:
        """Generation ``g``'s rejected tries so far (adaptive mode)."""
        path = self.run.attempts_path(g)
        return list(read_json(path)) if path.is_file() else []

    def save_attempts(self, g: int, rejected: list[dict[str, Any]]) -> None:
        write_json(self.run.attempts_path(g), rejected)

    def save_progress(self, g: int, attempt: int, child: Parent) -> None:
        """A finished offspring of a generation in progress, for resume."""
        path = self.run.checkpoint_path(_tag(g, attempt, f"o{child.index}"))
        save_state(*child.to_state(), path)

    def load_progress(self, g: int, attempt: int, n_offspring: int) -> dict[int, Parent]:
        out = {}
        for k in range(n_offspring):
            path = self.run.checkpoint_path(_tag(g, attempt, f"o{k}"))
            if path.is_file():
                out[k] = Parent.from_state(*read_state(path))
        return out

    def run_all(self) -> EvolutionResult:
        try:
            while not self.finished():
                self.step()
        finally:
            self.close()
        return self.result()

    def close(self) -> None:
        self.observer.close()
        if self.backend is not None:
            self.backend.close()
            self.backend = None

    def result(self) -> EvolutionResult:
        best_g = self.summary()["best_generation"]
        model = copy.deepcopy(self.model).to(self.home)
        genome = self.run.load_generation(best_g, model, self.layers)
        return EvolutionResult(self.history, best_g, model, genome, self.run)


def select(offspring: list[Parent], k: int) -> list[Parent]:
    """The ``k`` fittest: validation score, then fewer synapses, then the lower index (so
    the order in which offspring finish never matters)."""
    def key(p: Parent) -> tuple[float, int, int]:
        return (*p.rank, -p.index)

    return sorted(offspring, key=key, reverse=True)[:k]


def genealogy(history: list[dict[str, Any]], val_key: str) -> dict[str, Any]:
    """Every individual bred in the accepted tries, its parents, score and size; which
    survived into the population and which was each generation's best."""
    individuals = []
    for rec in history:
        survivors = set(rec.get("population", [rec.get("id")]))
        for ind in rec.get("offspring", []):
            individuals.append({"generation": rec["generation"], **ind,
                                "survived": ind["id"] in survivors,
                                "best": ind["id"] == rec.get("id")})
    return {"metric": val_key, "individuals": individuals}


def _tag(g: int, attempt: int, what: str) -> str:
    """Checkpoint names: ``gen3-0`` (offspring 0's training), ``gen3-t1-o2`` (second try's
    offspring 2, trained)."""
    return f"gen{g}-{what}" if attempt == 0 else f"gen{g}-t{attempt}-{what}"
