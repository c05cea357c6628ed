"""Genetic encodings: a parent's weights -> survival probabilities -> an offspring's masks.

Both encodings share the probability shape ``p = F * (exp(x / Z) - 1)`` clipped to [0, 1]
(METHOD.md) and the sampling; they differ only in whether clusters are drawn first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .clusters import Layer, cluster_view, live_filters, matches, resolve_output_layer
from .config import EncodingConfig, factor_at
from .graph import ChannelGroup

_BISECT_STEPS = 100


def survival_probability(strength: torch.Tensor, factor: float, normalization: str
                         ) -> torch.Tensor:
    """Probabilities for the live items of one layer (synapses or clusters), in float64.

    ``max``: ``Z = max / ln 2`` so the strongest item survives with probability ``factor``.
    ``budget``: ``Z`` chosen by bisection so that the mean probability equals ``factor``;
    the mean falls monotonically as ``Z`` grows, which makes bisection exact enough.
    """
    x = strength.detach().to(torch.float64).cpu()
    if x.numel() == 0:
        return x
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


@dataclass
class LayerProbabilities:
    cluster: torch.Tensor | None  # per cluster (dead clusters: 0); None: no cluster draw
    synapse: torch.Tensor  # weight-shaped (dead synapses: 0)


class Encoding:
    """The synaptic (Darwin) encoding; subclasses add a cluster draw."""

    def __init__(self, cfg: EncodingConfig, layers: dict[str, Layer],
                 ties: list[ChannelGroup] = ()):
        self.cfg = cfg
        self.layers = layers
        self.output_layer = resolve_output_layer(layers, cfg.output_layer)
        self.ties = list(ties)  # channels written by several layers (residual additions)
        self._order = {name: i for i, name in enumerate(layers)}

    def factors(self, name: str, generation: int) -> tuple[float, float]:
        """(F_s, F_c) of a layer in a generation: the first matching layer pattern, else the
        global factors."""
        syn, clu = self.cfg.synapse_factor, self.cfg.cluster_factor
        for pattern, lf in self.cfg.layers.items():
            if matches(name, [pattern]):
                syn = lf.synapse if lf.synapse is not None else syn
                clu = lf.cluster if lf.cluster is not None else clu
                break
        return factor_at(syn, generation), factor_at(clu, generation)

    def is_protected(self, name: str) -> bool:
        return self.cfg.protect_output and name == self.output_layer

    def synapse_probability(self, weight: torch.Tensor, mask: torch.Tensor, factor: float
                            ) -> torch.Tensor:
        p = torch.zeros(weight.shape, dtype=torch.float64)
        live = mask.cpu()
        p[live] = survival_probability(weight.detach().abs().cpu()[live], factor,
                                       self.cfg.normalization)
        return p

    def cluster_probability(self, weight: torch.Tensor, mask: torch.Tensor, layer: Layer,
                            factor: float) -> torch.Tensor | None:
        return None

    def probabilities(self, name: str, weight: torch.Tensor, mask: torch.Tensor,
                      generation: int) -> LayerProbabilities:
        f_s, f_c = self.factors(name, generation)
        layer = self.layers[name]
        clusters = None
        if not self.is_protected(name):
            clusters = self.cluster_probability(weight, mask, layer, f_c)
        return LayerProbabilities(clusters, self.synapse_probability(weight, mask, f_s))

    def sample(self, weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
               generation: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw an offspring's masks. Draws happen on the CPU in a fixed layer order, so the
        same generator state gives the same offspring on any device."""
        children, drawn = {}, {}
        for name in self.layers:
            parent = masks[name].cpu()
            probs = self.probabilities(name, weights[name], parent, generation)
            children[name] = parent & (torch.rand(parent.shape, generator=generator,
                                                  dtype=torch.float64) < probs.synapse)
            if probs.cluster is not None:
                drawn[name] = torch.rand(probs.cluster.shape, generator=generator,
                                         dtype=torch.float64) < probs.cluster
        tied = self.draw_tied(weights, masks, generation, generator, drawn)
        out = {}
        for name, child in children.items():
            if name in drawn:
                cluster_view(child, self.layers[name], self.cfg.granularity)[~drawn[name]] = False
            if self.is_protected(name):
                child = _keep_synapse(child, masks[name].cpu(), weights[name])
            elif name in tied:
                child = _keep_synapse(child, masks[name].cpu(), weights[name], tied[name])
            out[name] = child.to(masks[name].device)
        return out

    def draw_tied(self, weights, masks, generation, generator, drawn
                  ) -> dict[str, torch.Tensor]:
        """Overwrite ``drawn`` for filters tied across layers; return, per layer, the
        filters that must keep a synapse. The synaptic encoding draws no clusters."""
        return {}


class ClusterEncoding(Encoding):
    """Shafiee & Wong: a synapse survives only if its cluster and itself are drawn."""

    def cluster_probability(self, weight, mask, layer, factor):
        view_mask = cluster_view(mask, layer, self.cfg.granularity)
        strength = cluster_view(weight.detach().abs().cpu() * mask, layer,
                                self.cfg.granularity).sum(dim=1)
        live = view_mask.any(dim=1)
        p = torch.zeros(live.shape, dtype=torch.float64)
        p[live] = survival_probability(strength[live], factor, self.cfg.normalization)
        return p

    def draw_tied(self, weights, masks, generation, generator, drawn):
        """At filter granularity a channel that a residual addition ties across layers is
        one cluster: its strength is pooled over the layers that write it, it is drawn
        once, with the factor of its first writer, and it lives or dies in all of them."""
        keep: dict[str, torch.Tensor] = {}
        if self.cfg.granularity != "filter":
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
            p[live] = survival_probability(strength[live], self.factors(writers[0].module,
                                                                        generation)[1],
                                           self.cfg.normalization)
            alive = torch.rand(group.channels, generator=generator, dtype=torch.float64) < p
            for m in writers:
                drawn[m.module][m.idxs] = alive[m.root]
                rows = keep.setdefault(m.module, torch.zeros(len(drawn[m.module]),
                                                             dtype=torch.bool))
                rows[m.idxs] |= alive[m.root]
        return keep


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


def make_encoding(cfg: EncodingConfig, layers: dict[str, Layer],
                  ties: list[ChannelGroup] = ()) -> Encoding:
    return (ClusterEncoding if cfg.kind == "cluster" else Encoding)(cfg, layers, ties)
