"""Physical compaction: a masked network becomes a smaller dense one that computes the same.

Torch-Pruning removes channels consistently across coupled layers (BatchNorm, residual
adds, concatenation, flatten into Linear). A channel goes only when it is dead in every
layer that produces it, or when no live synapse reads it. A dead filter whose bias or
BatchNorm shift makes it emit a constant is folded into the next layer's bias first, so
the compact network computes exactly what the masked one did.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from . import heads
from .attention import dead_heads, shrink_heads
from .clusters import prunable_layers
from .coupling import CHANNEL_MIXERS, ChannelGroup, Coupling
from .errors import UserError
from .folding import add_bias, fold_delta
from .genome import Genome, apply_param_masks, weight_masks
from .heads import live_heads
from .inputs import as_double, call, map_tensors, probe_like
from .seeding import module_device

CONST_TOL = 1e-6
EXACT_RTOL = 1e-6  # compact vs masked outputs in float64, relative to the output's scale


class CompactionError(UserError):
    """Compaction would hand back a network that computes something else (or cannot be
    traced): refused, never silent."""


@dataclass
class Compacted:
    model: nn.Module
    masks: dict[str, torch.Tensor]  # the within-layer masks of the compact model
    removed: dict[str, int]  # channels removed, by the layer whose filters they were
    folded: int  # layers whose bias took in the constant output of dead channels
    # for every parameter and buffer: the flat index of each compact entry in the original
    index: dict[str, torch.Tensor]

    def compact_masks(self, param_masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Map full-model parameter masks onto the compact model's parameters."""
        return {n: m.flatten()[self.index[n].to(m.device)].reshape(self.index[n].shape)
                for n, m in param_masks.items() if n in self.index}

    def expand_into(self, full: nn.Module) -> None:
        """Write the compact model's values back into the full-shape model they came from
        (exact only when nothing was folded)."""
        src = dict(self.model.state_dict())
        with torch.no_grad():
            for name, t in full.state_dict().items():
                if name in self.index and t.dim() > 0:
                    t.view(-1)[self.index[name].flatten().to(t.device)] = src[name].flatten().to(
                        t.device)
                elif name in src:
                    t.copy_(src[name])


def _capture_inputs(model: nn.Module, names: set[str], example: torch.Tensor
                    ) -> dict[str, torch.Tensor]:
    modules = dict(model.named_modules())
    seen: dict[str, torch.Tensor] = {}
    hooks = [modules[n].register_forward_pre_hook(
        lambda mod, args, n=n: seen.__setitem__(n, args[0].detach())) for n in names]
    try:
        with torch.no_grad():
            call(model, example)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _constant_of(x: torch.Tensor, idxs: torch.Tensor) -> torch.Tensor | None:
    """The value each of a consumer's input channels ``idxs`` holds for every sample and
    position, or None if one of them varies (then it is no dead channel's output)."""
    sel = x[:, idxs].transpose(0, 1).reshape(len(idxs), -1)
    if bool(((sel.amax(1) - sel.amin(1)) > CONST_TOL * (1 + sel.abs().amax(1))).any()):
        return None
    return sel[:, 0]


def _removable(coupling: Coupling, group: ChannelGroup, masks, inputs, modules) -> torch.Tensor:
    """Boolean over the group's channels: which can leave the network. A removed channel
    that is dead but still read feeds a constant, folded here into its readers' biases."""
    consumers = group.by_role("in")
    if not consumers or group.boundary:  # the network's outputs; a normalized width
        return torch.zeros(group.channels, dtype=torch.bool)
    dead = ~coupling.channel_alive(group, masks)
    unread = ~coupling.channel_read(group, masks)
    remove = dead | unread
    if bool(remove.all()):  # a layer with no channel left: keep one so shapes stay valid
        remove[0] = False
    folds = []
    for m in consumers:
        sel = (remove & ~unread)[m.root]  # removed, yet read: its constant must be folded
        if not bool(sel.any()):
            continue
        idxs = m.idxs[sel]
        const = _constant_of(inputs[m.module], idxs)
        delta = None if const is None else fold_delta(modules[m.module], idxs, const)
        if delta is None:  # keep the constant channels; still drop what nobody reads
            return unread & remove
        if bool(delta.abs().gt(0).any()):
            folds.append((modules[m.module], delta))
    for layer, delta in folds:
        add_bias(layer, delta)
    return remove


def compact(model: nn.Module, example_input: torch.Tensor,
            masks: dict[str, torch.Tensor] | None = None, exclude: tuple[str, ...] = ()
            ) -> Compacted:
    """A compact copy of ``model`` (masked by ``masks``, else by its zeros); ``model`` itself
    is left alone. ``example_input`` is a batch of its inputs, on any device. Exact, or a
    ``CompactionError`` saying why: a failure inside the graph surgery (an op Torch-Pruning
    shrinks in a way the model's own code does not expect) is one too."""
    try:
        return _compact(model, example_input, masks, exclude)
    except CompactionError:
        raise
    except Exception as exc:
        why = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CompactionError(f"compaction and speed-ups are off for this model: removing "
                              f"its dead channels failed ({type(exc).__name__}: {why})"
                              ) from exc


def _compact(model: nn.Module, example_input: torch.Tensor,
             masks: dict[str, torch.Tensor] | None, exclude: tuple[str, ...]) -> Compacted:
    net = copy.deepcopy(model).eval()
    device = module_device(net)
    example_input = map_tensors(example_input, lambda t: t.to(device))
    layers = prunable_layers(net, exclude)
    if masks is not None:  # the masks name the evolved layers (a run's `exclude` left out)
        layers = {n: layer for n, layer in layers.items() if n in masks}
    modules = dict(net.named_modules())
    if masks is None:
        masks = Genome.from_weights(net, layers).masks
    apply_param_masks(net, weight_masks(masks, layers))
    coupling = Coupling.build(net, example_input, layers)
    if coupling.error:
        raise CompactionError(f"compaction and speed-ups are off for this model: "
                              f"Torch-Pruning cannot trace it ({coupling.error})")
    reference = copy.deepcopy(net)  # the masked network the compact one must equal
    # the twin holds each entry's flat index and goes through the same removals
    twin = copy.deepcopy(net).double()
    with torch.no_grad():
        for t in twin.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.arange(t.numel(), dtype=torch.float64).reshape(t.shape))
    twin_coupling = Coupling.build(
        twin, map_tensors(example_input, lambda t: t.double() if t.is_floating_point() else t),
        layers)

    inputs = _capture_inputs(net, {m.module for g in coupling.groups for m in g.by_role("in")},
                             example_input)
    biases = {n: (m.bias.detach().clone() if getattr(m, "bias", None) is not None else None)
              for n, m in modules.items() if n in layers}
    plan = [(g, tg, _removable(coupling, g, masks, inputs, modules))
            for g, tg in zip(coupling.groups, twin_coupling.groups, strict=True)]
    folded = sum(1 for n, b in biases.items()
                 if getattr(modules[n], "bias", None) is not None
                 and (b is None or not torch.equal(b, modules[n].bias.detach())))
    removed = {}
    for group, twin_group, remove in plan:
        idxs = torch.nonzero(remove).flatten().tolist()
        if not idxs:
            continue
        for dg, (root, fn) in ((coupling.dg, group.root), (twin_coupling.dg, twin_group.root)):
            dg.get_pruning_group(root, fn, idxs).prune(record_history=False)
        removed[next(n for n, m in modules.items() if m is group.root[0])] = len(idxs)
    for name, layer in layers.items():  # attention heads whose v rows all died
        if layer.kind != "attention":
            continue
        dead = dead_heads(masks[name], layer.heads)
        dead[0] &= not bool(dead.all())  # an attention keeps a head, so shapes stay valid
        if bool(dead.any()):
            folded += shrink_heads(net, twin, name, dead)
            removed[name] = int(dead.sum())
    for group in coupling.head_groups:  # q/k/v attentions: heads whose v rows all died
        dead = ~live_heads(group, masks)
        dead[0] &= not bool(dead.all())
        if bool(dead.any()):
            folded += heads.shrink(net, twin, group, dead)
            removed[group.module] = int(dead.sum())
    index = {n: t.round().long() for n, t in twin.state_dict().items()
             if t.is_floating_point()}
    out_masks = {n: masks[n].flatten()[index[layer.weight_key].to(masks[n].device)]
                 .reshape(index[layer.weight_key].shape) for n, layer in layers.items()}
    if removed:
        verify(reference, net, [example_input, probe_like(example_input)])
    return Compacted(net, out_masks, removed, folded, index)


def verify(reference: nn.Module, small: nn.Module, inputs: list[torch.Tensor]) -> None:
    """Refuse a compact network whose outputs differ from the masked one's, naming the
    first module (in forward order) where they part. Exactness is a property of the
    arithmetic, not of a device's rounding (TF32 on GPUs): both run in float64 on the CPU."""
    reference = copy.deepcopy(reference).cpu().double().eval()
    small = copy.deepcopy(small).cpu().double().eval()
    inputs = [as_double(x) for x in inputs]
    with torch.no_grad():
        for x in inputs:
            a, b = output_tensor(call(reference, x)), output_tensor(call(small, x))
            if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
                raise CompactionError("compaction cannot check this model's outputs (neither "
                                      "a tensor, a tuple starting with one, nor .logits)")
            scale = 1 + float(a.abs().max()) if a.numel() else 1.0
            if a.shape == b.shape and float((a - b).abs().max()) <= EXACT_RTOL * scale:
                continue
            diff = float((a - b).abs().max()) if a.shape == b.shape else math.inf
            where = _first_difference(reference, small, x)
            mixers = [f"{n} ({type(m).__name__})" for n, m in reference.named_modules()
                      if isinstance(m, CHANNEL_MIXERS)]
            raise CompactionError(
                f"compaction would change what the network computes (max difference "
                f"{diff:.2e}{', first seen at module ' + where if where else ''}); "
                + (f"{', '.join(mixers[:3])} mix channels in a way removal does not "
                   "preserve; " if mixers else "")
                + "exclude the layers that feed them (encoding.exclude), or evolve "
                "without compaction")


def output_tensor(out):
    """The tensor a model's output carries: itself, ``.logits`` (HF), or a tuple's first."""
    out = getattr(out, "logits", out)
    return out[0] if isinstance(out, (tuple, list)) and out else out


def _first_difference(reference: nn.Module, small: nn.Module, x: torch.Tensor) -> str | None:
    outs: list[dict[str, torch.Tensor]] = [{}, {}]
    order: list[str] = []
    hooks = []
    for k, net in enumerate((reference, small)):
        for name, m in net.named_modules():
            if name and not list(m.children()):
                def hook(mod, args, out, name=name, k=k):
                    if isinstance(out, torch.Tensor):
                        outs[k][name] = out.detach()
                        if k == 0:
                            order.append(name)
                hooks.append(m.register_forward_hook(hook))
    try:
        call(reference, x)
        call(small, x)
    finally:
        for h in hooks:
            h.remove()
    for name in order:
        a, b = outs[0][name], outs[1].get(name)
        if b is not None and a.shape == b.shape and float((a - b).abs().max()) > \
                EXACT_RTOL * (1 + float(a.abs().max())):
            return name
    return None
