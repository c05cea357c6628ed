"""Typed hyper-parameters with defaults and help text (open_lth style), validated by pydantic.

A run directory records the fully resolved ``RunConfig``; ``load_config`` turns YAML into
one with a one-line message for any mistake.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from .errors import UserError

# strict: YAML's `true` is no count, nor 2.5 nor "3"
Int = Annotated[int, Strict()]
Factor = Annotated[float, Field(gt=0, le=1, allow_inf_nan=False)]


def _starts_at_1(phases: dict[int, float]) -> dict[int, float]:
    if min(phases, default=0) != 1:
        raise ValueError("a phase schedule must start at generation 1")
    return phases


# A factor is one value; a list, one value per generation 1, 2, ... whose last repeats; or
# phases {first generation: value}, e.g. {1: 0.85, 11: 1.0}.
FactorSpec = (Factor | Annotated[list[Factor], Field(min_length=1)]
              | Annotated[dict[int, Factor], AfterValidator(_starts_at_1)])
Fraction = Annotated[float, Field(ge=0, le=1)]
Count = Annotated[Int, Field(ge=1)]
# Offspring per generation: one number, or phases {first generation: count}.
CountSpec = Count | Annotated[dict[int, Count], AfterValidator(_starts_at_1)]

_STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


@dataclass
class LayerFactors:
    """Environmental factors for the layers whose names match a pattern."""

    __pydantic_config__ = _STRICT
    synapse: FactorSpec | None = field(default=None, metadata={"help": "synapse factor"})
    cluster: FactorSpec | None = field(default=None, metadata={"help": "cluster factor"})


@dataclass
class EncodingConfig:
    """The genetic encoding: how a parent's weights become offspring survival probabilities."""

    __pydantic_config__ = _STRICT
    kind: Literal["cluster", "synaptic"] = field(default="cluster", metadata={
        "help": "cluster: clusters drawn first, then synapses (Shafiee & Wong); "
                "synaptic: synapses alone (the Darwin baseline)"})
    granularity: Literal["kernel", "filter", "filter+kernel"] = field(
        default="filter", metadata={
            "help": "kernel: conv kernel w[o,i], linear neuron; filter: w[o] in both; "
                    "filter+kernel: filters drawn first, then the kernels of the surviving "
                    "conv filters, then synapses"})
    normalization: Literal["max", "budget", "global"] = field(default="global", metadata={
        "help": "max: Z = max strength / ln 2 per layer (papers); budget: per layer, Z so "
                "that the expected surviving fraction equals the factor; global: one Z for "
                "the whole network's clusters (each layer's strengths divided by their mean), "
                "so layers compete for one budget"})
    strength: Literal["own", "group"] = field(default="own", metadata={
        "help": "cluster strength of a filter: own: the sum of its own |w|; group: its own "
                "synapses, the synapses that read its channel downstream and its BatchNorm "
                "scale, each divided by its layer's mean (Torch-Pruning's group importance)"})
    scale: Literal["value", "rank"] = field(default="value", metadata={
        "help": "how a cluster's strength enters exp(x / Z) - 1: value: the strength "
                "itself (papers); rank: its quantile among the clusters drawn together, so "
                "survival follows their order however close their strengths lie"})
    cost_exponent: Annotated[float, Field(ge=0)] = field(default=0.0, metadata={
        "help": "global: a cluster's score is divided by (the kernel clusters its death "
                "removes: its own live kernels and the live kernels of later conv layers "
                "that read its channel) ** this, so layers compete at their price; 0: off"})
    kernel_factor: FactorSpec = field(default=0.9, metadata={
        "help": "filter+kernel: the factor for kernels inside surviving filters"})
    synapse_factor: FactorSpec = field(default=0.7, metadata={
        "help": "environmental factor F_s for synapses, or a per-generation schedule"})
    cluster_factor: FactorSpec = field(default=0.7, metadata={
        "help": "environmental factor F_c for clusters, or a per-generation schedule"})
    layers: dict[str, LayerFactors] = field(default_factory=dict, metadata={
        "help": "per-layer factors by fnmatch name pattern; the first match wins"})
    exclude: list[str] = field(default_factory=list, metadata={
        "help": "name patterns of Conv/Linear layers to leave dense"})
    protect_output: bool = field(default=True, metadata={
        "help": "the output layer's neurons (the classes) never die"})
    output_layer: str | None = field(default=None, metadata={
        "help": "name of the output layer; default: the last prunable layer"})
    couple: bool = field(default=True, metadata={
        "help": "a dead filter silences the synapses reading its channel, and a channel "
                "nobody reads kills its filter (Torch-Pruning's dependency graph)"})


@dataclass
class TrainConfig:
    """One training phase: the ancestor's, or each offspring's."""

    __pydantic_config__ = _STRICT
    epochs: Annotated[Int, Field(ge=0)] = field(default=2, metadata={"help": "epochs"})
    batch_size: Annotated[Int, Field(ge=1)] = field(default=128, metadata={"help": "batch"})
    optimizer: Literal["sgd", "adam", "adamw"] = field(default="sgd", metadata={
        "help": "optimizer"})
    lr: Annotated[float, Field(gt=0)] = field(default=0.02, metadata={"help": "peak rate"})
    momentum: Fraction = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: Annotated[float, Field(ge=0)] = field(default=5e-4, metadata={
        "help": "weight decay (L2 for sgd/adam, decoupled for adamw); it also sharpens the "
                "strength signal the next generation is sampled from"})
    lr_schedule: Literal["constant", "cosine", "step"] = field(default="cosine", metadata={
        "help": "per-step schedule over the phase; step: x0.1 at 50% and 75%"})
    warmup_steps: Annotated[Int, Field(ge=0)] = field(default=0, metadata={
        "help": "linear warm-up steps"})
    distill: Fraction = field(default=0.5, metadata={
        "help": "offspring: weight of the teacher's soft targets in the loss (0: off; "
                "classification only)"})
    temperature: Annotated[float, Field(gt=0)] = field(default=4.0, metadata={
        "help": "softmax temperature of distillation"})
    teacher: Literal["parent", "ancestor"] = field(default="ancestor", metadata={
        "help": "whose outputs the offspring learns from when distill > 0"})


@dataclass
class EnvironmentConfig:
    """How harsh each generation's environment is. ``adaptive`` (default) sets it from what
    the last offspring measured; ``schedule`` takes the encoding's factors as given."""

    __pydantic_config__ = _STRICT
    kind: Literal["adaptive", "schedule"] = field(default="adaptive", metadata={
        "help": "adaptive: pressure rises while offspring hold the floor with headroom and "
                "falls when they lose it; schedule: the encoding's (per-layer) factors"})
    pressure: Annotated[float, Field(gt=0, lt=1)] = field(default=0.15, metadata={
        "help": "first generation's pressure: the expected share of live clusters to die"})
    max_pressure: Annotated[float, Field(gt=0, lt=1)] = field(default=0.3, metadata={
        "help": "the harshest environment"})
    min_pressure: Annotated[float, Field(gt=0, lt=1)] = field(default=0.05, metadata={
        "help": "the gentlest environment (retries repeat it rather than go below)"})
    grow: Annotated[float, Field(ge=1)] = field(default=1.5, metadata={
        "help": "pressure x this after an offspring holding at least `headroom` of the "
                "allowed drop in reserve"})
    ease: Annotated[float, Field(gt=0, le=1)] = field(default=0.85, metadata={
        "help": "pressure x this after an offspring that kept less than `headroom` (1: hold "
                "it; only a fall below the floor makes the environment gentler)"})
    noise: Annotated[float, Field(ge=0)] = field(default=1.0, metadata={
        "help": "ease only when the offspring's validation accuracy is more than this many "
                "standard errors (sqrt(a (1 - a) / n) on n examples) short of the headroom "
                "line; within it, hold (0: ease at any shortfall)"})
    retreat: Annotated[float, Field(gt=0, lt=1)] = field(default=0.5, metadata={
        "help": "pressure x this when an offspring falls below the floor and the parent "
                "is sampled again"})
    headroom: Fraction = field(default=0.5, metadata={
        "help": "share of the allowed drop (ancestor - floor) an offspring must keep for "
                "the next generation to be harsher"})
    tries: Count = field(default=3, metadata={
        "help": "samplings of the parent per generation before a failed floor ends the run"})
    synapse_share: Fraction = field(default=0.0, metadata={
        "help": "synapses of surviving clusters die at this share of the pressure (0: the "
                "pressure falls on clusters only, which is what dense hardware can skip; "
                "0.5: sparser survivors for sparse kernels; the synaptic encoding's "
                "synapses take the whole pressure)"})
    kernel_share: Fraction = field(default=0.5, metadata={
        "help": "filter+kernel: kernels of surviving filters die at this share"})
    width_exponent: Annotated[float, Field(ge=0)] = field(default=0.0, metadata={
        "help": "a layer wider than the geometric mean width g of the evolving layers feels "
                "the pressure x (live filters / g) ** this, at most max_pressure (0: off; "
                "needs per-layer budgets, encoding.normalization: budget)"})
    retire: Annotated[Int, Field(ge=0)] = field(default=2, metadata={
        "help": "layers a run may retire: when every try of a generation fails, the layer "
                "whose cut cost the parent most validation score per filter lost stops "
                "evolving and the generation is tried again without it (0: the run ends "
                "there)"})
    revisit: bool = field(default=False, metadata={
        "help": "once a generation has no layer left to retire, the layers retired in "
                "earlier generations evolve again for one more round of tries, once per run: "
                "a layer out of room early may have room after the others moved on"})
    kernel_phase: bool = field(default=True, metadata={
        "help": "when no try can lose filters and hold the floor (and no layer is left to "
                "retire), the kernels w[o, i] of the surviving conv filters die next, whole, "
                "the weakest by mean |w| first, each conv layer reading several channels "
                "losing the pressure's share of its kernels, under the same law, until no "
                "try holds; then the synapse phase (cluster encoding only)"})
    thin: bool = field(default=True, metadata={
        "help": "when no try can lose clusters and hold the floor (and no layer is left to "
                "retire), the clusters stay and the synapses evolve on: the pressure falls "
                "on synapses alone (under global, one budget by magnitude), growing while "
                "offspring lose nothing measurable against their parent, until that fails "
                "too (false: the run ends there; cluster encoding only)"})
    parent_grows: bool = field(default=False, metadata={
        "help": "in the cluster phase too, an offspring that lost nothing measurable "
                "against its parent (within noise standard errors) makes the next "
                "environment harsher, reserve or not (the synapse phase always does)"})


@dataclass
class Target:
    """What to reach: the run stops at the first generation that meets every value given."""

    __pydantic_config__ = _STRICT
    macs: Annotated[int, Field(ge=1)] | None = field(default=None, metadata={
        "help": "MACs per sample of the compact network"})
    params: Annotated[int, Field(ge=1)] | None = field(default=None, metadata={
        "help": "parameters of the compact network"})
    kernel_clusters: Annotated[int, Field(ge=1)] | None = field(default=None, metadata={
        "help": "live kernel clusters"})
    latency_ms: Annotated[float, Field(gt=0)] | None = field(default=None, metadata={
        "help": "measured latency of the compact network (measure.latency_batch)"})


@dataclass
class EvolutionConfig:
    """The generational loop."""

    __pydantic_config__ = _STRICT
    generations: Annotated[Int, Field(ge=0)] = field(default=30, metadata={
        "help": "generations after the ancestor (a cap: an adaptive run stops earlier when "
                "no offspring holds the floor, or at its target)"})
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    target: Target = field(default_factory=Target)
    offspring: CountSpec = field(default=1, metadata={
        "help": "offspring sampled and trained per generation (or phases, e.g. {1: 3, 11: 1}); "
                "best validation wins"})
    weights: Literal["inherit", "scratch", "rewind"] = field(default="inherit", metadata={
        "help": "offspring weights: parent's, re-initialized, or the ancestor's initial"})
    population: Count = field(default=1, metadata={
        "help": "the K fittest offspring of a generation (validation score, ties to fewer "
                "synapses) are the next generation's parents"})
    parents: Count = field(default=1, metadata={
        "help": "parents combined into each offspring, picked from the population by "
                "seeded tournaments of two (mating; at most the population)"})
    mating: Literal["fittest", "mean"] = field(default="fittest", metadata={
        "help": "an offspring of several parents inherits the fittest parent's weights "
                "(synapses dead in it take the mean of the others' live values), or the mean "
                "of the parents' live values everywhere"})
    draw_seed: Int | None = field(default=None, metadata={
        "help": "seed of the evolution's own draws (offspring masks, re-initializations, "
                "training order, mates); None: the run seed's. Another value is another draw "
                "on the same split and ancestor"})
    min_accuracy: Fraction | None = field(default=None, metadata={
        "help": "stop when validation accuracy falls below this"})
    max_drop: Fraction | None = field(default=0.01, metadata={
        "help": "stop when validation accuracy falls this far below the ancestor's "
                "(null: no floor unless min_accuracy)"})
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = field(default=0.1, metadata={
        "help": "share of the training data held out for selection and the floor"})
    compact_training: bool = field(default=True, metadata={
        "help": "train each offspring as its physically compacted network (dead filters "
                "and channels removed), then write the weights back: same result, cheaper"})


@dataclass
class ExecutionConfig:
    """Where offspring train. Not part of what a run computes: a run gives the same history
    on either backend at the same seed and thread count, and may resume on the other."""

    __pydantic_config__ = _STRICT
    backend: Literal["local", "ray"] = field(default="local", metadata={
        "help": "local: offspring one after another in this process; ray: a generation's "
                "offspring as Ray tasks, in parallel (pip install 'evosynth[ray]')"})
    address: str | None = field(default=None, metadata={
        "help": "Ray cluster to join: null starts a local Ray for the run, 'auto' joins the "
                "one on this machine, 'ray://host:10001' a remote one"})
    cpus_per_offspring: Count = field(default=1, metadata={
        "help": "CPUs (and torch threads) each Ray task gets"})
    gpus_per_offspring: Annotated[float, Field(ge=0)] = field(default=0.0, metadata={
        "help": "GPUs each Ray task gets (fractions share a GPU); 0 trains on CPU"})


@dataclass
class DataConfig:
    """How the data set is presented to the model."""

    __pydantic_config__ = _STRICT
    size: (Annotated[Int, Field(ge=1)] | Annotated[list[Annotated[Int, Field(ge=16)]],
                                                  Field(min_length=2, max_length=2)]
           | None) = field(default=None, metadata={
        "help": "resize images to size x size (bilinear), e.g. 32 for MNIST on CIFAR nets; "
                "detection: [height, width], multiples of the detector's stride"})
    channels: Annotated[Int, Field(ge=1)] | None = field(default=None, metadata={
        "help": "repeat 1-channel images to this many channels (3: grey digits as RGB)"})
    train_limit: Annotated[Int, Field(ge=2)] | None = field(default=None, metadata={
        "help": "use only the first N training examples (before the validation split)"})
    test_limit: Annotated[Int, Field(ge=1)] | None = field(default=None, metadata={
        "help": "use only the first N test examples"})
    classes: list[str] | None = field(default=None, metadata={
        "help": "detection: the object classes to detect (kitti: Car, Pedestrian, Cyclist)"})
    augment: Literal["auto", "none", "crop-flip", "shift", "flip-shift"] = field(
        default="auto", metadata={
            "help": "training augmentation; auto: the data set's standard (cifar10: crop-flip, "
                    "others none); crop-flip: 4-pixel padded random crops and horizontal "
                    "flips; shift: translations of up to 2 pixels, no flips (digits); "
                    "detection: shift moves images by up to 2 grid cells (32 px) and "
                    "flip-shift also mirrors half of them (DetectNet's)"})


@dataclass
class MeasureConfig:
    """Costs recorded per generation, measured on the compact network."""

    __pydantic_config__ = _STRICT
    costs: bool = field(default=True, metadata={
        "help": "record compact_params, compact_macs, model_bytes and latency_ms"})
    latency_batch: Annotated[Int, Field(ge=1)] = field(default=256, metadata={
        "help": "batch size of the latency measurement"})
    latency_repeats: Annotated[Int, Field(ge=1)] = field(default=10, metadata={
        "help": "timed forward passes (median reported) after 3 warm-up passes"})


@dataclass
class LoggingConfig:
    """Where a run reports besides its run directory."""

    __pydantic_config__ = _STRICT
    tensorboard: str | None = field(default=None, metadata={
        "help": "folder for TensorBoard event files: per-epoch losses, per-generation "
                "scores and sizes (pip install 'evosynth[tensorboard]')"})


@dataclass
class RunConfig:
    """Everything a run needs; ``config.yaml`` in a run directory is one of these."""

    __pydantic_config__ = _STRICT
    model: str = field(default="lenet5", metadata={"help": "registry name"})
    model_args: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "keyword arguments for the model factory"})
    dataset: str = field(default="mnist", metadata={"help": "registry name"})
    data_dir: str | None = field(default=None, metadata={"help": "where the data lies"})
    data: DataConfig = field(default_factory=DataConfig)
    seed: Int = field(default=0, metadata={"help": "every random draw derives from it"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    ancestor_weights: str | None = field(default=None, metadata={
        "help": "safetensors state dict of a trained ancestor: skip ancestor training. "
                "Train it on this run's training split (same seed and val_fraction), or "
                "validation accuracy, and so selection and the floor, will be optimistic"})
    encoding: EncodingConfig = field(default_factory=EncodingConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    ancestor_train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=15, lr=0.05, distill=0.0))  # the ancestor has no teacher
    train: TrainConfig = field(default_factory=TrainConfig)
    measure: MeasureConfig = field(default_factory=MeasureConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)


_WRONG_BRANCH = ("float_type", "list_type", "dict_type", "int_type", "dataclass_type")


def _one_line(exc: ValidationError, source: str) -> str:
    """The error that matters: a union (a factor may be a number, list or phases) reports
    one error per branch, and the branch of the input's own type tells what is wrong."""
    errs = exc.errors()
    err = min(errs, key=lambda e: e["type"] in _WRONG_BRANCH) if len(errs) > 1 else errs[0]
    skip = ("function-", "list[", "constrained-")
    where = ".".join(str(p) for p in err["loc"] if not str(p).startswith(skip))
    msg = err["msg"].removeprefix("Value error, ")
    return f"{source}: {where or 'config'}: {msg}"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) \
            else v
    return out


def validate(data: dict[str, Any], source: str = "config") -> RunConfig:
    """Settings over the defaults: a section given in part keeps its other defaults (so
    ``ancestor_train: {lr: 0.01}`` keeps the ancestor's 15 epochs)."""
    if not isinstance(data, dict):
        raise UserError(f"{source}: the top level must be a mapping of settings")
    try:
        cfg = TypeAdapter(RunConfig).validate_python(_merge(to_dict(RunConfig()), data))
    except ValidationError as exc:
        raise UserError(_one_line(exc, source)) from None
    _check_factors(cfg, source)
    _check_population(cfg, source)
    _check_per_layer(cfg, source)
    return cfg


def _check_per_layer(cfg: RunConfig, source: str) -> None:
    """Per-layer cluster pressures (the width rule, per-layer cluster factors) mean nothing
    under one network-wide budget: refused rather than half applied."""
    env = cfg.evolution.environment
    if cfg.encoding.normalization != "global":
        if cfg.encoding.cost_exponent:
            raise UserError(f"{source}: encoding.cost_exponent prices clusters against one "
                            "another across layers, which only encoding.normalization: "
                            "global (one budget for the network) does; set it to global")
        return
    if env.kind == "adaptive" and env.width_exponent:
        what = "evolution.environment.width_exponent sets"
    elif env.kind == "schedule" and any(f.cluster is not None
                                        for f in cfg.encoding.layers.values()):
        what = "encoding.layers' cluster factors set"
    else:
        return
    raise UserError(f"{source}: {what} each layer's own cluster pressure, which "
                    "encoding.normalization: global (one budget for the network) does not "
                    "use; set encoding.normalization: budget")


def _check_population(cfg: RunConfig, source: str) -> None:
    ev = cfg.evolution
    if ev.parents > ev.population:
        raise UserError(f"{source}: evolution.parents ({ev.parents}) must be at most "
                        f"evolution.population ({ev.population}): parents come from it")
    counts = ev.offspring.values() if isinstance(ev.offspring, dict) else [ev.offspring]
    if min(counts) < ev.population:
        raise UserError(f"{source}: evolution.offspring ({min(counts)}) must be at least "
                        f"evolution.population ({ev.population}): the population is the "
                        "fittest of a generation's offspring")


def _check_factors(cfg: RunConfig, source: str) -> None:
    """Factors that the adaptive environment would ignore are refused, not dropped."""
    if cfg.evolution.environment.kind != "adaptive":
        return
    default = EncodingConfig()
    given = [k for k in ("synapse_factor", "cluster_factor", "kernel_factor", "layers")
             if getattr(cfg.encoding, k) != getattr(default, k)]
    if given:
        raise UserError(f"{source}: encoding.{given[0]} is a schedule setting; the adaptive "
                        "environment sets the factors itself (use its settings under "
                        "evolution.environment), or set evolution.environment.kind: schedule")


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> RunConfig:
    """YAML file (optional) + dotted overrides (``{"train.epochs": 3}``) -> RunConfig."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {p} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise UserError(f"{p}: not a text file (not UTF-8)") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark else ""
            raise UserError(f"{p}: malformed YAML{at}: {getattr(exc, 'problem', exc)}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{p}: the top level must be a mapping of settings")
        data = loaded
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return validate(data, str(path) if path else "config")


def to_dict(cfg: RunConfig) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def schedule_at(spec, generation: int):
    """A scheduled setting's value in generation g >= 1: a number, a list whose last value
    repeats, or phases ``{first generation: value}``."""
    if isinstance(spec, list):
        return spec[min(generation, len(spec)) - 1]
    if isinstance(spec, dict):
        return spec[max(k for k in spec if k <= generation)]
    return spec


def factor_at(spec: float | list[float] | dict[int, float], generation: int) -> float:
    return float(schedule_at(spec, generation))
