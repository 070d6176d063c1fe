"""How a model describes its prunable channels: one form for every method.

A :class:`ModelSpec` lists

* the **gated tensors** (:class:`GatedTensor`): conv/BN outputs whose channels a gate may switch
  off. Each names its *slot* (``stem``, ``mid``, ``delta``, ``proj``, ``conv``, ``expand``,
  ``final``, ``mid1``/``mid2`` for bottlenecks; docs/decisions.md §0.3), the module whose output the gate
  multiplies (the BatchNorm after the conv), and the modules after which its binary mask must also
  be applied so that a dead channel is exactly zero downstream (a depthwise conv's BatchNorm would
  otherwise turn a zero into a constant);
* the **ops** (:class:`Op`): every Conv2d/Linear (and average pool) with the gated tensors it reads
  and writes. An op reading several tensors reads their *union*: this is how residual additions tie
  channels together (a trunk channel is alive if any of its contributors is alive).

Spatial sizes come from tracing one forward pass at the model's reference input size. Counters,
structures, the budget solver and physical compaction all read this one description.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn


@dataclass(frozen=True)
class GatedTensor:
    """A conv output whose channels can be gated.

    Attributes:
        name: unique id, e.g. ``"layer2.3.mid"``.
        slot: role in the network (docs/decisions.md §0.3).
        channels: full number of channels.
        module: path of the module whose output the gate multiplies (usually a BatchNorm).
        conv: path of the conv that produces it (a per-instance gate reads this conv's input).
        stage, block: position (-1 where not applicable).
        mask_modules: further modules after which the binary alive mask is applied.
        block_input: for a ``delta`` in a prunable trunk, the tensors whose union is the block's
            input. In *regular* residual accounting the delta is counted at the width of
            ``union(block_input) | alive(delta)`` (docs/decisions.md §4.4, B16). Empty: the trunk is fixed.
        trunk: id of the residual trunk this tensor is added into (``None``: not a contributor).
        area: H*W of the tensor at the reference input size (filled by tracing).
    """

    name: str
    slot: str
    channels: int
    module: str
    conv: str
    stage: int = -1
    block: int = -1
    mask_modules: tuple[str, ...] = ()
    block_input: tuple[str, ...] = ()
    trunk: str | None = None
    area: int = 0


@dataclass(frozen=True)
class Op:
    """A Conv2d, Linear or pooling module and the channels it touches.

    ``reads``: gated tensors whose union of alive channels is this op's input (empty: all
    ``in_channels``). ``writes``: the gated tensor it produces (``None``: all ``out_channels``).
    A depthwise conv reads and writes the same tensor. ``bn`` is the BatchNorm sliced with the output.
    """

    name: str
    kind: str  # "conv" | "linear" | "pool"
    in_channels: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = False
    reads: tuple[str, ...] = ()
    writes: str | None = None
    bn: str | None = None
    depthwise: bool = False
    in_hw: tuple[int, int] = (1, 1)
    out_hw: tuple[int, int] = (1, 1)


@dataclass
class ModelSpec:
    """Gated tensors and ops of one model at one input size."""

    model: str
    tensors: list[GatedTensor]
    ops: list[Op]
    input_size: tuple[int, int, int] = (3, 32, 32)
    family: str = ""
    extra_params: int = 0  # parameters outside conv/linear/BN (rare; kept so totals match)
    slot_sets: dict = field(default_factory=dict)  # default gate placements, from the model registry
    _by_name: dict = field(default_factory=dict, repr=False)

    def __post_init__(self):
        self._by_name = {t.name: t for t in self.tensors}
        if len(self._by_name) != len(self.tensors):
            raise ValueError(f"duplicate gated tensor names in spec of {self.model}")

    def tensor(self, name: str) -> GatedTensor:
        try:
            return self._by_name[name]
        except KeyError:
            from ..errors import UnknownNameError

            raise UnknownNameError("gated tensor", name, self._by_name) from None

    def default_slots(self, kind: str) -> tuple:
        """The slots of placement ``kind`` (``"internal"`` or ``"outputs"``) the model declares."""
        if kind not in self.slot_sets:
            from ..errors import ConfigError

            raise ConfigError(f"model {self.model} declares no {kind!r} gate slots; set method.slots "
                              f"(one of {self.slots()})")
        return tuple(self.slot_sets[kind])

    def __contains__(self, name) -> bool:
        return name in self._by_name

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]

    def slots(self) -> list[str]:
        """Slot kinds present in this model, in order of appearance."""
        return list(dict.fromkeys(t.slot for t in self.tensors))

    def select(self, slots=None) -> list[GatedTensor]:
        """Gated tensors whose slot is in ``slots`` (all when ``None``)."""
        if slots is None:
            return list(self.tensors)
        slots = (slots,) if isinstance(slots, str) else tuple(slots)
        unknown = set(slots) - set(self.slots())
        if unknown:
            from ..errors import ConfigError

            raise ConfigError(f"model {self.model} has no gate slot(s) {sorted(unknown)}; "
                              f"its slots are {self.slots()}")
        return [t for t in self.tensors if t.slot in slots]

    def trunks(self) -> dict[str, list[str]]:
        """Residual trunks: trunk id -> the gated tensors added into it, in order."""
        out: dict[str, list[str]] = {}
        for t in self.tensors:
            if t.trunk is not None:
                out.setdefault(t.trunk, []).append(t.name)
        return out


def trace_shapes(model: nn.Module, spec: ModelSpec) -> ModelSpec:
    """Fill spatial sizes (tensor areas, op in/out sizes) by one forward pass on zeros."""
    shapes: dict[str, tuple] = {}
    modules = dict(model.named_modules())
    wanted = {op.name for op in spec.ops} | {t.module for t in spec.tensors}
    handles = []
    for name in wanted:
        if name not in modules:
            raise KeyError(f"spec of {spec.model} names module {name!r}, which the model lacks")

        def hook(mod, inp, out, name=name):
            shapes[name] = (tuple(inp[0].shape), tuple(out.shape))

        handles.append(modules[name].register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            p = next(model.parameters())
            model(torch.zeros(1, *spec.input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)

    def hw(shape):
        return (shape[2], shape[3]) if len(shape) == 4 else (1, 1)

    ops = []
    for op in spec.ops:
        inp, out = shapes[op.name]
        op = replace(op, in_hw=hw(inp), out_hw=hw(out))
        if op.kind == "pool":  # channels of a pool are those of its input
            op = replace(op, in_channels=inp[1], out_channels=inp[1])
        ops.append(op)
    tensors = []
    for t in spec.tensors:
        h, w = hw(shapes[t.module][1])
        tensors.append(replace(t, area=h * w))
    return ModelSpec(spec.model, tensors, ops, spec.input_size, spec.family, spec.extra_params, dict(spec.slot_sets))


def conv_op(model: nn.Module, name: str, reads=(), writes=None, bn=None) -> Op:
    """An :class:`Op` for the Conv2d or Linear module at ``name``."""
    m = model.get_submodule(name)
    if isinstance(m, nn.Conv2d):
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        if m.groups > 1 and not depthwise:
            raise NotImplementedError(f"grouped (non-depthwise) conv {name} is not supported")
        return Op(name, "conv", m.in_channels, m.out_channels, tuple(m.kernel_size), m.groups,
                  m.bias is not None, tuple(reads), writes, bn, depthwise)
    if isinstance(m, nn.Linear):
        return Op(name, "linear", m.in_features, m.out_features, (1, 1), 1, m.bias is not None,
                  tuple(reads), writes, bn)
    raise TypeError(f"{name} is a {type(m).__name__}, not a Conv2d or Linear")


def pool_op(model: nn.Module, name: str, reads=()) -> Op:
    """An average-pool op (counted only with ``count_pool=True``, PFS's convention)."""
    return Op(name, "pool", 0, 0, reads=tuple(reads))
