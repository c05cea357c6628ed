"""Genetic encodings: a parent's weights -> survival probabilities -> an offspring's masks.

Both encodings share the probability shape ``p = F * (exp(x / Z) - 1)`` clipped to [0, 1]
(README, "The method in brief") and the sampling; they differ only in whether clusters are
drawn first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import torch

from .clusters import (
    Layer,
    cluster_view,
    drop_clusters,
    live_filters,
    matches,
    resolve_output_layer,
    width,
)
from .config import EncodingConfig, factor_at
from .coupling import ChannelGroup
from .heads import HeadGroup, live_heads

_BISECT_STEPS = 100


def strength_ranks(strength: torch.Tensor) -> torch.Tensor:
    """Each item's quantile among the items drawn together, in (0, 1] (ties share the
    highest; a zero strength stays 0): survival then follows the order of the strengths
    however close their values lie."""
    x = strength.detach().to(torch.float64).cpu()
    if x.numel() == 0:
        return x
    q = torch.searchsorted(x.sort().values, x, right=True).to(torch.float64) / x.numel()
    return torch.where(x > 0, q, torch.zeros_like(q))


def survival_probability(strength: torch.Tensor, factor: float, normalization: str,
                         rank: bool = False) -> torch.Tensor:
    """Probabilities for the live items of one layer (synapses or clusters), in float64.

    ``max``: ``Z = max / ln 2`` so the strongest item survives with probability ``factor``.
    ``budget``: ``Z`` chosen by bisection so that the mean probability equals ``factor``;
    the mean falls monotonically as ``Z`` grows, which makes bisection exact enough.
    ``rank``: the strengths enter as their quantiles (``strength_ranks``).
    """
    x = strength.detach().to(torch.float64).cpu()
    if x.numel() == 0:
        return x
    if rank:
        x = strength_ranks(x)
    top = float(x.max())
    if top <= 0:  # all-zero strengths carry no information: nothing can be preferred
        return torch.full_like(x, factor if normalization == "budget" else 0.0)
    if normalization == "max":
        return (factor * torch.expm1(x / (top / math.log(2)))).clamp(0, 1)
    if factor >= 1:
        return (x > 0).to(x.dtype)

    def mean_p(log_z: float) -> float:
        return float(torch.expm1(x / math.exp(log_z)).clamp(0, 1).mean())

    # p saturates to 1 for x >= Z ln 2 and vanishes like x / Z for large Z.
    lo, hi = math.log(top) - 40.0, math.log(top) + 40.0
    for _ in range(_BISECT_STEPS):
        mid = 0.5 * (lo + hi)
        if mean_p(mid) > factor:
            lo = mid
        else:
            hi = mid
    return torch.expm1(x / math.exp(0.5 * (lo + hi))).clamp(0, 1)


@dataclass(frozen=True)
class Environment:
    """One generation's environmental factors (adaptive mode); in schedule mode the encoding
    reads them per layer from its config instead. ``sized`` gives each layer its own
    pressure from its live width; ``layer`` reads a layer's factors."""

    cluster: float
    synapse: float
    kernel: float
    width_exponent: float = 0.0  # pressure x (width / geometric-mean width) ** this
    max_pressure: float = 1.0  # no layer's pressure goes above it
    scale: Mapping[str, float] = field(default_factory=dict)  # per-layer pressure multiplier
    retired: frozenset[str] = frozenset()  # layers that no longer evolve (nothing dies)
    kernel_unit: bool = False  # the kernel phase: conv synapses die a kernel at a time

    @property
    def clusters_evolve(self) -> bool:
        """False in the synapse phase (cluster factor 1): no filter, head or tied channel is
        drawn, whatever the normalization."""
        return self.cluster < 1

    def sized(self, widths: Mapping[str, int]) -> Environment:
        """Per-layer pressures for layers of ``widths`` live filters: a wide layer has more
        to spare than a narrow one, so with ``width_exponent`` b a layer wider than the
        geometric mean g of the live widths feels the generation's pressure times
        ``(n / g) ** b``; the others feel it as it is."""
        scale = {name: 1.0 for name in widths}
        live = [n for n in widths.values() if n > 0]
        if self.width_exponent and live:
            ref = math.exp(sum(math.log(n) for n in live) / len(live))
            scale = {name: max(1.0, n / ref) ** self.width_exponent
                     for name, n in widths.items()}
        return replace(self, scale=scale)

    def layer(self, name: str) -> tuple[float, float, float]:
        """(synapse, cluster, kernel) factors of one layer (a retired layer is not drawn at
        all: ``Encoding.sample`` and the tie and head draws skip it)."""
        s = self.scale.get(name, 1.0)
        if s == 1.0:  # exactly the generation's factors (no float round trip)
            return self.synapse, self.cluster, self.kernel

        def scaled(factor: float) -> float:
            return 1 - min((1 - factor) * s, max(1 - factor, self.max_pressure))

        return scaled(self.synapse), scaled(self.cluster), scaled(self.kernel)


@dataclass
class LayerProbabilities:
    cluster: torch.Tensor | None  # per cluster (dead clusters: 0); None: no cluster draw
    synapse: torch.Tensor  # weight-shaped (dead synapses: 0)


@dataclass(frozen=True)
class Reader:
    """Synapses of layer ``layer`` that read filter outputs of another layer: input columns
    ``cols`` read the filters ``filters`` (index by index)."""

    layer: str
    cols: torch.Tensor
    filters: torch.Tensor


def readers_of(coupling, layers: dict[str, Layer]) -> tuple[dict[str, list[Reader]],
                                                              dict[str, list[tuple]]]:
    """For each prunable layer: the downstream synapses that read its filters, and the
    normalization channels (module, channel idxs, filters) that scale them."""
    readers: dict[str, list[Reader]] = {n: [] for n in layers}
    norms: dict[str, list[tuple]] = {n: [] for n in layers}
    for group in (coupling.groups if coupling is not None else ()):
        for w in group.by_role("out"):
            if w.module not in layers:
                continue
            inv = torch.full((group.channels,), -1, dtype=torch.long)
            inv[w.root] = w.idxs
            for r in group.by_role("in"):
                if r.maskable and r.module in layers:
                    f = inv[r.root]
                    keep = f >= 0
                    readers[w.module].append(Reader(r.module, r.idxs[keep], f[keep]))
            for a in group.by_role("aux"):
                if a.producer == w.module:
                    f = inv[a.root]
                    keep = f >= 0
                    norms[w.module].append((a.module, a.idxs[keep], f[keep]))
    return readers, norms


class Encoding:
    """What both encodings share: factors, synapse draws, output protection. The encoding
    is the policy: it decides which layers are protected and whether channels tied by a
    residual addition are one cluster; the coupling (``graph``) only carries it out."""

    def __init__(self, cfg: EncodingConfig, layers: dict[str, Layer],
                 ties: list[ChannelGroup] = (), coupling=None):
        self.cfg = cfg
        self.layers = layers
        self.output_layer = resolve_output_layer(layers, cfg.output_layer)
        self.ties = list(ties)  # channels written by several layers (residual additions)
        self._order = {name: i for i, name in enumerate(layers)}
        self.readers, self.norms = readers_of(coupling, layers)
        # writers of a normalized width (a transformer's residual stream): filters live
        self.boundary = coupling.boundary_writers() if coupling is not None else set()
        self.head_groups = coupling.head_groups if coupling is not None else []
        # the q/k/v projections whose rows are drawn as heads, not one by one
        self.head_layers = set() if cfg.granularity == "kernel" else {
            n for g in self.head_groups for n in g.projections}

    def factors(self, name: str, generation: int, env: Environment | None = None
                ) -> tuple[float, float]:
        """(F_s, F_c) of a layer in a generation: the environment's if adaptive, else the
        first matching layer pattern, else the global factors."""
        if env is not None:
            return env.layer(name)[:2]
        syn, clu = self.cfg.synapse_factor, self.cfg.cluster_factor
        for pattern, lf in self.cfg.layers.items():
            if matches(name, [pattern]):
                syn = lf.synapse if lf.synapse is not None else syn
                clu = lf.cluster if lf.cluster is not None else clu
                break
        return factor_at(syn, generation), factor_at(clu, generation)

    def sized(self, masks: dict[str, torch.Tensor], env: Environment | None
              ) -> Environment | None:
        """The environment with per-layer pressures from the live widths of the layers
        whose filters evolve (not the protected ones, not q/k/v attentions)."""
        if env is None:
            return None
        return env.sized({name: width(masks[name])
                          for name in self.layers
                          if not self.is_protected(name) and name not in self.head_layers})

    def is_protected(self, name: str) -> bool:
        return (self.cfg.protect_output and name == self.output_layer) or name in self.boundary

    @property
    def per_layer(self) -> str:
        """The normalization of draws made layer by layer (tied channels, heads, synapses
        in schedule mode): under ``global`` they keep per-layer budgets; clusters, and
        synapses under pressure in adaptive mode, share one."""
        return "budget" if self.cfg.normalization == "global" else self.cfg.normalization

    @property
    def rank(self) -> bool:
        """Cluster strengths enter the survival function as quantiles (``scale: rank``)."""
        return self.cfg.scale == "rank"

    @property
    def protected(self) -> set[str]:
        """Layers whose filters never die: the network's outputs, and the writers of a
        width that a normalization or attention mixes."""
        out = {self.output_layer} if self.cfg.protect_output and self.output_layer else set()
        return out | self.boundary

    @property
    def tie(self) -> bool:
        """Channels that a residual addition ties across layers are one cluster: at filter
        level in the cluster encoding; per kernel or synapse otherwise."""
        return isinstance(self, ClusterEncoding) and self.cfg.granularity != "kernel"

    def kernel_layers(self) -> list[str]:
        """The conv layers reading several channels: those whose kernels the kernel phase
        draws. Where a conv reads one channel (a grayscale input, a depthwise conv) a
        kernel is its whole filter, whose death that phase may not bring: such a layer
        keeps its synapses until the synapse phase."""
        return [n for n, layer in self.layers.items()
                if layer.kind == "conv" and layer.shape[1] > 1]

    def kernel_unit(self, name: str, env: Environment | None) -> bool:
        """In the kernel phase a conv layer's synapses live or die a kernel at a time."""
        return env is not None and env.kernel_unit and name in self.kernel_layers()

    def kernel_probability(self, name: str, weight: torch.Tensor, mask: torch.Tensor,
                           factor: float) -> torch.Tensor:
        """Per kernel of a conv layer (dead ones 0): its chance, drawn from its mean live
        |w| among the layer's kernels, ``factor`` their expected surviving share (a
        layer's own budget: kernel sizes and weight scales differ between layers, and each
        layer's kernels compete among themselves)."""
        layer = self.layers[name]
        live = cluster_view(mask.cpu(), layer, "kernel")
        w = cluster_view(weight.detach().abs().cpu().to(torch.float64), layer, "kernel")
        alive = live.any(dim=1)
        mean = (w * live).sum(dim=1) / live.sum(dim=1).clamp(min=1)
        p = torch.zeros(alive.shape, dtype=torch.float64)
        p[alive] = survival_probability(mean[alive], factor, self.per_layer)
        return p

    def synapse_probability(self, weight: torch.Tensor, mask: torch.Tensor, factor: float
                            ) -> torch.Tensor:
        p = torch.zeros(weight.shape, dtype=torch.float64)
        live = mask.cpu()
        p[live] = survival_probability(weight.detach().abs().cpu()[live], factor,
                                       self.per_layer)
        return p

    def cluster_probabilities(self, weights, masks, generation, env
                              ) -> dict[str, torch.Tensor]:
        return {}

    def network_synapse_probabilities(self, weights, masks, factor: float,
                                      retired: frozenset[str] = frozenset()
                                      ) -> dict[str, torch.Tensor]:
        """Every evolving layer's synapses against one budget, by raw magnitude (global
        magnitude pruning's ranking): a wide layer's many small weights go before a narrow
        layer's few large ones, as the layers' redundancy is."""
        names = [n for n in self.layers if n not in retired]
        live = {n: masks[n].cpu() for n in names}
        joint = torch.cat([weights[n].detach().abs().cpu()[live[n]] for n in names])
        p_all = survival_probability(joint, factor, "budget")
        out, at = {}, 0
        for name in names:
            p = torch.zeros(live[name].shape, dtype=torch.float64)
            n = int(live[name].sum())
            p[live[name]] = p_all[at:at + n]
            out[name] = p
            at += n
        return out

    def sample(self, weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
               generation: int, generator: torch.Generator, env: Environment | None = None
               ) -> dict[str, torch.Tensor]:
        """Draw an offspring's masks. Draws happen on the CPU in a fixed layer order, so the
        same generator state gives the same offspring on any device."""
        env = self.sized(masks, env)
        cluster_p = ({} if env is not None and not env.clusters_evolve
                     else self.cluster_probabilities(weights, masks, generation, env))
        pooled = (self.network_synapse_probabilities(weights, masks, env.synapse, env.retired)
                  if env is not None and env.synapse < 1
                  and self.cfg.normalization == "global" else {})
        children, drawn = {}, {}
        for name in self.layers:
            parent = masks[name].cpu()
            if env is not None and name in env.retired:
                children[name] = parent.clone()
                continue
            f_s, _ = self.factors(name, generation, env)
            if self.kernel_unit(name, env):  # the kernel phase: no filter dies
                children[name] = parent.clone()
                _draw_kernels(self.layers[name], children[name], generator,
                              self.kernel_probability(name, weights[name], parent,
                                                      env.layer(name)[2]))
            else:
                p_syn = (pooled[name] if pooled
                         else self.synapse_probability(weights[name], parent, f_s))
                children[name] = parent & (torch.rand(parent.shape, generator=generator,
                                                      dtype=torch.float64) < p_syn)
            if name in cluster_p:
                drawn[name] = _keep_one(torch.rand(cluster_p[name].shape, generator=generator,
                                                   dtype=torch.float64) < cluster_p[name],
                                        cluster_p[name])
                self.draw_kernels(name, weights[name], parent, drawn[name], children,
                                  generation, generator, env)
        tied = self.draw_tied(weights, masks, generation, generator, drawn, env)
        heads = self.draw_heads(weights, masks, generation, generator, env)
        out = {}
        for name, child in children.items():
            if name in drawn:
                drop_clusters(child, self.layers[name], self.cfg.granularity, ~drawn[name])
            if self.is_protected(name):
                child = _keep_synapse(child, masks[name].cpu(), weights[name])
            elif name in tied:
                child = _keep_synapse(child, masks[name].cpu(), weights[name], tied[name])
            elif env is not None and not env.clusters_evolve:  # the synapse phase
                child = _keep_any(child, masks[name].cpu(), weights[name])
            out[name] = child
        for group, alive in heads:  # a head dies whole: q, k, v rows, output columns
            rows = group.rows(alive)
            for name in group.projections:
                out[name][~rows] = False
            out[group.out][:, ~rows] = False
        return {name: child.to(masks[name].device) for name, child in out.items()}

    def draw_kernels(self, name, weight, parent, alive, children, generation, generator, env
                     ) -> None:
        """filter+kernel: the kernels of the surviving conv filters are drawn next."""

    def draw_tied(self, weights, masks, generation, generator, drawn, env=None
                  ) -> dict[str, torch.Tensor]:
        """Overwrite ``drawn`` for filters tied across layers; return, per layer, the
        filters that must keep a synapse. The synaptic encoding draws no clusters."""
        return {}

    def draw_heads(self, weights, masks, generation, generator, env=None
                   ) -> list[tuple[HeadGroup, torch.Tensor]]:
        """Per q/k/v attention, which heads live (the cluster encoding draws them)."""
        return []


class SynapticEncoding(Encoding):
    """The Darwin baseline: synapses drawn one by one, no cluster draw."""


class ClusterEncoding(Encoding):
    """Shafiee & Wong: a synapse survives only if its cluster and itself are drawn."""

    def own_strength(self, name: str, weight: torch.Tensor, mask: torch.Tensor
                     ) -> torch.Tensor:
        """Per cluster: the summed |w| of its live synapses (the papers' S_c)."""
        return cluster_view(weight.detach().abs().cpu() * mask.cpu(), self.layers[name],
                            self.cfg.granularity).sum(dim=1).to(torch.float64)

    def group_strength(self, name: str, weights, masks) -> torch.Tensor:
        """Per filter: its own synapses, the synapses that read its channel downstream and
        its normalization scale, each divided by the layer's mean over live filters, so
        the terms weigh alike whatever their sizes."""
        live = live_filters(masks[name].cpu())
        total = _mean_normalized(self.own_strength(name, weights[name], masks[name]), live)
        read = torch.zeros(len(live), dtype=torch.float64)
        for r in self.readers[name]:
            w = (weights[r.layer].detach().abs().cpu() * masks[r.layer].cpu()).to(torch.float64)
            cols = w.transpose(0, 1).reshape(w.shape[1], -1).sum(1)
            read.index_add_(0, r.filters, cols[r.cols])
        if self.readers[name]:
            total += _mean_normalized(read, live)
        scale = torch.zeros(len(live), dtype=torch.float64)
        for module, idxs, filters in self.norms[name]:
            gamma = weights.get(module)  # the loop passes normalization scales by name
            if gamma is not None:
                scale.index_add_(0, filters, gamma.detach().abs().cpu().double()[idxs])
        if bool(scale.gt(0).any()):
            total += _mean_normalized(scale, live)
        return total

    def kernel_cost(self, name: str, masks) -> torch.Tensor:
        """Per cluster of ``name``: the kernel clusters its death removes. A conv filter:
        its live kernels, and the live kernels of later conv layers that read its channel; a
        neuron: itself (a neuron reading a dead channel lives on). At kernel granularity a
        cluster is one kernel."""
        layer = self.layers[name]
        if self.cfg.granularity == "kernel" or layer.kind != "conv":
            clusters = cluster_view(masks[name].cpu(), layer, self.cfg.granularity)
            return torch.ones(clusters.shape[0], dtype=torch.float64)

        def kernels(m: torch.Tensor) -> torch.Tensor:  # (out, in): kernel w[o, i] alive
            return m.cpu().reshape(m.shape[0], m.shape[1], -1).any(dim=2).to(torch.float64)

        cost = kernels(masks[name]).sum(dim=1)
        for r in self.readers[name]:
            if self.layers[r.layer].kind == "conv":
                cost.index_add_(0, r.filters, kernels(masks[r.layer]).sum(dim=0)[r.cols])
        return cost

    def strengths(self, name: str, weights, masks) -> torch.Tensor:
        filter_level = self.cfg.granularity != "kernel" or self.layers[name].kind == "linear"
        if self.cfg.strength == "group" and filter_level:
            return self.group_strength(name, weights, masks)
        return self.own_strength(name, weights[name], masks[name])

    def cluster_probabilities(self, weights, masks, generation, env):
        """Per layer (``max``, ``budget``) or one budget for the whole network (``global``,
        each layer's strengths divided by their live mean so layers compare); ``env`` as
        ``sized`` gives it (``sample`` sizes it once per offspring)."""
        out, pool = {}, {}
        for name, layer in self.layers.items():
            if (self.is_protected(name) or name in self.head_layers
                    or (env is not None and name in env.retired)):
                continue
            live = cluster_view(masks[name].cpu(), layer, self.cfg.granularity).any(dim=1)
            s = self.strengths(name, weights, masks)
            if self.cfg.normalization == "global":
                score = _mean_normalized(s, live)
                if self.cfg.cost_exponent:
                    score = score / self.kernel_cost(name, masks).clamp(min=1) ** \
                        self.cfg.cost_exponent
                pool[name] = (score, live)
                continue
            factor = self.factors(name, generation, env)[1]
            p = torch.zeros(live.shape, dtype=torch.float64)
            p[live] = survival_probability(s[live], factor, self.cfg.normalization,
                                           self.rank)
            out[name] = p
        if pool:
            factor = env.cluster if env is not None else factor_at(self.cfg.cluster_factor,
                                                                   generation)
            joint = torch.cat([s[live] for s, live in pool.values()])
            p_all = survival_probability(joint, factor, "budget", self.rank)
            at = 0
            for name, (_, live) in pool.items():
                p = torch.zeros(live.shape, dtype=torch.float64)
                n = int(live.sum())
                p[live] = p_all[at:at + n]
                at += n
                out[name] = p
        return out

    def draw_kernels(self, name, weight, parent, alive, children, generation, generator, env):
        layer = self.layers[name]
        if self.cfg.granularity != "filter+kernel" or layer.kind != "conv":
            return
        factor = env.layer(name)[2] if env is not None else factor_at(self.cfg.kernel_factor,
                                                                       generation)
        kernels = cluster_view(parent, layer, "kernel").any(dim=1)
        live = kernels & alive.repeat_interleave(layer.shape[1])
        strength = cluster_view(weight.detach().abs().cpu() * parent, layer,
                                "kernel").sum(dim=1).to(torch.float64)
        p = torch.zeros(live.shape, dtype=torch.float64)
        p[live] = survival_probability(strength[live], factor, "budget", self.rank)
        _draw_kernels(layer, children[name], generator, p)

    def draw_tied(self, weights, masks, generation, generator, drawn, env=None):
        """At filter granularity a channel that a residual addition ties across layers is
        one cluster: its strength is pooled over the layers that write it, it is drawn
        once, with the factor of its first writer, and it lives or dies in all of them."""
        keep: dict[str, torch.Tensor] = {}
        if self.cfg.granularity == "kernel":
            return keep
        for group in self.ties:
            writers = [m for m in group.by_role("out")
                       if m.maskable and m.module in drawn and not self.is_protected(m.module)]
            if len(writers) < 2:
                continue
            writers.sort(key=lambda m: self._order[m.module])
            strength = torch.zeros(group.channels, dtype=torch.float64)
            live = torch.zeros(group.channels, dtype=torch.bool)
            for m in writers:
                mask = masks[m.module].cpu()
                w = (weights[m.module].detach().abs().cpu() * mask).to(torch.float64)
                strength.index_add_(0, m.root, w.reshape(w.shape[0], -1).sum(1)[m.idxs])
                live[m.root] |= live_filters(mask)[m.idxs]
            p = torch.zeros(group.channels, dtype=torch.float64)
            if _frozen(env, [m.module for m in group.by_role("out")]):
                p[live] = 1.0
            else:
                p[live] = survival_probability(
                    strength[live], self.factors(writers[0].module, generation, env)[1],
                    self.per_layer, self.rank)
            alive = torch.rand(group.channels, generator=generator, dtype=torch.float64) < p
            for m in writers:
                drawn[m.module][m.idxs] = alive[m.root]
                rows = keep.setdefault(m.module, torch.zeros(len(drawn[m.module]),
                                                             dtype=torch.bool))
                rows[m.idxs] |= alive[m.root]
        return keep


    def draw_heads(self, weights, masks, generation, generator, env=None):
        """At filter granularity a head of a q/k/v attention is one cluster: its strength
        the summed |w| of its q, k and v rows, drawn with q's cluster factor under the
        per-layer normalization; an attention keeps at least one head."""
        out = []
        if self.cfg.granularity == "kernel":
            return out
        for group in self.head_groups:
            strength = torch.zeros(group.heads, dtype=torch.float64)
            for name in group.projections:
                w = (weights[name].detach().abs().cpu() * masks[name].cpu()).to(torch.float64)
                strength += w.reshape(group.heads, -1).sum(1)
            live = live_heads(group, masks)
            p = torch.zeros(group.heads, dtype=torch.float64)
            if _frozen(env, group.projections):
                p[live] = 1.0
            else:
                p[live] = survival_probability(strength[live],
                                               self.factors(group.q, generation, env)[1],
                                               self.per_layer, self.rank)
            alive = _keep_one(torch.rand(group.heads, generator=generator,
                                         dtype=torch.float64) < p, p)
            out.append((group, alive & live))
        return out


def _frozen(env: Environment | None, names) -> bool:
    """A tied channel or a head whose layers include a retired one does not evolve, nor
    any in the synapse phase."""
    return env is not None and (not env.clusters_evolve
                                or any(n in env.retired for n in names))


def _mean_normalized(s: torch.Tensor, live: torch.Tensor) -> torch.Tensor:
    """``s`` divided by its mean over ``live`` (zero where dead): comparable across layers."""
    out = torch.zeros_like(s, dtype=torch.float64)
    if bool(live.any()):
        mean = float(s[live].double().mean())
        if mean > 0:
            out[live] = s[live].double() / mean
    return out


def _draw_kernels(layer: Layer, child: torch.Tensor, generator: torch.Generator,
                  p: torch.Tensor) -> None:
    """Draw each kernel of a conv layer once with its chance ``p`` (dead kernels 0) and kill
    the losers in ``child``, in place; a filter that would lose every kernel keeps its most
    probable one (``filter+kernel``'s surviving filters, the kernel phase's every filter)."""
    drawn = torch.rand(p.shape, generator=generator, dtype=torch.float64) < p
    per_filter = drawn.reshape(layer.shape[0], layer.shape[1])
    per_filter |= _strongest(p.reshape(per_filter.shape)) & ~per_filter.any(dim=1,
                                                                            keepdim=True)
    cluster_view(child, layer, "kernel")[~per_filter.reshape(-1)] = False


def _strongest(p: torch.Tensor) -> torch.Tensor:
    """Row-wise one-hot of the most probable entry."""
    out = torch.zeros(p.shape, dtype=torch.bool)
    out[torch.arange(p.shape[0]), p.argmax(dim=1)] = True
    return out


def _keep_one(drawn: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A layer keeps at least its most probable live cluster: a layer with none left would
    cut the network in two."""
    if not bool(drawn.any()) and bool(p.gt(0).any()):
        drawn = drawn.clone()
        drawn[int(p.argmax())] = True
    return drawn


def _keep_synapse(child: torch.Tensor, parent: torch.Tensor, weight: torch.Tensor,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """A filter (output neuron) among ``rows`` (default: all) that lost every synapse to the
    synapse draw gets its strongest parent synapse back: an output class must not go
    silent, and a tied channel the group keeps must stay alive in every layer writing it."""
    rows_c, rows_p = child.reshape(child.shape[0], -1), parent.reshape(parent.shape[0], -1)
    strength = weight.detach().abs().cpu().reshape(child.shape[0], -1).masked_fill(~rows_p, -1)
    lost = ~rows_c.any(dim=1) & rows_p.any(dim=1)
    if rows is not None:
        lost &= rows
    for o in torch.nonzero(lost).flatten().tolist():
        rows_c[o, int(strength[o].argmax())] = True
    return child


def _keep_any(child: torch.Tensor, parent: torch.Tensor, weight: torch.Tensor
              ) -> torch.Tensor:
    """In the synapse phase (no cluster drawn), a layer that lost every synapse to the
    network-wide draw gets its strongest back: a layer with none left would cut the
    network in two."""
    if bool(child.any()) or not bool(parent.any()):
        return child
    child = child.clone()
    strength = weight.detach().abs().cpu().masked_fill(~parent, -1)
    child.view(-1)[int(strength.argmax())] = True
    return child


def make_encoding(cfg: EncodingConfig, layers: dict[str, Layer],
                  ties: list[ChannelGroup] = (), coupling=None) -> Encoding:
    return (ClusterEncoding if cfg.kind == "cluster" else SynapticEncoding)(cfg, layers, ties,
                                                                            coupling)
