"""Several parents, one offspring: who mates, and what the offspring inherits.

The parents of one run share the ancestor's architecture, so their synapses align index by
index. An offspring of m parents is sampled from one combined encoding:

- its masks start from the *union* of the parents' (a synapse dead in every parent stays
  dead; one alive in any parent may be passed on);
- a synapse's and a cluster's strength is the *mean* over the parents of its absolute weight
  (0 where it is dead), so what all parents keep strong is most likely to survive and what
  only one parent keeps is passed on at about 1/m of its strength;
- its weights (``evolution.mating``): ``fittest`` takes the fittest parent's, and where that
  parent had a synapse (or bias, or BatchNorm channel) dead, the mean of the other parents'
  live values; ``mean`` takes the mean of the parents' live values everywhere.

With one parent all three are that parent's own: single-parent synthesis is unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .breeding import Parent
    from .coupling import Coupling


def choose_parents(population: list[Parent], m: int, gen: torch.Generator) -> list[Parent]:
    """``m`` distinct parents by seeded tournaments of two (the fitter of two random
    members wins), fittest first. A population of at most ``m`` mates as a whole."""
    pool = sorted(population, key=lambda p: p.rank, reverse=True)
    if len(pool) <= m:
        return pool
    chosen: list[Parent] = []
    for _ in range(m):
        a, b = torch.randperm(len(pool), generator=gen)[:2].tolist()
        chosen.append(pool.pop(min(a, b)))  # the pool is sorted: the lower index is fitter
    return sorted(chosen, key=lambda p: p.rank, reverse=True)


def combine(parents: list[Parent], coupling: Coupling, template: torch.nn.Module,
            strength_keys: dict[str, str], rule: str
            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                       dict[str, torch.Tensor]]:
    """The parents' combined strengths (by module), masks (by layer) and the offspring's
    inherited state dict. ``parents`` come fittest first; ``strength_keys`` names each
    strength module's weight in the state dict."""
    first = parents[0]
    if len(parents) == 1:
        strengths = {n: first.state[key] for n, key in strength_keys.items()}
        return strengths, first.masks, first.state
    masks = {n: torch.stack([p.masks[n] for p in parents]).any(0) for n in first.masks}
    strengths = {n: torch.stack([p.state[key].abs() for p in parents]).mean(0)
                 for n, key in strength_keys.items()}
    live = [_liveness(p, coupling, template) for p in parents]
    masked = set().union(*live)
    state = {}
    for key, value in first.state.items():
        if not value.is_floating_point() or key not in masked:
            state[key] = value
            continue
        values = torch.stack([p.state[key] for p in parents])
        alive = torch.stack([lv.get(key, torch.ones(value.shape, dtype=torch.bool))
                             for lv in live]).to(values.dtype)
        donors, weights = (values[1:], alive[1:]) if rule == "fittest" else (values, alive)
        count = weights.sum(0)
        mean = (donors * weights).sum(0) / count.clamp(min=1)
        take = (count > 0) if rule == "mean" else (count > 0) & (alive[0] == 0)
        state[key] = torch.where(take, mean, value)
    return strengths, masks, state


def _liveness(parent: Parent, coupling: Coupling, template: torch.nn.Module
              ) -> dict[str, torch.Tensor]:
    """Which entries of a parent's masked tensors are alive; a BatchNorm's running
    statistics follow its scale."""
    pm = coupling.param_masks(template, parent.masks)
    live = {k: v.cpu().bool() for k, v in pm.items()}
    for key in list(live):
        module, _, pname = key.rpartition(".")
        if pname == "weight":
            for stat in ("running_mean", "running_var"):
                if f"{module}.{stat}" in parent.state and live[key].dim() == 1:
                    live[f"{module}.{stat}"] = live[key]
    return live
