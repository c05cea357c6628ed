"""The adaptive environment: each generation's pressure set from what the last one measured.

Pressure ``p`` is the expected share of live clusters that die in one generation (cluster
factor ``1 - p``); synapses and kernels inside the survivors die at a share of it. The law,
applied after every generation (all of it a pure function of the recorded history, so a
resumed run continues exactly):

- an offspring that keeps at least ``headroom`` of the allowed drop (ancestor - floor) in
  reserve makes the next environment harsher: ``p <- min(p * grow, max_pressure)``;
- one that holds the floor with less reserve makes it gentler: ``p <- p * ease``, unless
  the shortfall is within ``noise`` standard errors of the validation score (accuracy on
  ``n`` examples: ``sqrt(a (1 - a) / n)``): then ``p`` holds, since the score cannot tell
  that offspring from one that kept its reserve;
- one below the floor is discarded and the parent is sampled again at ``p * retreat`` (not
  below ``min_pressure``: a failure there may be the draw's bad luck), up to ``tries``
  times; if none holds, the run ends there, unless ``retire`` allows it to retire a layer:
  the layer whose cut (the last try's, applied alone to the parent, untrained) cost most
  validation score per filter it lost stops evolving (``blame.py``), and the generation is
  tried again (``tries`` more) with the others, from the first generation's pressure (they
  were not the ones failing). A network's layers do not run out of room at the same time;
  this lets the others go on after one of them has. With ``revisit``, a generation with
  no layer left to retire first brings back the layers retired in earlier generations for
  one more round of ``tries``, once per run;
- when clusters can no longer die (no try held, no layer left to retire), the run enters
  its kernel phase, if ``kernel_phase`` is on: the filters stay, and the kernels of every
  conv layer reading several channels die whole, each layer losing the pressure's share,
  from the first generation's pressure again, under the same law (the parent rule below
  included), until no try holds. A dead kernel is a kernel cluster a sparse convolution
  skips, and the synapse phase would only scatter deaths over kernels and kill none;
- then the run enters its synapse phase (``thin``): the clusters stay, and the synapses
  of the whole network (under ``global``, drawn by magnitude against one budget) take the
  pressure, from the first generation's again, under the same law, until no try holds.
  What dense hardware skips is settled by then; this thins what sparse kernels and
  storage skip. These phases begin with the reserve spent (that is why clusters stopped),
  so a reserve could only hold the pressure at its minimum there: in them, an offspring
  that lost nothing measurable against its parent (the shortfall within ``noise``
  standard errors) also makes the next environment harsher. ``parent_grows`` (an
  option, measured and not kept) applies that rule in the cluster phase too.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from .config import EnvironmentConfig
from .encoding import Environment


def factors(cfg: EnvironmentConfig, pressure: float, retired: Iterable[str] = (),
            synaptic: bool = False, phase: str = "clusters") -> Environment:
    """A generation's factors at ``pressure``. The synaptic encoding draws no clusters: its
    synapses take the whole pressure, not ``synapse_share`` of it. In the ``kernels`` phase
    no filter dies (factor 1) and the kernels of every conv layer, retired or not, take the
    whole pressure, a kernel at a time; in the ``synapses`` phase the synapses of every
    layer do, one by one."""
    if phase == "kernels":
        return Environment(cluster=1.0, synapse=1.0, kernel=1 - pressure,
                           max_pressure=cfg.max_pressure, kernel_unit=True)
    if phase == "synapses":
        return Environment(cluster=1.0, synapse=1 - pressure, kernel=1.0,
                           max_pressure=cfg.max_pressure)
    share = 1.0 if synaptic else cfg.synapse_share
    return Environment(cluster=1 - pressure, synapse=1 - pressure * share,
                       kernel=1 - pressure * cfg.kernel_share,
                       width_exponent=cfg.width_exponent, max_pressure=cfg.max_pressure,
                       retired=frozenset(retired))


def headroom(value: float, floor: float, ancestor: float) -> float:
    """Share of the allowed drop still in reserve (1: as good as the ancestor; < 0: below
    the floor); infinite without a floor."""
    if floor == -math.inf:
        return math.inf
    allowed = ancestor - floor
    return (value - floor) / allowed if allowed > 0 else (math.inf if value >= floor else -1)


def standard_error(value: float, n: int) -> float:
    """The standard error of an accuracy measured on ``n`` examples (0 when unknown)."""
    if n <= 0 or not 0 <= value <= 1:
        return 0.0
    return math.sqrt(value * (1 - value) / n)


def next_pressure(cfg: EnvironmentConfig, pressure: float, reserve: float,
                  error: float = 0.0, cost: float | None = None) -> float:
    """The pressure after an accepted generation that kept ``reserve`` (``headroom``), its
    score's standard error ``error`` in the same units (a share of the allowed drop).
    ``cost`` (synapse phase): what it lost against its parent, in the same units; a cost
    within ``noise`` standard errors of nothing also makes the next environment harsher."""
    if reserve >= cfg.headroom or (cost is not None and cost <= cfg.noise * error):
        return min(pressure * cfg.grow, cfg.max_pressure)
    if reserve + cfg.noise * error >= cfg.headroom:
        return pressure  # short of the headroom by less than the noise: hold
    return max(pressure * cfg.ease, cfg.min_pressure)


def retries(cfg: EnvironmentConfig, pressure: float) -> list[float]:
    """The pressures of a generation's ``tries``: the first, then each ``retreat`` times
    gentler, down to ``min_pressure``."""
    out = [pressure]
    while len(out) < cfg.tries:
        out.append(max(out[-1] * cfg.retreat, cfg.min_pressure))
    return out
