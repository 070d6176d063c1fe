"""Physical compaction: a plain, smaller ``nn.Module`` from a model and a structure.

Conv, BatchNorm and Linear weights are sliced to the alive channels; deterministic gate values are
folded into the BatchNorm (or conv) they follow. What a model family needs beyond slicing (residual
blocks with different alive sets, empty branches) is a :class:`FamilyCompaction` registered per family:
:mod:`.compact_resnet` for CIFAR ResNets and BAR's mixed-connectivity block.

Compaction is an eval-mode transformation: the compact model's outputs equal the gated (masked) model's
outputs in eval mode.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import CheckpointError, PrunelabError
from ..models.registry import create, describe, get_entry
from ..models.spec import ModelSpec
from .gates import GatedModel, strip_gates
from .structure import Structure


# --------------------------------------------------------------------------------------------------
# slicing helpers


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)


def slice_conv(conv: nn.Conv2d, in_idx=None, out_idx=None) -> nn.Conv2d:
    """A new Conv2d keeping input channels ``in_idx`` and output channels ``out_idx`` (None: all)."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    if depthwise:
        idx = out_idx if out_idx is not None else in_idx
        if idx is not None:
            w, b = w[idx], (b[idx] if b is not None else None)
        n = w.shape[0]
        c_in, c_out, groups = n, n, n
    else:
        if conv.groups != 1:
            raise NotImplementedError("grouped convolutions other than depthwise are not supported")
        if out_idx is not None:
            w, b = w[out_idx], (b[out_idx] if b is not None else None)
        if in_idx is not None:
            w = w[:, in_idx]
        c_out, c_in, groups = w.shape[0], w.shape[1], 1
    new = nn.Conv2d(c_in, c_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, groups,
                    b is not None, conv.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def slice_bn(bn: nn.BatchNorm2d, idx) -> nn.BatchNorm2d:
    new = nn.BatchNorm2d(len(idx), bn.eps, bn.momentum, bn.affine, bn.track_running_stats,
                         device=bn.weight.device if bn.affine else None)
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[idx])
            new.bias.copy_(bn.bias[idx])
        if bn.track_running_stats:
            new.running_mean.copy_(bn.running_mean[idx])
            new.running_var.copy_(bn.running_var[idx])
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return new


def slice_linear(lin: nn.Linear, in_idx=None, out_idx=None) -> nn.Linear:
    w = lin.weight.detach()
    b = lin.bias.detach() if lin.bias is not None else None
    if out_idx is not None:
        w, b = w[out_idx], (b[out_idx] if b is not None else None)
    if in_idx is not None:
        w = w[:, in_idx]
    new = nn.Linear(w.shape[1], w.shape[0], b is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _fold_gate(module: nn.Module, v: torch.Tensor) -> None:
    """Multiply the output channels of a BN (or a conv without BN) by gate values ``v``."""
    with torch.no_grad():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.mul_(v)
            module.bias.mul_(v)
        elif isinstance(module, nn.Conv2d):
            module.weight.mul_(v.view(-1, 1, 1, 1))
            if module.bias is not None:
                module.bias.mul_(v)
        else:
            raise TypeError(f"cannot fold a gate into a {type(module).__name__}")


# --------------------------------------------------------------------------------------------------
# compaction


class FamilyCompaction:
    """The architecture-specific part of compaction for one model family (registered by name).

    The generic engine slices every op of the spec; a family whose blocks need more (CIFAR ResNets:
    empty branches, option-A shortcuts, BAR's mixed-connectivity block) registers a subclass with
    :func:`register_family`.
    """

    def may_be_empty(self, op) -> bool:
        """Whether ``op`` may lose every input or output channel (its block is rebuilt afterwards)."""
        return False

    def rebuild(self, new: nn.Module, spec: ModelSpec, alive: "_Alive") -> None:
        """Rewrite blocks of the sliced copy ``new`` in place."""

    def kept_conv_bn(self, new: nn.Module, pairs: list) -> list:
        """The (conv, bn) pairs that still exist after :meth:`rebuild`."""
        return pairs

    def expand_extra(self, dense: nn.Module, compact_model: nn.Module, alive: "_Alive") -> None:
        """Write what :meth:`rebuild` stored outside the sliced ops back into ``dense`` (see :func:`expand`)."""


_FAMILIES: dict[str, FamilyCompaction] = {}


def register_family(family: str):
    """Class decorator registering a :class:`FamilyCompaction` for models of ``family``."""

    def wrap(cls):
        _FAMILIES[family] = cls()
        return cls

    return wrap


def family_compaction(spec: ModelSpec) -> FamilyCompaction:
    # the spec's own family first: a traced spec (family "traced") names no registered model
    return _FAMILIES.get(spec.family or get_entry(spec.model).family, FamilyCompaction())


class _Alive:
    def __init__(self, spec: ModelSpec, structure: Structure, device):
        self.spec, self.s, self.device = spec, structure, device

    def of(self, name: str) -> np.ndarray:
        a = self.s.alive.get(name)
        return np.arange(self.spec.tensor(name).channels) if a is None else a

    def union(self, names) -> np.ndarray | None:
        """Sorted union of alive sets (None: the op reads a fixed, unpruned input)."""
        if not names:
            return None
        return np.unique(np.concatenate([self.of(n) for n in names]))

    def idx(self, arr, full: int):
        """LongTensor of ``arr``, or None when it is every channel in order."""
        if arr is None or (len(arr) == full and np.array_equal(arr, np.arange(full))):
            return None
        return torch.as_tensor(arr, dtype=torch.long, device=self.device)


def _positions(sub: np.ndarray, rep: np.ndarray) -> np.ndarray | None:
    """Positions of the sorted set ``sub`` inside the sorted set ``rep`` (None if identical)."""
    if np.array_equal(sub, rep):
        return None
    pos = np.searchsorted(rep, sub)
    if np.any(pos >= len(rep)) or not np.array_equal(rep[np.minimum(pos, len(rep) - 1)], sub):
        raise ValueError("internal error: a block's channels are not inside its trunk")
    return pos


def compact(model: nn.Module, structure: Structure | None = None) -> nn.Module:
    """Return a physically smaller copy of ``model`` that keeps only ``structure``'s alive channels.

    ``model`` is a dense model built by :func:`prunelab.models.create`, or a :class:`GatedModel`
    (its gates' deterministic values are folded in, and the structure defaults to their alive sets).
    The input is not modified.
    """
    if isinstance(model, GatedModel):
        if any(g.per_instance for _, g in model.items()):
            raise PrunelabError("dynamic (per-instance) gates cannot be compacted into one static network; "
                                "count their per-instance costs with prunelab.counting.count(widths=...)")
        net, spec = model.net, model.spec
        if structure is None:
            structure = Structure.from_gates(model)
        values = {n: g.values().detach().clone() for n, g in model.items()}
    else:
        net, spec, values = model, describe(model), {}
        if structure is None:
            structure = Structure.full(spec, names=[])
    structure.check(spec)
    if getattr(net, "prunelab_compact", False):
        raise PrunelabError("this model is already compact; compact the dense model instead")
    new = copy.deepcopy(net)
    strip_gates(new)  # gate hooks and folded BNs belong to the gated model, not to the compact one
    for m in new.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    new.__dict__.pop("_prunelab_spec", None)
    device = next(new.parameters()).device
    alive = _Alive(spec, structure, device)

    for name, v in values.items():
        t = spec.tensor(name)
        if not torch.all(v == 1):
            _fold_gate(new.get_submodule(t.module), v.to(device))

    family = family_compaction(spec)
    conv_bn = []
    for op in spec.ops:
        if op.kind == "pool":
            continue
        in_arr = alive.union(op.reads)
        out_arr = alive.of(op.writes) if op.writes else None
        if (in_arr is not None and len(in_arr) == 0) or (out_arr is not None and len(out_arr) == 0):
            if family.may_be_empty(op):
                continue  # e.g. an empty residual branch or projection: the family rebuilds its block
            which = op.writes if out_arr is not None and len(out_arr) == 0 else ", ".join(op.reads)
            raise PrunelabError(f"structure leaves no channel in {which}, which disconnects the network at "
                                f"{op.name}; keep at least one channel there")
        module = new.get_submodule(op.name)
        in_idx = alive.idx(in_arr, op.in_channels) if in_arr is not None else None
        out_idx = alive.idx(out_arr, op.out_channels) if out_arr is not None else None
        if op.kind == "linear":
            _set_module(new, op.name, slice_linear(module, in_idx, out_idx))
        else:
            _set_module(new, op.name, slice_conv(module, in_idx, out_idx))
        if op.bn:
            if out_idx is not None:
                _set_module(new, op.bn, slice_bn(new.get_submodule(op.bn), out_idx))
            conv_bn.append((op.name, op.bn))
    family.rebuild(new, spec, alive)
    conv_bn = family.kept_conv_bn(new, conv_bn)
    # a new network to fine-tune: every parameter trains, even where a method froze the dense one
    # (PFS and DDNP learn gates on frozen weights, and a deep copy keeps requires_grad=False)
    for p in new.parameters():
        p.requires_grad_(True)
    new.prunelab_name = spec.model
    new.prunelab_kwargs = dict(getattr(net, "prunelab_kwargs", {}))
    new.prunelab_compact = True
    new.prunelab_conv_bn = conv_bn
    return new


# --------------------------------------------------------------------------------------------------
# BatchNorm folding, saving and loading


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Return a copy with every BatchNorm folded into the conv before it (inference export).

    Works on dense models built by :func:`prunelab.models.create` and on compact models. Outputs equal
    the original's in eval mode (up to float rounding).
    """
    pairs = getattr(model, "prunelab_conv_bn", None)
    if pairs is None:
        pairs = [(op.name, op.bn) for op in describe(model).ops if op.bn]
    new = copy.deepcopy(model).eval()
    new.__dict__.pop("_prunelab_spec", None)
    for conv_name, bn_name in pairs:
        conv, bn = new.get_submodule(conv_name), new.get_submodule(bn_name)
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            w = conv.weight * scale.view(-1, 1, 1, 1)
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                              conv.dilation, conv.groups, True, conv.padding_mode, device=w.device, dtype=w.dtype)
            fused.weight.copy_(w)
            fused.bias.copy_(bias)
        _set_module(new, conv_name, fused)
        _set_module(new, bn_name, nn.Identity())
    new.prunelab_folded = True
    return new


def save_compact(model: nn.Module, structure: Structure, folder) -> Path:
    """Write ``plan.json`` (the structure) and ``weights.pt`` (state dict) of a compact model."""
    import io

    from ..utils import atomic_write_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    structure.save(folder / "plan.json")
    buf = io.BytesIO()
    torch.save({"format": "prunelab-compact-1", "model_name": structure.model, "state_dict": model.state_dict()}, buf)
    atomic_write_bytes(folder / "weights.pt", buf.getvalue())
    return folder


def load_compact(folder, map_location="cpu") -> nn.Module:
    """Rebuild a compact model from ``plan.json`` + ``weights.pt``: the registry builds the dense model,
    the plan compacts it, the weights fill it."""
    from ..runfiles import load_checkpoint

    folder = Path(folder)
    structure = Structure.load(folder / "plan.json")
    payload = load_checkpoint(folder / "weights.pt", map_location)
    if not isinstance(payload, dict) or not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{folder}/weights.pt is not a prunelab compact model (no state dict)")
    if payload.get("model_name") != structure.model:
        raise CheckpointError(f"{folder}/weights.pt holds model {payload.get('model_name')!r} but the plan is for "
                              f"{structure.model!r}")
    try:
        dense = create(structure.model, **structure.model_kwargs)
        structure.check(describe(dense))
        model = compact(dense, structure)
    except PrunelabError as e:
        raise CheckpointError(f"{folder}/plan.json does not describe a buildable model ({e})") from None
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{folder}/weights.pt does not fit its plan ({str(e).splitlines()[0][:160]})") from None
    return model.to(map_location).eval()


def expand(compact_model: nn.Module, structure: Structure) -> nn.Module:
    """The inverse of :func:`compact`: a dense model whose alive channels hold the compact weights.

    Dead channels get zero weights (and BN scale 0, bias 0), so ``compact(expand(c, s), s')`` for any
    ``s'`` inside ``s`` prunes an already-pruned network further: iterative pruning schemes (BAR's
    random/WM baselines) use it. A residual branch reduced to BN's constant is stored as BN bias.
    """
    dense = create(structure.model, **structure.model_kwargs)
    spec = describe(dense)
    structure.check(spec)
    alive = _Alive(spec, structure, "cpu")
    src = dict(compact_model.named_modules())
    with torch.no_grad():
        for op in spec.ops:
            if op.kind == "pool":
                continue
            d = dense.get_submodule(op.name)
            d.weight.zero_()
            if d.bias is not None:
                d.bias.zero_()
            if op.bn:
                bn = dense.get_submodule(op.bn)
                bn.weight.zero_(), bn.bias.zero_(), bn.running_mean.zero_(), bn.running_var.fill_(1.0)
            c = src.get(op.name)
            in_arr = alive.union(op.reads)
            out_arr = alive.of(op.writes) if op.writes else None
            out_t = torch.as_tensor(out_arr if out_arr is not None else np.arange(op.out_channels), dtype=torch.long)
            in_t = torch.as_tensor(in_arr if in_arr is not None else np.arange(op.in_channels), dtype=torch.long)
            if c is None or len(out_t) == 0 or len(in_t) == 0:
                continue
            w = c.weight.detach().cpu()
            if op.kind == "conv" and op.depthwise:
                d.weight[out_t] = w
            elif op.kind == "conv":
                d.weight[out_t[:, None], in_t[None, :]] = w
            else:
                d.weight[out_t[:, None], in_t[None, :]] = w
            if d.bias is not None:
                d.bias[out_t] = c.bias.detach().cpu()
            if op.bn and op.bn in src and isinstance(src[op.bn], nn.BatchNorm2d):
                sb, db = src[op.bn], dense.get_submodule(op.bn)
                db.weight[out_t], db.bias[out_t] = sb.weight.detach().cpu(), sb.bias.detach().cpu()
                db.running_mean[out_t], db.running_var[out_t] = sb.running_mean.cpu(), sb.running_var.cpu()
        family_compaction(spec).expand_extra(dense, compact_model, alive)
    return dense


from . import compact_resnet  # noqa: E402,F401  (registers the CIFAR ResNet family)
