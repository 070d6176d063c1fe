"""Analytical cost counter: MACs, FLOPs, parameters and activation volume V.

One counter serves every method (methods.md §0.5). Conventions, always printed with the result:

* MAC = one multiply-accumulate. Conv: k_h*k_w*(C_in/groups)*C_out*H_out*W_out, plus
  C_out*H_out*W_out when the conv has a bias. Linear: in*out (+out with bias).
* FLOP = 2 x MAC (BAR, MorphNet). PFS and the usual "ResNet-56 = 125 M FLOPs" count MACs.
* BN, ReLU, additions and pooling are not counted (``count_pool=True`` adds 1 MAC per input element
  of average-pool modules, PFS's counter).
* Params include BN affine parameters; ``params_no_bn`` excludes them.
* V = sum over gated tensors of H*W*(alive channels) (methods.md §0.7).
* ``residual="mixed"`` counts each gated tensor at its own alive width (BAR's mixed-connectivity
  block). ``"regular"`` counts a block's delta at the width of the union of the block input and the
  delta, as a regular ResBlock must compute it (B16).

Cost is never measured by timing or by running a masked network densely.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch.nn as nn

from .models.spec import ModelSpec

RESIDUAL_MODES = ("mixed", "regular")


@dataclass
class Cost:
    """Counted costs. Values are ints, or arrays when per-instance widths were given."""

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
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in out.items()}

    def __str__(self) -> str:
        def fmt(x):
            return f"{float(np.mean(x)) / 1e6:,.2f} M"

        return (f"MACs {fmt(self.macs)} | FLOPs {fmt(self.flops)} | params {fmt(self.params)} "
                f"({fmt(self.params_no_bn)} without BN) | V {float(np.mean(self.volume)):,.0f}\n"
                f"[{self.convention}]")


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


class _Widths:
    """Alive widths of gated tensors and of unions of them (exact sets or prefix counts)."""

    def __init__(self, spec: ModelSpec, alive=None, widths=None):
        self.spec = spec
        self.masks = _alive_masks(spec, alive) if alive is not None else None
        self.counts = {} if widths is None else {k: np.asarray(v) for k, v in widths.items()}
        for k in self.counts:
            spec.tensor(k)  # unknown names raise
        self._cache: dict = {}

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
        else:  # widths keep the first n channels of each tensor: the union is the widest
            val = np.maximum.reduce([np.asarray(self.one(n)) for n in names])
        self._cache[names] = val
        return val

    def tensor_width(self, name: str, residual: str):
        t = self.spec.tensor(name)
        if residual == "regular" and t.block_input:
            return self.union(tuple(t.block_input) + (name,))
        return self.one(name)


def count(model_or_spec, structure=None, *, widths=None, residual: str = "mixed", count_pool: bool = False,
          include_fc: bool = True) -> Cost:
    """Count the costs of a dense model, of a pruned structure, or of given per-layer widths.

    Args:
        model_or_spec: a model built by :func:`prunelab.models.create`, or its spec.
        structure: a :class:`prunelab.pruning.Structure` (or a dict ``{tensor: alive indices or bool
            mask}``). Tensors it does not name are fully alive.
        widths: ``{tensor: count}`` instead of ``structure``: each tensor keeps its first ``count``
            channels. Counts may be arrays (e.g. one entry per test image for dynamic pruning);
            the results are then arrays of the same shape.
        residual: ``"mixed"`` or ``"regular"`` residual accounting (module docstring).
        count_pool: count average-pool modules (PFS's counter).
        include_fc: count linear layers.
    """
    from .models.registry import describe

    if residual not in RESIDUAL_MODES:
        raise ValueError(f"residual must be one of {RESIDUAL_MODES}, got {residual!r}")
    if structure is not None and widths is not None:
        raise ValueError("give structure or widths, not both")
    spec = model_or_spec if isinstance(model_or_spec, ModelSpec) else describe(model_or_spec)
    alive = getattr(structure, "alive", structure)
    w = _Widths(spec, alive=alive, widths=widths)
    macs = params = bn_params = 0
    per_op = []
    for op in spec.ops:
        n_in = w.union(op.reads) if op.reads else op.in_channels
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
            f"multiply-accumulates; FLOPs = 2 x MACs; BN/ReLU/adds not counted; params incl. BN affine; "
            f"V over {len(spec.tensors)} gated tensors; residual={residual}; input {spec.input_size}")
    return Cost(macs, params + bn_params + spec.extra_params, params + spec.extra_params, volume, conv, per_op, per_tensor)


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
