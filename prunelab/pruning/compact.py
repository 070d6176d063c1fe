"""Physical compaction: a plain, smaller ``nn.Module`` from a model and a structure.

Conv, BatchNorm and Linear weights are sliced to the alive channels; deterministic gate values are
folded into the BatchNorm (or conv, or linear) they follow. An op left without channels needs no
family code: one that writes none becomes :class:`EmptyOutput` (zeros of the right size), one that
reads none becomes :class:`ConstantOutput` (its bias, its BatchNorm folded in, at every position), and
its BatchNorm becomes ``nn.Identity``. A residual branch pruned to zero channels is thus removed, its
constant carried into the sum. Only a residual branch may lose every channel: a structure whose emptied
channels would make the network's output a constant is refused. What a model family needs beyond that
(residual blocks whose members keep different alive sets) is a :class:`FamilyCompaction` registered per
family: :mod:`.compact_resnet` for CIFAR ResNets and BAR's mixed-connectivity block.

Compaction is an eval-mode transformation: the compact model's outputs equal the gated (masked) model's
outputs in eval mode. :func:`compact` checks this on a random batch and raises :class:`CompactionError`
rather than return a network that differs.
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
from .gates import FixedGate, GatedModel, strip_gates
from .structure import Structure


# --------------------------------------------------------------------------------------------------
# slicing helpers


def _set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path``, in the training mode of the module it replaces."""
    parent, _, name = path.rpartition(".")
    owner = root.get_submodule(parent) if parent else root
    module.train(getattr(owner, name).training)
    setattr(owner, name, module)


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
    """Multiply the output channels of a BN (or of a conv or linear without BN) by gate values ``v``."""
    with torch.no_grad():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.affine:
            module.weight.mul_(v)
            module.bias.mul_(v)
        elif isinstance(module, (nn.Conv2d, nn.Linear)):
            module.weight.mul_(v.view(-1, *([1] * (module.weight.dim() - 1))))
            if module.bias is not None:
                module.bias.mul_(v)
        else:
            raise TypeError(f"cannot fold a gate into a {type(module).__name__}")


def _out_size(geometry, size):
    """Spatial output size of a conv with ``geometry`` (kernel, stride, padding, dilation) on ``size``."""
    kernel, stride, padding, dilation = geometry
    if padding == "same":
        return tuple(size)
    if padding == "valid":
        padding = (0,) * len(size)
    return tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                 for n, k, s, p, d in zip(size, kernel, stride, padding, dilation))


def _geometry(module: nn.Module):
    """What an op's output size depends on: a conv's (kernel, stride, padding, dilation); None for a linear."""
    if isinstance(module, nn.Conv2d):
        return (tuple(module.kernel_size), tuple(module.stride), module.padding, tuple(module.dilation))
    return None


class EmptyOutput(nn.Module):
    """A conv or linear whose every output channel is pruned: zeros of ``channels`` channels at the
    op's output size (0, or the width of the residual trunk the output is added into)."""

    def __init__(self, geometry, channels: int = 0):
        super().__init__()
        self.geometry, self.channels = geometry, int(channels)

    def forward(self, x):
        if self.geometry is None:  # linear: (..., features)
            return x.new_zeros((*x.shape[:-1], self.channels))
        return x.new_zeros((x.shape[0], self.channels, *_out_size(self.geometry, x.shape[2:])))

    def extra_repr(self):
        return f"channels={self.channels}"


class ConstantOutput(nn.Module):
    """A conv or linear whose every input channel is pruned: it reads zeros, so it outputs its bias
    (its BatchNorm folded in, eval mode) at every position; ``value`` (C,) is a buffer."""

    def __init__(self, geometry, value: torch.Tensor):
        super().__init__()
        self.geometry = geometry
        self.register_buffer("value", value.detach().clone())

    def forward(self, x):
        v = self.value.to(x.dtype)
        if self.geometry is None:
            shape, view = (*x.shape[:-1], v.numel()), (*([1] * (x.dim() - 1)), -1)
        else:
            size = _out_size(self.geometry, x.shape[2:])
            shape, view = (x.shape[0], v.numel(), *size), (1, -1, *([1] * len(size)))
        # a fresh tensor, not an expanded view: the network may add into it in place (out += identity)
        return v.view(view).expand(shape).clone()

    def extra_repr(self):
        return f"channels={self.value.numel()}"


def _constant_of(module: nn.Module, bn: nn.Module | None, out_idx) -> torch.Tensor:
    """What ``module`` (then ``bn``, eval mode) outputs on an all-zero input, for channels ``out_idx``."""
    n = module.weight.shape[0]
    w = module.weight
    b = module.bias.detach() if module.bias is not None else torch.zeros(n, device=w.device, dtype=w.dtype)
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        with torch.no_grad():
            if bn.running_mean is not None:
                b = (b - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
            else:  # batch statistics of a constant: every channel normalises to 0
                b = torch.zeros_like(b)
            if bn.affine:
                b = b * bn.weight + bn.bias
    return b if out_idx is None else b[out_idx]


# --------------------------------------------------------------------------------------------------
# compaction


class FamilyCompaction:
    """The architecture-specific part of compaction for one model family (registered by name).

    The generic engine slices every op of the spec and replaces ops left without channels (see the
    module docstring); it adds the members of a residual trunk as they are, so they must keep one alive
    set. A family whose blocks need more (CIFAR ResNets: option-A shortcuts, BAR's mixed-connectivity
    block) registers a subclass with :func:`register_family`.
    """

    def may_be_empty(self, op) -> bool:
        """Whether the family rebuilds ``op``'s block when it loses every input or output channel
        (otherwise the generic engine replaces it)."""
        return False

    def check_structure(self, spec: ModelSpec, alive: "_Alive", family: str) -> None:
        """Refuse a structure this family cannot build. Generic: the members of a residual trunk
        that keep channels keep the same ones (the sum is taken channel by channel, unscattered), and
        emptied tensors leave the network connected (:func:`_check_connected`)."""
        for trunk, members in spec.trunks().items():
            kept = [(n, alive.of(n)) for n in members if len(alive.of(n))]
            odd = next(((n, a) for n, a in kept[1:] if not np.array_equal(a, kept[0][1])), None)
            if odd is not None:
                (n0, a0), (n1, a1) = kept[0], odd
                what = (f"{n0} keeps {len(a0)} channels, {n1} {len(a1)}" if len(a0) != len(a1) else
                        f"{n0} and {n1} keep {len(a0)} channels, not the same ones")
                raise PrunelabError(f"structure keeps different channels in the members of residual trunk {trunk} "
                                    f"({what}); compaction of family {family!r} adds them channel by channel, so "
                                    f"every member keeps the same alive set (or none): select with "
                                    f"method.groups: trunk, or give the members one set")
        _check_connected(spec, alive)

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


def _family_name(spec: ModelSpec) -> str:
    # the spec's own family first: a traced spec (family "traced") names no registered model
    return spec.family or get_entry(spec.model).family


def family_compaction(spec: ModelSpec) -> FamilyCompaction:
    return _FAMILIES.get(_family_name(spec), FamilyCompaction())


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


def _check_connected(spec: ModelSpec, alive: _Alive) -> None:
    """Refuse a structure whose emptied tensors make the network's output a constant.

    An op reading only tensors without channels (or only constants) computes a constant. That is fine
    inside a residual branch, whose constant is added to a trunk still carrying the input; not where
    it reaches channels no gate describes (the classifier, a concatenation), which the check takes as
    the network's output. A tensor is constant when every op writing it is.
    """
    writers: dict = {}
    for op in spec.ops:
        if op.kind != "pool" and op.writes and not op.depthwise:
            writers.setdefault(op.writes, []).append(op)
    # constant tensor -> (the emptied tensors it comes from, the first op that reads only constants)
    const = {n: (n, None) for n in spec.names if len(alive.of(n)) == 0}

    def constant(op) -> bool:
        return op.kind != "pool" and bool(op.reads) and all(r in const for r in op.reads)

    changed = True
    while changed:
        changed = False
        for op in spec.ops:
            if not constant(op):
                continue
            which = ", ".join(dict.fromkeys(const[r][0] for r in op.reads))
            first = next((const[r][1] for r in op.reads if const[r][1]), op.name)
            if op.writes is None:
                raise PrunelabError(f"structure leaves no channel in {which}, which disconnects the network at "
                                    f"{first} (only a constant reaches {op.name}); keep at least one channel there "
                                    f"(only a residual branch may lose all its channels)")
            t = op.writes
            if t not in const and all(constant(w) for w in writers.get(t, [op])):
                const[t] = (which, first)
                changed = True


def _plain_copy(net: nn.Module) -> nn.Module:
    """A deep copy of ``net`` without gates, hooks or cached description."""
    new = copy.deepcopy(net)
    strip_gates(new)  # gate hooks and folded BNs belong to the gated model, not to the compact one
    for m in new.modules():
        m._forward_hooks.clear()
        m._forward_pre_hooks.clear()
    new.__dict__.pop("_prunelab_spec", None)
    return new


def compact(model: nn.Module, structure: Structure | None = None, check: bool = True) -> nn.Module:
    """Return a physically smaller copy of ``model`` that keeps only ``structure``'s alive channels.

    ``model`` is a dense model built by :func:`prunelab.models.create` (or described by tracing), or a
    :class:`GatedModel` (its gates' deterministic values are folded in, and the structure defaults to
    their alive sets). The input is not modified.

    ``check``: run the compact network and the masked model (the dense network with fixed gates holding
    the gate values times the structure's masks) in eval mode on one seeded random batch of 2, and
    raise :class:`CompactionError` if they differ or the compact network fails; ``check=False`` returns
    the network unchecked (for debugging such a failure).
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
    new = _plain_copy(net)
    device = next(new.parameters()).device
    alive = _Alive(spec, structure, device)
    family = family_compaction(spec)
    family.check_structure(spec, alive, _family_name(spec))

    for name, v in values.items():
        keep = torch.as_tensor(alive.of(name), dtype=torch.long, device=v.device)
        if not torch.all(v[keep] == 1):  # values on dead channels do not matter: they are sliced away
            _fold_gate(new.get_submodule(spec.tensor(name).module), v.to(device))

    trunks = spec.trunks()
    conv_bn = []
    for op in spec.ops:
        if op.kind == "pool":
            continue
        in_arr = alive.union(op.reads)
        out_arr = alive.of(op.writes) if op.writes else None
        module = new.get_submodule(op.name)
        in_idx = alive.idx(in_arr, op.in_channels) if in_arr is not None else None
        out_idx = alive.idx(out_arr, op.out_channels) if out_arr is not None else None
        if (in_arr is not None and len(in_arr) == 0) or (out_arr is not None and len(out_arr) == 0):
            if family.may_be_empty(op):
                continue  # e.g. an empty residual branch or projection: the family rebuilds its block
            bn = new.get_submodule(op.bn) if op.bn else None
            if out_arr is not None and len(out_arr) == 0:
                # zeros; added into a residual trunk, at the trunk's width (its other members share one set)
                trunk = spec.tensor(op.writes).trunk
                width = len(alive.union(trunks[trunk])) if trunk else 0
                _set_module(new, op.name, EmptyOutput(_geometry(module), width))
            else:  # reads zeros: outputs its bias (BN folded in) everywhere; a residual add carries it on
                _set_module(new, op.name, ConstantOutput(_geometry(module), _constant_of(module, bn, out_idx)))
            if op.bn:
                _set_module(new, op.bn, nn.Identity())
            continue
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
    if check:
        _check_equal(new, _masked(net, spec, structure, values), spec)
    return new


# --------------------------------------------------------------------------------------------------
# the self-check


class CompactionError(PrunelabError):
    """The compact network differs from the masked model it was made from (a bug in compaction)."""


def _masked(net: nn.Module, spec: ModelSpec, structure: Structure, values: dict) -> GatedModel:
    """The reference of :func:`compact`: a copy of ``net`` with fixed gates holding the gate values
    (1 where none) times the structure's 0/1 masks, applied as plain multiplies (``fuse_bn=False``)."""
    ref = _plain_copy(net)
    masks = structure.masks()
    gates = {}
    for n in dict.fromkeys([*values, *masks]):
        v = values[n].detach().float().cpu() if n in values else torch.ones(spec.tensor(n).channels)
        if n in masks:
            v = v * torch.as_tensor(masks[n], dtype=v.dtype)
        gates[n] = FixedGate(v)
    p = next(ref.parameters())
    return GatedModel(ref, gates, spec, fuse_bn=False).to(p.device)


def _outputs(out, label="output") -> list:
    """``(label, tensor)`` for every tensor of a model output (a tensor, or tuples, lists, dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [(label, out)]
    if isinstance(out, dict):
        return [x for k, v in out.items() for x in _outputs(v, f"{label}[{k!r}]")]
    if isinstance(out, (tuple, list)):
        return [x for i, v in enumerate(out) for x in _outputs(v, f"{label}[{i}]")]
    return []


class _ExactMath:
    """No autocast and no TF32 inside: the check compares float32 results at a tolerance of 1e-4."""

    def __enter__(self):
        self.flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        self.autocast = [torch.autocast(d, enabled=False) for d in ("cpu", "cuda") if d == "cpu" or
                         torch.cuda.is_available()]
        for a in self.autocast:
            a.__enter__()
        return self

    def __exit__(self, *exc):
        for a in reversed(self.autocast):
            a.__exit__(*exc)
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self.flags
        return False


def _check_equal(new: nn.Module, ref: nn.Module, spec: ModelSpec) -> None:
    """Raise :class:`CompactionError` unless ``new`` computes what ``ref`` computes (eval mode, one seeded
    random batch of 2, tolerance 1e-4 x (1 + max |ref|)); the global RNG and training flags are kept."""
    family = _family_name(spec)
    fix = (f"(model {spec.model}, family {family!r}); a bug in compaction: please report it with the model and "
           f"structure (compact(..., check=False) returns the network anyway, for debugging)")
    p = next(new.parameters())
    x = torch.randn(2, *spec.input_size, generator=torch.Generator().manual_seed(0)).to(p.device, p.dtype)
    flags = {m: m.training for m in new.modules()}
    try:
        new.eval(), ref.eval()
        with torch.no_grad(), _ExactMath():
            try:
                want = _outputs(ref(x))
            except Exception as e:  # noqa: BLE001 - any failure is one line
                raise CompactionError(f"compact() could not check its network: the masked model fails on a random "
                                      f"batch of shape {tuple(x.shape)} ({type(e).__name__}: {_first_line(e)}) "
                                      f"{fix}") from None
            try:
                got = _outputs(new(x))
            except Exception as e:  # noqa: BLE001
                raise CompactionError(f"compact() built a network whose forward pass fails ({type(e).__name__}: "
                                      f"{_first_line(e)}) {fix}") from None
    finally:
        for m, t in flags.items():
            m.training = t
    if [k for k, _ in got] != [k for k, _ in want]:
        raise CompactionError(f"compact() built a network whose outputs are {[k for k, _ in got]}, the masked "
                              f"model's {[k for k, _ in want]} {fix}")
    for (label, a), (_, b) in zip(got, want):
        if a.shape != b.shape:
            raise CompactionError(f"compact() built a network whose {label} has shape {tuple(a.shape)}, the masked "
                                  f"model's {tuple(b.shape)} {fix}")
        a, b = a.float(), b.float()
        tol = 1e-4 * (1 + float(b.abs().max())) if b.numel() else 0.0
        bad = ~torch.isclose(a, b, rtol=0.0, atol=tol, equal_nan=True)
        if bool(bad.any()):
            diff = float((a - b).abs()[bad].max())
            raise CompactionError(f"compact() built a network whose {label} differs from the masked model's by up "
                                  f"to {diff:.3g} (tolerance {tol:.3g}) on a random batch of 2 {fix}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return (lines[0] if lines else type(e).__name__)[:200]


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
    random/WM baselines) use it. A residual branch reduced to BN's constant (a :class:`ConstantOutput`)
    is stored as BN bias (conv bias where the op has no BN).
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
            if isinstance(c, ConstantOutput):  # zero weights and BN scale: the constant is the bias
                target = dense.get_submodule(op.bn) if op.bn else d
                if target.bias is not None:
                    target.bias[out_t] = c.value.detach().cpu()
                continue
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
