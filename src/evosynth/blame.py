"""Which layer to retire when a generation's every try fails: the one out of room.

The last failed try's masks are applied to the parent one layer at a time, untrained, and
scored on (up to ``SAMPLE``) validation examples. What a layer's cut cost, per filter
(neuron, channel) it lost, says how much each of its filters still carries: the layer
whose filters carry most is the one that ran out of room. Per filter, not in total, since
the environment cuts every layer by the same share: a wide layer loses many filters that
carry little and would be blamed for its size. Without validation data (ask/tell), a
filter's share of its layer stands for what it carries: the narrowest layer that lost
filters is blamed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from .breeding import Breeder, Parent
from .clusters import width
from .genome import apply_param_masks

SAMPLE = 4096


def filters_lost(parent: torch.Tensor, child: torch.Tensor) -> int:
    return width(parent) - width(child)


def cut_share(parent: torch.Tensor, child: torch.Tensor) -> float:
    """Share of a layer's live filters that the child lost."""
    before = width(parent)
    return filters_lost(parent, child) / before if before else 0.0


def damage(breeder: Breeder, parent: Parent, child: dict[str, torch.Tensor],
           layers: Iterable[str]) -> dict[str, float]:
    """Per layer of ``layers`` that the child cut: the parent's validation score minus its
    score with only that layer's cut (a share of lost filters without validation data)."""
    cut = [n for n in layers if not torch.equal(parent.masks[n].cpu(), child[n].cpu())]
    val = breeder.data.val if breeder.data is not None else None
    if val is None:
        return {n: cut_share(parent.masks[n], child[n]) for n in cut}
    if hasattr(val, "subset"):  # streamed data is scored whole
        val = val.subset(torch.arange(min(len(val), SAMPLE)))
    model = copy.deepcopy(breeder.model)

    def score(masks: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(parent.state)
        apply_param_masks(model, breeder.coupling.param_masks(model, masks))
        return breeder.task.evaluate(model, val, breeder.device)[0]

    base = score(parent.masks)
    return {n: base - score({**parent.masks, n: child[n]}) for n in cut}


def blame_order(breeder: Breeder, parent: Parent, child: dict[str, torch.Tensor],
                layers: Iterable[str]) -> list[str]:
    """``layers`` from most to least to blame: those the child cut by cost per filter lost
    (ties: the first), then the uncut ones, narrowest first (fewest live filters: where a
    death is the largest share of a layer). The first is the culprit; empty if nothing was
    cut. The loop retires the first whose retirement leaves the others room to evolve:
    when the culprit is the only layer with room, it evolves on alone rather than the
    cluster phase ending with it wide."""
    layers = list(layers)
    lost = damage(breeder, parent, child, layers)  # in the order of ``layers``
    if not lost:
        return []
    cost = {n: v / max(1, filters_lost(parent.masks[n], child[n])) for n, v in lost.items()}
    uncut = [n for n in layers if n not in cost]
    # sorted is stable: ties keep the order of ``layers``
    return (sorted(cost, key=lambda n: -cost[n])
            + sorted(uncut, key=lambda n: width(parent.masks[n])))
