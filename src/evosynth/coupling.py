"""Channel coupling between layers, from Torch-Pruning's dependency graph.

One place answers "which layers produce channel r, and which synapses read it": a filter
that dies takes its bias (and BatchNorm affine) with it and silences every synapse that
reads its channel; a channel that no live synapse reads takes its producing filters with
it. Without this, masks would count synapses that can only ever see zeros.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from .clusters import PRUNABLE_TYPES, Layer, live_filters
from .heads import HeadGroup, head_groups
from .inputs import call

# layers whose output depends on all channels together: removing one changes the others,
# so the channels they read are a boundary (never removed; their writers' filters live)
CHANNEL_MIXERS = tuple(t for t in (nn.LayerNorm, nn.GroupNorm, nn.MultiheadAttention,
                                   getattr(nn, "RMSNorm", None)) if t is not None)

# transposed convolutions are not evolved (their weight is (in, out, ...)); compaction still
# removes the dead channels that feed them
TRANSPOSED = nn.modules.conv._ConvTransposeNd


@dataclass
class Member:
    module: str
    role: str  # "out" (a prunable layer's filters), "in" (synapses reading), "aux" (BN etc.)
    idxs: torch.Tensor  # indices in that module's own channel axis
    root: torch.Tensor  # the group channel each index belongs to
    maskable: bool  # a masked prunable layer whose column ``idxs`` we may zero
    producer: str | None = None  # aux only: the layer whose output it normalizes, if direct


@dataclass
class ChannelGroup:
    channels: int
    root: tuple[nn.Module, object] | None = None  # (module, pruning fn) for Torch-Pruning
    members: list[Member] = field(default_factory=list)
    boundary: bool = False  # a normalization or attention mixes these channels

    def by_role(self, role: str) -> list[Member]:
        return [m for m in self.members if m.role == role]

    @property
    def tied(self) -> bool:
        """Several prunable layers write the same channels (a residual addition; a
        concatenation writes disjoint ones and is no tie). For compaction such a channel
        lives while any writer feeds it; at filter granularity evolution keeps the writers
        in agreement (``tied_alive``)."""
        writers = [m for m in self.by_role("out") if m.maskable]
        if len(writers) < 2:
            return False
        counts = torch.zeros(self.channels, dtype=torch.long)
        for m in writers:
            counts.index_add_(0, m.root, torch.ones(len(m.root), dtype=torch.long))
        return bool((counts > 1).any())


class Coupling:
    """Channel groups of a model, built once per architecture."""

    def __init__(self, groups: list[ChannelGroup], layers: dict[str, Layer], dg=None,
                 error: str | None = None, normalized: set[str] = frozenset(),
                 head_groups: list[HeadGroup] = ()):
        self.groups = groups
        self.layers = layers
        self.dg = dg  # the Torch-Pruning graph, bound to the model it was built on
        self.error = error  # why Torch-Pruning could not trace the model, if it could not
        # q/k/v attentions (heads.py): their heads leave by their own surgery, not the graph's
        self.head_groups = list(head_groups)
        projections = {n for h in self.head_groups for n in h.projections}
        self.normalized = set(normalized) - projections  # layers as wide as a normalization
        for g in groups:
            g.boundary |= any(m.module in self.normalized | projections
                              for m in g.by_role("out"))
        self._projections = projections

    @classmethod
    def build(cls, model: nn.Module, example_input: torch.Tensor, layers: dict[str, Layer]):
        """The channel groups of ``model``. Besides what Torch-Pruning's graph shows, a layer
        as wide as one of the model's normalizations (LayerNorm, RMSNorm, GroupNorm) is
        taken to write a normalized width: the graph of a transformer does not always reach
        its norms (its residual stream passes through ops Torch-Pruning maps loosely), and
        keeping a width whole is never wrong, removing from it always is."""
        normalized = _normalized_widths(model, layers)
        heads = head_groups(model, layers)
        names = {m: n for n, m in model.named_modules()}
        try:
            with torch.enable_grad():  # Torch-Pruning traces through autograd
                # through call(): an input of several tensors goes in by position or name
                dg = tp.DependencyGraph().build_dependency(model, example_input, verbose=False,
                                                           forward_fn=call)
            raw = list(dg.get_all_groups(root_module_types=PRUNABLE_TYPES))
        except Exception as exc:  # an op Torch-Pruning cannot trace: evolve without coupling
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            warnings.warn(f"no channel coupling ({why}); dead filters will not silence the "
                          "synapses that read them, and compaction is off", stacklevel=2)
            return cls([], layers, error=why, normalized=normalized, head_groups=heads)
        groups, skipped = [], []
        for g in raw:
            group = ChannelGroup(len(g[0].idxs), (g[0].dep.target.module, g[0].dep.handler))
            for item in g:
                module = item.dep.target.module
                name = names.get(module)
                if name is None or not isinstance(module, nn.Module):
                    continue  # functional ops (flatten, add, cat) carry indices only
                handler = item.dep.handler
                is_prunable = isinstance(module, PRUNABLE_TYPES)
                if dg.is_out_channel_pruning_fn(handler):
                    role = "out" if is_prunable else "aux"
                elif dg.is_in_channel_pruning_fn(handler) and (
                        is_prunable or isinstance(module, TRANSPOSED)):
                    role = "in"  # a transposed conv reads channels, unmasked (a boundary)
                else:
                    continue
                group.boundary |= isinstance(module, CHANNEL_MIXERS)
                maskable = name in layers and getattr(module, "groups", 1) == 1
                group.members.append(Member(name, role, torch.tensor(item.idxs),
                                            torch.tensor(item.root_idxs), maskable,
                                            _direct_producer(dg, module, names, layers)
                                            if role == "aux" else None))
            if all(_in_range(m, dict(model.named_modules())[m.module]) for m in group.members):
                groups.append(group)
            else:  # Torch-Pruning's index map does not fit the layers (seen: flatten + cat)
                skipped.append(names.get(group.root[0], "?"))
        if skipped:
            warnings.warn(f"channels of {', '.join(skipped[:3])} are not coupled (Torch-Pruning "
                          "mapped them outside the layers' sizes); they are evolved and kept "
                          "as if read by layers it cannot see", stacklevel=2)
        return cls(groups, layers, dg, normalized=normalized, head_groups=heads)

    def boundary_writers(self) -> set[str]:
        """Layers writing channels that a normalization or attention mixes: their filters
        must live (removing one channel would change every other channel's output)."""
        return self.normalized | {m.module for g in self.groups if g.boundary
                                  for m in g.by_role("out")
                                  if m.maskable and m.module not in self._projections}

    def ties(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.tied]

    def tied_channels(self, masks: dict[str, torch.Tensor]) -> tuple[int, int]:
        """(alive, total) channels of the tied groups: the residual streams' width."""
        ties = self.ties()
        alive = sum(int(self.channel_alive(g, masks).sum()) for g in ties)
        return alive, sum(g.channels for g in ties)

    def channel_alive(self, group: ChannelGroup, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """A group channel is alive while any producer (or an unmasked one) feeds it."""
        alive = torch.zeros(group.channels, dtype=torch.bool)
        for m in group.by_role("out"):
            if m.module in masks:
                f = live_filters(masks[m.module]).cpu()[m.idxs]
            else:
                f = torch.ones(len(m.idxs), dtype=torch.bool)
            alive[m.root[f]] = True
        return alive

    def channel_read(self, group: ChannelGroup, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """A group channel is read while any consumer has a live synapse on it. A channel
        with no prunable consumer (it leaves the network, or feeds an op we cannot see) is
        read by definition."""
        consumers = group.by_role("in")
        if not consumers or not all(m.maskable for m in consumers):
            return torch.ones(group.channels, dtype=torch.bool)
        read = torch.zeros(group.channels, dtype=torch.bool)
        for m in consumers:
            mask = masks[m.module]
            cols = mask.transpose(0, 1).reshape(mask.shape[1], -1).any(dim=1).cpu()
            read[m.root[cols[m.idxs]]] = True
        return read

    def tied_alive(self, group: ChannelGroup, masks: dict[str, torch.Tensor]) -> torch.Tensor:
        """A tied channel lives only in all of its writers at once. A writer with no live
        filter at all is a residual branch that died whole (its block is an identity) and
        has no say."""
        alive = self.channel_alive(group, masks)
        for m in group.by_role("out"):
            if m.maskable and m.module in masks:
                filters = live_filters(masks[m.module]).cpu()
                if bool(filters.any()):
                    own = torch.zeros(group.channels, dtype=torch.bool)
                    own[m.root[filters[m.idxs]]] = True
                    alive &= own
        return alive

    def propagate(self, masks: dict[str, torch.Tensor], protected: set[str] = frozenset(),
                  tie: bool = False) -> dict[str, torch.Tensor]:
        """Kill what dead filters make useless, both ways, until nothing changes. ``tie``:
        a channel tied across layers that died in one (live) writer dies in all of them."""
        masks = {k: v.clone() for k, v in masks.items()}
        changed = True
        while changed:
            changed = False
            for group in self.groups:
                alive = (self.tied_alive(group, masks) if tie and group.tied
                         else self.channel_alive(group, masks))
                alive &= self.channel_read(group, masks)
                if bool(alive.all()):
                    continue
                dead_root = ~alive
                for m in group.members:
                    if not m.maskable or m.role == "aux":
                        continue
                    if m.role == "out" and m.module in protected:
                        continue
                    sel = m.idxs[dead_root[m.root]]
                    if len(sel) == 0:
                        continue
                    mask = masks[m.module]
                    view = mask if m.role == "out" else mask.transpose(0, 1)
                    sel = sel.to(mask.device)
                    if bool(view[sel].any()):
                        view[sel] = False
                        changed = True
        return masks

    def param_masks(self, model: nn.Module, masks: dict[str, torch.Tensor]
                    ) -> dict[str, torch.Tensor]:
        """Masks for every parameter that must stay zero: weights, the biases of dead
        filters, and the affine parameters (BatchNorm) of dead channels. A dead filter whose
        bias or BatchNorm shift lived on would feed a constant to the next layer.

        A BatchNorm right after a prunable layer follows that layer's own filters, so a
        filter that died in one branch of a residual addition silences its BatchNorm channel
        even while the twin branch keeps the channel alive."""
        modules = dict(model.named_modules())
        out: dict[str, torch.Tensor] = {}
        for name, mask in masks.items():
            module = modules[name]
            if isinstance(module, nn.MultiheadAttention):
                out.update(_attention_masks(name, module, mask))
                continue
            out[f"{name}.weight"] = mask
            if getattr(module, "bias", None) is not None:
                out[f"{name}.bias"] = live_filters(mask)
        for group in self.groups:
            alive = self.channel_alive(group, masks)
            for m in group.by_role("aux"):
                module = modules[m.module]
                own = (live_filters(masks[m.producer]).cpu()[m.idxs]
                       if m.producer in masks else alive[m.root])
                if bool(own.all()):
                    continue
                for pname in ("weight", "bias"):
                    p = getattr(module, pname, None)
                    if isinstance(p, torch.Tensor) and p.dim() == 1:
                        key = f"{m.module}.{pname}"
                        pm = out.get(key, torch.ones(p.shape[0], dtype=torch.bool,
                                                     device=p.device)).clone()
                        pm[m.idxs.to(p.device)] &= own.to(p.device)
                        out[key] = pm
        return out


def _in_range(m: Member, module: nn.Module) -> bool:
    """A member's channel indices lie inside the module's own channel axis."""
    if len(m.idxs) == 0:
        return True
    weight = getattr(module, "weight", None)
    if m.role == "aux":
        size = weight.shape[0] if isinstance(weight, torch.Tensor) else int(m.idxs.max()) + 1
    elif m.role == "out":
        size = weight.shape[1] if isinstance(module, TRANSPOSED) else weight.shape[0]
    else:
        size = weight.shape[0] if isinstance(module, TRANSPOSED) else weight.shape[1]
    return int(m.idxs.max()) < size


def _normalized_widths(model: nn.Module, layers: dict[str, Layer]) -> set[str]:
    widths = set()
    for m in model.modules():
        if isinstance(m, nn.GroupNorm):
            widths.add(m.num_channels)
        elif isinstance(m, CHANNEL_MIXERS) and not isinstance(m, nn.MultiheadAttention):
            widths.add(int(m.normalized_shape[-1]))
    return {n for n, layer in layers.items()
            if layer.kind != "attention" and layer.shape[0] in widths}


def _attention_masks(name: str, module: nn.MultiheadAttention, mask: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
    """An attention's q/k/v synapses, the biases of its dead q/k/v rows, and the columns of
    its output projection that read a dead v row (they can only ever see zeros)."""
    e = module.embed_dim
    out = {f"{name}.in_proj_weight": mask}
    if module.in_proj_bias is not None:
        out[f"{name}.in_proj_bias"] = live_filters(mask)
    v_alive = live_filters(mask)[2 * e:]
    out[f"{name}.out_proj.weight"] = v_alive.reshape(1, e).expand(e, e).clone()
    return out


def _direct_producer(dg, module: nn.Module, names: dict[nn.Module, str],
                     layers: dict[str, Layer]) -> str | None:
    """The prunable layer whose output feeds ``module`` directly (conv -> BatchNorm)."""
    node = dg.module2node.get(module)
    inputs = [names.get(getattr(i, "module", None)) for i in (node.inputs if node else [])]
    return inputs[0] if len(inputs) == 1 and inputs[0] in layers else None
