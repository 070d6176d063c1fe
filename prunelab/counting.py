"""Analytical cost counter: MACs, FLOPs, parameters and activation volume V.

One counter serves every method (docs/decisions.md §0.5). Conventions, always
printed with the result:

* MAC = one multiply-accumulate. Conv: k_h*k_w*(C_in/groups)*C_out*H_out*W_out, plus
  C_out*H_out*W_out when the conv has a bias. Linear: in*out (+out with bias).
* FLOP = 2 x MAC (BAR, MorphNet). PFS and the usual "ResNet-56 = 125 M FLOPs" count MACs.
* BN, ReLU, additions and pooling are not counted (``count_pool=True`` adds 1 MAC per input element
  of average-pool modules, PFS's counter; ``count_bn_relu=True`` adds 3 ops per output element of
  every conv followed by a BatchNorm, 2 for the BN and 1 for the ReLU, DDNP's resource convention).
* ``only_ops`` restricts MACs and params to some ops (DDNP's resource ratio counts only the convs of
  the blocks it prunes); V is unaffected.
* Params include BN affine parameters; ``params_no_bn`` excludes them.
* V = sum over gated tensors of H*W*(alive channels) (docs/decisions.md §0.7).
* ``residual="mixed"`` counts each gated tensor at its own alive width (BAR's mixed-connectivity
  block). ``"regular"`` is a regular ResBlock, where x + delta forces one channel set per residual
  trunk (stage): every trunk tensor (projection, stem, deltas) is counted at the union of the trunk's
  surviving contributors, and every conv reading the trunk reads that union; a removed branch (its
  ``mid`` or ``delta`` empty) counts 0 in V and in MACs (B16; see docs/decisions.md).
* In both modes, for CIFAR ResNets and BAR's WRN (``DEAD_BRANCH_FAMILIES``), a block whose ``delta`` keeps
  no channel has no branch in the compact network, so its ``mid`` counts 0 too (the conv writing it, its BN,
  its V): count() equals the compact network's measured MACs on every plan.

Torch path (differentiable counts). When any value of ``count(..., widths=...)`` is a
:class:`torch.Tensor` (soft or hard widths, any shape: a scalar, one entry per instance ``(B,)``,
...), the same formulas run in torch: every returned cost is a tensor of the broadcast shape of the
widths, on their device, differentiable with respect to them (costs are multilinear in the widths).
Integer widths give exactly the integer counts. The union of prefix widths is their maximum
(``union="max"``: the gradient goes to the widest contributor, split evenly on ties) or, optionally,
the smooth upper bound ``tau*logsumexp(w/tau)`` (``union="logsumexp"``). No value is read back to
the host on this path. :func:`soft_cost` returns one such tensor, for FLOPs/resource losses over
soft widths (DDNP's resource loss).

Cost is never measured by timing or by running a masked network densely.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from .errors import UnknownNameError
from .models.spec import ModelSpec

RESIDUAL_MODES = ("mixed", "regular")
UNION_MODES = ("max", "logsumexp")
METRICS = ("macs", "flops", "params", "params_no_bn", "volume")


class UnknownTensorError(UnknownNameError, ValueError):
    """A width or mask names a tensor the spec does not have (a KeyError and a ValueError)."""


@dataclass
class Cost:
    """Counted costs: ints; numpy arrays when per-instance widths were given; torch tensors (with
    gradients to the widths) when widths were torch tensors."""

    macs: float
    params: float
    params_no_bn: float
    volume: float
    convention: str
    per_op: list[dict] = field(default_factory=list, repr=False)
    per_tensor: list[dict] = field(default_factory=list, repr=False)

    @property
    def flops(self):
        """FLOPs = 2 x MACs."""
        return 2 * self.macs

    def as_dict(self) -> dict:
        out = {"macs": self.macs, "flops": self.flops, "params": self.params, "params_no_bn": self.params_no_bn,
               "volume": self.volume, "convention": self.convention}

        def plain(v):
            if isinstance(v, torch.Tensor):
                return v.detach().cpu().tolist()
            return v.tolist() if isinstance(v, np.ndarray) else v

        return {k: plain(v) for k, v in out.items()}

    def __str__(self) -> str:
        def mean(x):
            if isinstance(x, torch.Tensor):
                return float(x.detach().double().mean().cpu())
            return float(np.mean(x))

        def fmt(x):
            return f"{mean(x) / 1e6:,.2f} M"

        return (f"MACs {fmt(self.macs)} | FLOPs {fmt(self.flops)} | params {fmt(self.params)} "
                f"({fmt(self.params_no_bn)} without BN) | V {mean(self.volume):,.0f}\n"
                f"[{self.convention}]")


def _check_name(spec: ModelSpec, name) -> None:
    if name not in spec:
        raise UnknownTensorError("gated tensor", name, spec.names)


def _alive_masks(spec: ModelSpec, alive) -> dict[str, np.ndarray]:
    masks = {}
    for name, idx in (alive or {}).items():
        t = spec.tensor(name)
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (t.channels,):
                raise ValueError(f"mask of {name} has shape {idx.shape}, expected ({t.channels},)")
            masks[name] = idx
        else:
            m = np.zeros(t.channels, dtype=bool)
            if idx.size and (idx.min() < 0 or idx.max() >= t.channels):
                raise ValueError(f"alive indices of {name} out of range [0, {t.channels})")
            m[idx.astype(np.int64)] = True
            masks[name] = m
    return masks


class _TorchFormat:
    """dtype, device and broadcast shape of the torch path."""

    def __init__(self, values, force: bool = False):
        tensors = [v for v in values if isinstance(v, torch.Tensor)]
        self.active = bool(tensors) or force
        if not self.active:
            return
        devices = {v.device for v in tensors}
        if len(devices) > 1:
            raise ValueError(f"width tensors are on several devices {sorted(map(str, devices))}; put them on one")
        self.device = tensors[0].device if tensors else torch.device("cpu")
        floating = [v.dtype for v in tensors if v.is_floating_point()]
        if floating:  # at least float32: float16 overflows at 65504, and counts reach 1e10
            self.dtype = functools.reduce(torch.promote_types, floating + [torch.float32])
        else:  # integer widths: float64 keeps counts exact (below 2**53)
            self.dtype = torch.float64
        shapes = [tuple(np.shape(v)) for v in values]
        try:
            self.shape = torch.broadcast_shapes(*shapes) if shapes else torch.Size(())
        except RuntimeError:
            raise ValueError(f"width shapes {shapes} do not broadcast to one shape") from None

    def tensor(self, v) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            return v.to(device=self.device, dtype=self.dtype)
        return torch.as_tensor(np.asarray(v), dtype=self.dtype, device=self.device)

    def result(self, v) -> torch.Tensor:
        return torch.broadcast_to(self.tensor(v), self.shape)


def _widen(a: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iub":
        return a.astype(np.int64)
    return a.astype(np.float64) if a.dtype.kind == "f" else a


# model families whose compaction removes a residual block's convs when its delta keeps no channel
DEAD_BRANCH_FAMILIES = ("resnet_cifar",)


class _Widths:
    """Alive widths of gated tensors and of unions of them (exact sets or prefix counts)."""

    def __init__(self, spec: ModelSpec, alive=None, widths=None, union: str = "max",
                 union_temperature: float = 1.0, force_torch: bool = False):
        self.spec = spec
        self.masks = _alive_masks(spec, alive) if alive is not None else None
        widths = {} if widths is None else dict(widths)
        for k in widths:
            _check_name(spec, k)
        self.fmt = _TorchFormat(list(widths.values()), force=force_torch and self.masks is None)
        if self.fmt.active:
            self.counts = {k: self.fmt.tensor(v) for k, v in widths.items()}
        else:
            # small integer dtypes (int16 logs of per-instance widths) would overflow in the products
            self.counts = {k: _widen(np.asarray(v)) for k, v in widths.items()}
        self.union_mode = union
        self.tau = union_temperature
        self._cache: dict = {}
        # each residual delta's block mid (a branch is removed when either set is empty)
        mids = {(t.stage, t.block): t.name for t in spec.tensors if t.slot == "mid"}
        self._mid_of = {t.name: mids[(t.stage, t.block)] for t in spec.tensors
                        if t.slot == "delta" and t.trunk is not None and (t.stage, t.block) in mids}
        # the compaction of these families builds no branch for a block whose delta keeps no channel
        # (compact_resnet.py): its mid is then computed by nothing and counts 0 (the conv writing it, its
        # BN, its V), so that count() equals the compact network's measured MACs
        self._delta_of = ({mids[(t.stage, t.block)]: t.name for t in spec.tensors
                           if t.slot == "delta" and (t.stage, t.block) in mids}
                          if spec.family in DEAD_BRANCH_FAMILIES else {})

    def one(self, name: str):
        t = self.spec.tensor(name)
        if self.masks is not None:
            m = self.masks.get(name)
            return t.channels if m is None else int(m.sum())
        return self.counts.get(name, t.channels)

    def union(self, names: tuple[str, ...]):
        if len(names) == 1:
            return self.one(names[0])
        if names in self._cache:
            return self._cache[names]
        if self.masks is not None:
            c = self.spec.tensor(names[0]).channels
            acc = np.zeros(c, dtype=bool)
            for n in names:
                m = self.masks.get(n)
                acc |= np.ones(c, dtype=bool) if m is None else m
            val = int(acc.sum())
        else:
            val = self._prefix_union([self.one(n) for n in names])
        self._cache[names] = val
        return val

    def _prefix_union(self, widths):
        """Union of prefix widths (each tensor keeps its first n channels): the widest, or its smooth
        upper bound ``tau*logsumexp(w/tau)``; torch or numpy as the widths are."""
        if self.fmt.active:
            w = torch.stack(torch.broadcast_tensors(*[self.fmt.tensor(v) for v in widths]))
            return w.amax(0) if self.union_mode == "max" else self.tau * torch.logsumexp(w / self.tau, 0)
        vals = [np.asarray(v) for v in widths]
        if self.union_mode == "max":
            return functools.reduce(np.maximum, vals)
        w = np.stack(np.broadcast_arrays(*vals)).astype(np.float64) / self.tau
        return self.tau * np.logaddexp.reduce(w, axis=0)

    def survives(self, name: str):
        """Whether ``name``'s residual branch is kept: a ``delta`` whose own set or whose block's ``mid``
        set is empty belongs to a removed branch (B10); any other tensor survives. A bool for exact sets
        and integer widths, an indicator array/tensor for per-instance or torch widths."""
        mid = self._mid_of.get(name)
        if mid is None:
            return True
        a, b = self.one(name), self.one(mid)
        if self.fmt.active:
            return ((self.fmt.tensor(a) > 0) & (self.fmt.tensor(b) > 0)).to(self.fmt.dtype)
        if np.ndim(a) or np.ndim(b):
            return (np.asarray(a) > 0) & (np.asarray(b) > 0)
        return bool(a > 0 and b > 0)

    def trunk_width(self, trunk: str):
        """A regular block's trunk width: one channel set per residual trunk (stage), the union of
        every surviving contributor (x + delta forces the block input and every delta onto one set)."""
        key = ("trunk", trunk)
        if key in self._cache:
            return self._cache[key]
        members = self.spec.trunks()[trunk]
        if self.masks is not None:
            c = self.spec.tensor(members[0]).channels
            acc = np.zeros(c, dtype=bool)
            for n in members:
                if self.survives(n):
                    m = self.masks.get(n)
                    acc |= np.ones(c, dtype=bool) if m is None else m
            val = int(acc.sum())
        elif self.fmt.active:
            val = self._prefix_union([self.fmt.tensor(self.one(n)) * self.survives(n) for n in members])
        else:
            val = self._prefix_union([np.asarray(self.one(n)) * self.survives(n) for n in members])
        self._cache[key] = val
        return val

    def tensor_width(self, name: str, residual: str):
        t = self.spec.tensor(name)
        delta = self._delta_of.get(name)
        if delta is not None:  # a mid whose block's delta is empty is dead code (see __init__)
            a, d = self.one(name), self.one(delta)
            if self.fmt.active:
                return self.fmt.tensor(a) * (self.fmt.tensor(d) > 0).to(self.fmt.dtype)
            if np.ndim(a) or np.ndim(d):
                return np.asarray(a) * (np.asarray(d) > 0)
            return a if d > 0 else 0
        if residual == "regular" and t.trunk is not None:
            s = self.survives(name)
            if isinstance(s, bool):
                return self.trunk_width(t.trunk) if s else 0
            return self.trunk_width(t.trunk) * s
        return self.one(name)

    def read_width(self, reads: tuple[str, ...], residual: str):
        """Channels an op reads: the union of the tensors it reads; in a regular block, a read of the
        residual trunk reads the trunk's one channel set."""
        if residual == "regular":
            trunks = {self.spec.tensor(n).trunk for n in reads}
            if len(trunks) == 1 and None not in trunks:
                return self.trunk_width(trunks.pop())
        return self.union(reads)


def count(model_or_spec, structure=None, *, widths=None, residual: str = "mixed", count_pool: bool = False,
          include_fc: bool = True, union: str = "max", union_temperature: float = 1.0, count_bn_relu: bool = False,
          only_ops=None) -> Cost:
    """Count the costs of a dense model, of a pruned structure, or of given per-layer widths.

    Args:
        model_or_spec: a model built by :func:`prunelab.models.create`, or its spec.
        structure: a :class:`prunelab.pruning.Structure` (or a dict ``{tensor: alive indices or bool
            mask}``). Tensors it does not name are fully alive.
        widths: ``{tensor: count}`` instead of ``structure``: each tensor keeps its first ``count``
            channels. Counts may be arrays (e.g. one entry per test image for dynamic pruning);
            the results are then arrays of the same shape. Counts may be torch tensors (float, soft
            or hard, any broadcastable shapes, one device): the costs are then torch tensors of the
            broadcast shape, differentiable with respect to the widths (module docstring).
        residual: ``"mixed"`` or ``"regular"`` residual accounting (module docstring).
        count_pool: count average-pool modules (PFS's counter).
        include_fc: count linear layers.
        count_bn_relu: add 3 ops (BN 2, ReLU 1) per output element of every conv with a BatchNorm to
            the MACs (DDNP's resource convention; the convention string says so).
        only_ops: op names (a collection) whose MACs and params are counted; None: every op.
        union: how prefix widths of several tensors combine (residual additions, regular blocks):
            ``"max"`` (exact: the widest) or ``"logsumexp"``: ``tau*log(sum(exp(w/tau)))``, a smooth
            upper bound within ``tau*ln(k)`` of the max of ``k`` widths (gradient to every
            contributor, weighted by softmax(w/tau)). A structure's unions are always exact sets.
        union_temperature: ``tau`` of ``union="logsumexp"``, in channels.

    Raises:
        ValueError: unknown residual/union mode, widths naming an unknown tensor
            (:class:`UnknownTensorError`, also a KeyError), widths that do not broadcast.
        CheckpointError: a structure of another model, or naming tensors, widths or alive channels
            that ``model_or_spec`` does not have (:meth:`Structure.check`, as :func:`compact` does).
    """
    return _count(model_or_spec, structure, widths=widths, residual=residual, count_pool=count_pool,
                  include_fc=include_fc, union=union, union_temperature=union_temperature,
                  count_bn_relu=count_bn_relu, only_ops=only_ops)


def _count(model_or_spec, structure=None, *, widths=None, residual="mixed", count_pool=False, include_fc=True,
           union="max", union_temperature=1.0, force_torch=False, count_bn_relu=False, only_ops=None) -> Cost:
    from .models.registry import describe

    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    if union not in UNION_MODES:
        raise ValueError(f"union must be one of {UNION_MODES}, got {union!r}")
    if union == "logsumexp" and not union_temperature > 0:
        raise ValueError(f"union_temperature must be > 0, got {union_temperature!r}")
    if structure is not None and widths is not None:
        raise ValueError("give structure or widths, not both")
    if structure is not None and union != "max":
        raise ValueError(f"union={union!r} applies to widths; a structure's unions are exact sets")
    spec = model_or_spec if isinstance(model_or_spec, ModelSpec) else describe(model_or_spec)
    if only_ops is not None:
        only_ops = set(only_ops)
        unknown = only_ops - {op.name for op in spec.ops}
        if unknown:
            raise ValueError(f"only_ops names ops {sorted(unknown)[:3]} that {spec.model} does not have")
    if hasattr(structure, "check"):  # a Structure: refused exactly where compaction refuses it (one line)
        structure.check(spec)
    alive = getattr(structure, "alive", structure)
    w = _Widths(spec, alive=alive, widths=widths, union=union, union_temperature=union_temperature,
                force_torch=force_torch)
    macs = params = bn_params = 0
    per_op = []
    for op in spec.ops:
        if only_ops is not None and op.name not in only_ops:
            continue
        n_in = w.read_width(op.reads, residual) if op.reads else op.in_channels
        n_out = w.tensor_width(op.writes, residual) if op.writes else op.out_channels
        hw = op.out_hw[0] * op.out_hw[1]
        kk = op.kernel[0] * op.kernel[1]
        if op.kind == "pool":
            m = n_in * op.in_hw[0] * op.in_hw[1] if count_pool else 0
            p = 0
        elif op.kind == "linear":
            m = (n_in * n_out + (n_out if op.bias else 0)) if include_fc else 0
            p = n_in * n_out + (n_out if op.bias else 0)
        elif op.depthwise:
            n_out = n_in if op.reads else n_out
            m = kk * n_out * hw + (n_out * hw if op.bias else 0)
            p = kk * n_out + (n_out if op.bias else 0)
        else:
            m = kk * n_in * n_out * hw + (n_out * hw if op.bias else 0)
            p = kk * n_in * n_out + (n_out if op.bias else 0)
        b = 2 * n_out if op.bn else 0
        if count_bn_relu and op.bn and op.kind == "conv":
            m = m + 3 * n_out * hw  # BN (2 ops) and ReLU (1 op) per output element
        macs, params, bn_params = macs + m, params + p, bn_params + b
        per_op.append({"name": op.name, "kind": op.kind, "n_in": n_in, "n_out": n_out, "macs": m, "params": p + b})
    per_tensor = []
    volume = 0
    for t in spec.tensors:
        n = w.tensor_width(t.name, residual)
        volume = volume + t.area * n
        per_tensor.append({"name": t.name, "slot": t.slot, "stage": t.stage, "block": t.block,
                           "channels": t.channels, "alive": n, "area": t.area, "volume": t.area * n})
    conv = (f"MACs = conv{' + linear' if include_fc else ''}{' + avg-pool' if count_pool else ''} "
            f"multiply-accumulates{' + 3 ops per BN/ReLU output element' if count_bn_relu else ''}; FLOPs = 2 x MACs; "
            f"{'' if count_bn_relu else 'BN/ReLU/'}adds not counted; params incl. BN affine; "
            + (f"only {len(only_ops)} ops; " if only_ops is not None else "")
            + f"V over {len(spec.tensors)} gated tensors; residual={residual}; input {spec.input_size}"
            + (f"; union=logsumexp(tau={union_temperature:g})" if union != "max" else ""))
    totals = (macs, params + bn_params + spec.extra_params, params + spec.extra_params, volume)
    if w.fmt.active:  # tensors of the broadcast shape, even where no given width enters a total
        totals = tuple(w.fmt.result(v) for v in totals)
    return Cost(*totals, conv, per_op, per_tensor)


def soft_cost(model_or_spec, widths, metric: str = "flops", residual: str = "mixed", *, union: str = "max",
              union_temperature: float = 1.0, count_pool: bool = False, include_fc: bool = True,
              count_bn_relu: bool = False, only_ops=None) -> torch.Tensor:
    """One cost of given (soft) widths as a differentiable torch tensor: FLOPs losses over soft widths.

    Used for resource losses over soft per-tensor widths (DDNP's resource loss): ``widths`` maps
    gated tensor names to float tensors (e.g. the sum of a layer's soft gates; scalars or one entry
    per instance); tensors not named are at full width. The counted formulas are those of
    :func:`count` (module docstring):

    * MAC of a conv = k_h*k_w*C_in*C_out*H_out*W_out (+ C_out*H_out*W_out with a bias); a depthwise
      conv: k_h*k_w*C*H_out*W_out (+bias term); a linear layer: in*out (+out with a bias);
    * FLOP = 2*MAC;
    * params = weights + biases + 2 per BN channel (+ the spec's ``extra_params``);
    * V = sum over gated tensors of H*W*(alive channels);

    where each C is the width of the tensor read or written, the union of several prefix widths is
    their max (``union="max"``) or ``tau*logsumexp(w/tau)`` (``union="logsumexp"``), and the residual
    rules are those of ``residual``. For integer widths the value equals :func:`count`'s.

    Args:
        model_or_spec: a model built by :func:`prunelab.models.create`, or its spec.
        widths: ``{tensor: width}``; numbers are converted to tensors (float64 unless a float tensor
            sets the dtype).
        metric: one of ``"macs"``, ``"flops"``, ``"params"``, ``"params_no_bn"``, ``"volume"``.
        residual, union, union_temperature, count_pool, include_fc, count_bn_relu, only_ops: as in
            :func:`count`.

    Returns:
        A tensor of the broadcast shape of the widths, on their device, differentiable w.r.t. them.

    Raises:
        ValueError: unknown metric, unknown tensor name (and the errors of :func:`count`).
    """
    if metric not in METRICS:
        raise ValueError(f"unknown cost metric {metric!r}; valid metrics: {', '.join(METRICS)}")
    if widths is None:
        widths = {}
    c = _count(model_or_spec, widths=widths, residual=residual, count_pool=count_pool, include_fc=include_fc,
               union=union, union_temperature=union_temperature, force_torch=True, count_bn_relu=count_bn_relu,
               only_ops=only_ops)
    return getattr(c, metric)


def ops_touching(spec: ModelSpec, names) -> list[str]:
    """The conv ops that write or read any of the gated tensors ``names`` (the "prunable blocks" whose
    cost DDNP's resource ratio counts: for a CIFAR ResNet's ``mid`` tensors, both convs of every block)."""
    names = set(names)
    return [op.name for op in spec.ops if op.kind == "conv" and (op.writes in names or names & set(op.reads))]


def block_ops_ratio(spec: ModelSpec, widths: dict) -> float:
    """DDNP's resource ratio R of integer ``widths`` (``{tensor: kept channels}``): the ops of the convs
    touching those tensors plus 3 ops per BN/ReLU output element, over the same at full width."""
    ops = ops_touching(spec, widths)
    dense = count(spec, count_bn_relu=True, only_ops=ops).macs
    return float(count(spec, widths=widths, count_bn_relu=True, only_ops=ops).macs) / float(dense)


def count_module_params(model: nn.Module) -> int:
    """Total number of parameters of a module (for cross-checks)."""
    return sum(p.numel() for p in model.parameters())


def measure_macs(model: nn.Module, input_size=(3, 32, 32)) -> dict:
    """MACs and params read off the modules a forward pass actually runs (hooks on Conv2d/Linear).

    Independent of any spec: used to check that a compact model costs what its structure says.
    """
    import torch

    total = {"macs": 0, "params": sum(p.numel() for p in model.parameters())}

    def conv_hook(m, inp, out):
        kk = m.kernel_size[0] * m.kernel_size[1]
        hw = out.shape[2] * out.shape[3]
        total["macs"] += kk * (m.in_channels // m.groups) * m.out_channels * hw + (m.out_channels * hw if m.bias is not None else 0)

    def lin_hook(m, inp, out):
        total["macs"] += m.in_features * m.out_features + (m.out_features if m.bias is not None else 0)

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(lin_hook))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total
