"""A model's :class:`~.spec.ModelSpec` found by tracing it (``torch.fx``), for models without a describer.

>>> from prunelab import models
>>> spec = models.describe(net, example_input=torch.randn(1, 3, 32, 32))   # any traceable nn.Module

:func:`describe_traced` traces ``model`` symbolically (``torch.fx``), runs ``example_input`` through
the graph once (eval mode, no gradients; shapes only) and follows the channel dimension (dim 1) of
every tensor. It builds the same kind of description the hand-written describers of the zoo give
(:mod:`.resnet_cifar`, :mod:`.vgg`, ...), so counting, structures, the budget solver and compaction
read it unchanged. Registered zoo models keep their hand-written describers
(:func:`prunelab.models.describe` uses tracing only for models the registry does not know).

Rules (what becomes a gated tensor)
-----------------------------------

* A *channel space* is one set of channels that several tensors share. A Conv2d (``groups=1``) or a
  Linear creates one; BatchNorm, zero-preserving element-wise activations (ReLU, ReLU6, LeakyReLU,
  ELU, SELU, CELU, GELU, SiLU, Mish, Hardswish, Hardtanh, Tanh, Softsign), dropout and torchvision's
  stochastic depth, identities, max/average/adaptive pooling, up-sampling, spatial padding, spatial
  slicing, means/sums over spatial dimensions and multiplication by a number keep it.
* **Gated tensors** are the outputs of the convs/linears (after their BatchNorm) of every *prunable*
  space: a space that convs/linears write, that a later Conv2d/Linear reads, and that none of the
  rules below fixes. The gate sits on the BatchNorm right after the conv (``GatedTensor.module``), or
  on the conv/linear itself when it has none.
* **Residual additions** (``a + b``, ``torch.add``, ``a - b``) put both operands in one space: every
  conv output added into it is a member of one *trunk* (``GatedTensor.trunk``, ids ``"stage1"``,
  ``"stage2"``... in order of appearance, as in the hand-written CIFAR ResNet spec), and an op reading
  the sum reads the union of the members summed so far. Blocks are recognised from the graph: the
  added conv output whose conv reads (through other convs) the block input is the ``delta``; a conv
  on the shortcut reading the block input is a ``proj``; the single-conv tensors between the block
  input and the delta are ``mid`` (``mid1``, ``mid2``... when there are several), named
  ``<block>.delta``, ``<block>.proj``, ``<block>.mid`` after the modules' common path prefix (the
  names of the hand-written CIFAR ResNet spec), with ``stage`` = the trunk's number and ``block`` = the
  addition's index in it. The output of the one conv reading the network input is ``stem``; any
  other trunk member is ``trunk``, and every other gated tensor ``conv`` (or ``linear``), named after
  its module path. Default placements (``ModelSpec.slot_sets``): ``"internal"`` = the slots none of
  whose tensors is in a trunk, ``"outputs"`` = every conv slot (hidden linear units, slot
  ``linear``, are gated only where ``method.slots`` names it, as no hand-written spec gates them by
  default). Naming never changes what is counted or compacted (reads, writes and trunks do); it is
  a best guess where blocks are unusual.
* **Depthwise convs** (``groups == in == out``) read and write the space of their input, as in the
  hand-written MobileNet spec: the op reads the input's members and writes the (first) member, and
  the depthwise conv's BatchNorm (or the conv itself) is added to that tensor's ``mask_modules`` (a
  switched-off channel would otherwise come back as BN's constant).
* **Channel scaling** ``x * s`` where ``s`` has the channels of ``x`` and a smaller spatial size
  (squeeze-excitation): ``s``'s producing conv writes ``x``'s tensor (it is sliced with it) but is
  not a gated tensor of its own; a 1-channel ``s`` (spatial attention) leaves ``x`` as it is.
* **Pooling and flattening into a linear head**: ``flatten``/``view``/``reshape`` of a ``(B, C, 1, 1)``
  map keep the channels. Average-pool *modules* become ``pool`` ops (counted with ``count_pool=True``;
  functional pools are not listed).
* Parameters outside convs, linears and their BatchNorms (a BatchNorm not right after a conv, PReLU)
  go to ``ModelSpec.extra_params``; the spaces they act on are fixed.

Fixed (not prunable, never an error): the network's input and output (classifier logits) and every
space reaching the output; the inputs and output of ``torch.cat`` on channels (the counter and
compaction have no notion of channel ranges inside one op's input; see below); channels zero-padded
by ``F.pad`` (an option-A shortcut) and the trunks around them; grouped convs' inputs and outputs
(``1 < groups``, not depthwise: counted with ``in_channels / groups``); a ``flatten`` of a
``C x H x W`` map with ``H*W > 1`` into a linear layer; spaces touched by a standalone BatchNorm,
a per-channel PReLU or a tensor attribute of the model, by a BatchNorm1d, or read by a conv/linear after
an op that turns a zero channel into a non-zero one (sigmoid, adding a constant); spaces no
conv/linear reads.

Refused with one :class:`TracingError` line naming the op, the module path and the source line:
an op the tracer does not know touching a channel tensor (``view``/``reshape``/``permute``/
``transpose`` that move or split channels, e.g. a channel shuffle; ``chunk``/``split``/indexing on
channels; matmul/attention; softmax; GroupNorm/LayerNorm; Conv1d/3d, transposed convs; Linear on a
tensor of more than 2 dims), a conv/linear/BatchNorm module called more than once (shared weights),
a forward that ``torch.fx`` cannot trace (data-dependent control flow), or an ``example_input`` the
model does not accept. Such a model needs :func:`prunelab.models.register_model` with a hand-written
describer.

Limits of the description (what counting and compaction can do with it)
------------------------------------------------------------------------

* Counting (:func:`prunelab.counting.count`) reads a traced spec like any other: MACs, params and V
  of the dense model equal those of a forward pass (hooks on Conv2d/Linear).
* Compaction (:func:`prunelab.pruning.compact.compact`) of a traced spec uses the generic engine
  (family ``"traced"``: slicing only). Every member of a trunk must then keep the **same** alive set
  (select with ``groups: trunk``, or build the structure so); the counter accepts different sets
  (the union is counted), but only the CIFAR ResNet family has blocks that gather and scatter
  channels (:mod:`prunelab.pruning.compact_resnet`). Grouped convs are described and counted but
  :func:`~prunelab.pruning.compact.slice_conv` refuses them (even with nothing to slice). A gate on a
  Linear output whose values are not all 1 cannot be folded by ``compact(gated_model)``
  (``_fold_gate`` knows BatchNorm2d and Conv2d); ``compact(model, structure)`` works.
  :func:`~prunelab.pruning.compact.load_compact` and :func:`~prunelab.pruning.compact.expand` rebuild
  models from the registry, so they need a zoo model.
* Channel ranges: making ``torch.cat`` inputs prunable needs an :class:`~.spec.Op` field giving each
  read its offset in the op's input, a sum of widths in the counter and concatenated indices in
  compaction; until then they are fixed.
"""

from __future__ import annotations

import math
import operator
import os
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ConfigError
from .spec import GatedTensor, ModelSpec, Op, trace_shapes

FAMILY = "traced"

_ADVICE = ("register the model with prunelab.models.register_model(describe=...) and a hand-written describer "
           "(see prunelab/models/resnet_cifar.py)")


class TracingError(ConfigError):
    """A model that :func:`describe_traced` cannot describe (one line: the op, where, and the fix)."""


# --------------------------------------------------------------------------------------------------
# op tables

# parameter-free modules that keep the channels and map a zero channel to zero
_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                 nn.Hardswish, nn.Hardtanh, nn.Tanh, nn.Softsign, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
                 nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity, nn.MaxPool2d, nn.AvgPool2d,
                 nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample, nn.UpsamplingNearest2d,
                 nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)
# parameter-free, channel-wise, but f(0) != 0
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid, nn.Softplus, nn.LogSigmoid)
_AVG_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)
_FLATTEN_MODULES = (nn.Flatten,)

_ZERO_FUNCS = {"relu", "relu_", "relu6", "hardtanh", "hardtanh_", "leaky_relu", "leaky_relu_", "elu", "elu_",
               "selu", "celu", "gelu", "silu", "mish", "hardswish", "tanh", "tanh_", "softsign", "neg", "abs",
               "dropout", "dropout1d", "dropout2d", "alpha_dropout", "feature_alpha_dropout",
               "max_pool2d", "_max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
               "_adaptive_max_pool2d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
               "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as", "cpu",
               "cuda", "requires_grad_"}
_NONZERO_FUNCS = {"sigmoid", "sigmoid_", "hardsigmoid", "softplus", "logsigmoid", "exp"}
_ADD = {"add", "add_", "iadd", "sub", "sub_", "isub"}
_MUL = {"mul", "mul_", "imul"}
_DIV = {"truediv", "div", "div_", "itruediv"}
_CAT = {"cat", "concat", "concatenate"}
_RESHAPE = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "view_as", "reshape_as"}
_REDUCE = {"mean", "sum", "amax"}
_CLAMP = {"clamp", "clamp_", "clip"}
_INSPECT = {"size", "dim", "numel", "getattr"}


def _fname(node) -> str | None:
    """Name of a call_function/call_method target if it is one of torch's, torch.nn.functional's or
    operator's functions (or any Tensor method); None otherwise."""
    t = node.target
    if node.op == "call_method":
        return t
    if t is getattr:
        return "getattr"
    n = getattr(t, "__name__", None)
    if n is None:
        return None
    if n == "stochastic_depth" and (getattr(t, "__module__", "") or "").startswith("torchvision."):
        return "dropout"  # torchvision.ops.stochastic_depth: drops whole samples (identity in eval)
    for ns in (operator, torch, F, torch.Tensor):
        if getattr(ns, n, None) is t:
            return n
    return None


# --------------------------------------------------------------------------------------------------
# channel spaces and values


class _Space:
    """A set of channels shared by several tensors (union-find node)."""

    __slots__ = ("parent", "channels", "fixed")

    def __init__(self, channels: int, fixed: str | None = None):
        self.parent, self.channels, self.fixed = self, int(channels), fixed


def _find(s: _Space) -> _Space:
    while s.parent is not s:
        s.parent = s.parent.parent
        s = s.parent
    return s


def _unify(a: _Space, b: _Space) -> _Space:
    ra, rb = _find(a), _find(b)
    if ra is not rb:
        rb.parent = ra
        ra.fixed = ra.fixed or rb.fixed
    return ra


def _fix(s: _Space, reason: str) -> None:
    r = _find(s)
    if r.fixed is None:
        r.fixed = reason


@dataclass
class _Val:
    """What the tracer knows of one tensor with a channel dimension (dim 1)."""

    space: _Space
    node: object  # the fx node holding the value
    contrib: tuple = ()  # producer keys whose union of alive channels this value carries
    fresh: str | None = None  # producer key when the value is that producer's output (through channel-wise ops)
    dirty: str | None = None  # why a switched-off channel may be non-zero here


_CONST = object()  # a tensor without a channel dimension we follow (a parameter or buffer read in forward)


@dataclass
class _Producer:
    key: str  # module path of the conv/linear
    kind: str  # "conv" | "linear"
    order: int
    node: object
    space: _Space
    read: _Val | None
    bn: str | None = None


@dataclass
class _OpRec:
    name: str
    kind: str  # "conv" | "linear" | "dw" | "grouped" | "pool"
    module: nn.Module
    read: _Val | None
    producer: str | None = None  # dense conv/linear: its producer key
    bn: str | None = None


@dataclass
class _AddEvent:
    node: object
    a: _Val
    b: _Val


@dataclass
class _Follow:
    node: object
    scale_keys: tuple
    main: _Val


@dataclass
class _Trace:
    """Everything :func:`describe_traced` found (``fixed``: why channels that convs produce are not prunable)."""

    spec: ModelSpec
    fixed: dict = field(default_factory=dict)  # conv/linear path -> reason its output is not gated


# --------------------------------------------------------------------------------------------------
# the tracer


def _shape(node):
    from torch.fx.passes.shape_prop import TensorMetadata

    tm = node.meta.get("tensor_meta") if hasattr(node, "meta") else None
    return tuple(tm.shape) if isinstance(tm, TensorMetadata) else None


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return (s[0] if s else type(e).__name__)[:200]


class _Tracer:
    def __init__(self, model: nn.Module, name: str):
        self.model, self.name = model, name
        self.modules = dict(model.named_modules())
        self.vals: dict = {}
        self.producers: dict[str, _Producer] = {}
        self.ops: list[_OpRec] = []
        self.adds: list[_AddEvent] = []
        self.follows: list[_Follow] = []
        self.calls: dict[str, int] = {}
        self.order: dict = {}
        self.input_space: _Space | None = None

    # -- errors ------------------------------------------------------------------------------------
    def where(self, node) -> str:
        if node.op == "call_module":
            path = node.target
        else:
            stack = node.meta.get("nn_module_stack") or {}
            path = next(reversed(stack.values()))[0] if stack else ""
        loc = f"module {path!r}" if path else f"{type(self.model).__name__}.forward"
        src = self.source(node)
        return f"{loc}{f' ({src})' if src else ''}"

    @staticmethod
    def source(node) -> str:
        """``file.py:line `code``` of the user's line that made ``node`` (from fx's stack trace)."""
        st = node.stack_trace or ""
        lines = st.splitlines()
        torch_dir = os.path.dirname(torch.__file__)
        best = ""
        for i, line in enumerate(lines):
            s = line.strip()
            if not s.startswith('File "'):
                continue
            try:
                path = s.split('"')[1]
                lineno = s.split(", line ")[1].split(",")[0]
            except IndexError:
                continue
            if path.startswith(torch_dir):
                continue
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            best = f"{os.path.basename(path)}:{lineno}" + (f" `{code}`" if code else "")
        return best

    def opname(self, node) -> str:
        if node.op == "call_module":
            return f"{type(self.modules[node.target]).__name__}"
        if node.op == "call_method":
            return f"Tensor.{node.target}()"
        t = node.target
        n = getattr(t, "__name__", str(t))
        if t is operator.getitem:
            return "indexing (x[...])"
        mod = getattr(t, "__module__", None) or ""
        if getattr(torch, n, None) is t:
            mod = "torch"
        elif getattr(F, n, None) is t:
            mod = "torch.nn.functional"
        elif getattr(operator, n, None) is t:
            mod = "operator"
        return f"{mod + '.' if mod else ''}{n}()"

    def refuse(self, node, why: str):
        raise TracingError(f"cannot describe {self.name} by tracing: {self.opname(node)} at {self.where(node)} "
                           f"{why}; {_ADVICE}")

    # -- helpers -----------------------------------------------------------------------------------
    def val(self, a):
        return self.vals.get(a) if isinstance(a, torch.fx.Node) else None

    def channel_args(self, node):
        out = []
        torch.fx.node.map_arg((node.args, node.kwargs), lambda n: out.append(n) or n)
        return [self.vals[n] for n in out if isinstance(self.vals.get(n), _Val)]

    def same(self, v: _Val, node, **kw) -> _Val:
        """A value of ``node`` in ``v``'s space (``kw`` overrides fields)."""
        d = dict(space=v.space, node=node, contrib=v.contrib, fresh=v.fresh, dirty=v.dirty)
        d.update(kw)
        return _Val(**d)

    def new_fixed(self, node, reason: str) -> _Val:
        shape = _shape(node)
        return _Val(_Space(shape[1] if shape and len(shape) > 1 else 1, reason), node)

    def once(self, node):
        path = node.target
        self.calls[path] = self.calls.get(path, 0) + 1
        if self.calls[path] > 1:
            self.refuse(node, f"is called more than once (shared weights of {path!r}): one module is one op of "
                              f"the description, so its channels cannot be sliced for each call")

    def anc(self, a, b) -> bool:
        """Whether fx node ``a`` is ``b`` or one of its ancestors."""
        if a is b:
            return True
        ia = self.order[a]
        seen, todo = set(), [b]
        while todo:
            n = todo.pop()
            for p in n.all_input_nodes:
                if p is a:
                    return True
                if p not in seen and self.order[p] > ia:
                    seen.add(p)
                    todo.append(p)
        return False

    # -- main loop ---------------------------------------------------------------------------------
    def run(self, graph) -> None:
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        for i, n in enumerate(graph.nodes):
            self.order[n] = i
        for n in graph.nodes:
            if n.op == "placeholder":
                if n is placeholders[0]:
                    shape = _shape(n)
                    if not shape or len(shape) < 2:
                        raise TracingError(f"cannot describe {self.name} by tracing: example_input must be a batch "
                                           f"(B, C, ...), got shape {shape}")
                    self.input_space = _Space(shape[1], "the network input")
                    self.vals[n] = _Val(self.input_space, n)
                else:
                    self.vals[n] = _CONST if _shape(n) is not None else None
            elif n.op == "get_attr":
                self.vals[n] = _CONST if _shape(n) is not None else None
            elif n.op == "output":
                for v in self.channel_args(n):
                    _fix(v.space, "reaches the network output")
            else:
                self.vals[n] = self.visit(n)

    def visit(self, node):
        chans = self.channel_args(node)
        is_tensor = _shape(node) is not None
        if not chans:
            return _CONST if is_tensor else None
        if node.op == "call_module":
            return self.visit_module(node, chans)
        name = _fname(node)
        if name in ("chunk", "split", "tensor_split", "unbind", "split_with_sizes"):
            self.refuse(node, "splits a tensor with channels; the description cannot follow parts of a channel set")
        if not is_tensor:
            if name in _INSPECT:
                return None
            self.refuse(node, "is applied to a tensor with channels and returns no tensor; the tracer does not know it")
        if name in _ZERO_FUNCS:
            return self.unary(node, zero=True)
        if name in _NONZERO_FUNCS:
            return self.unary(node, zero=False, why=f"{self.opname(node)} at {self.where(node)}")
        for names, handle in ((_ADD, self.add), (_MUL, self.mul), (_DIV, self.div), (_CAT, self.cat),
                              (_RESHAPE, self.reshape), (_REDUCE, self.reduce), (_CLAMP, self.clamp),
                              (("getitem",), self.getitem), (("pad",), self.pad)):
            if name in names:
                return handle(node)
        if name in ("permute", "transpose", "movedim", "swapaxes", "swapdims"):
            self.refuse(node, "moves the channel dimension (e.g. a channel shuffle or attention); channel pruning "
                              "cannot follow it")
        self.refuse(node, "is applied to a tensor with channels, and the tracer does not know what it does to them "
                          "(e.g. attention, normalisation over channels)")

    # -- modules -----------------------------------------------------------------------------------
    def visit_module(self, node, chans):
        m = self.modules[node.target]
        v = self.val(node.args[0]) if node.args else None
        if not isinstance(v, _Val):
            self.refuse(node, "takes a tensor with channels in an argument other than the first")
        if isinstance(m, nn.Conv2d) and type(m) in (nn.Conv2d,):
            self.once(node)
            return self.conv(node, m, v)
        if isinstance(m, nn.Linear) and type(m) in (nn.Linear,):
            self.once(node)
            return self.linear(node, m, v)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and type(m) in (nn.BatchNorm2d, nn.BatchNorm1d):
            self.once(node)
            return self.batchnorm(node, m, v)
        if isinstance(m, _ZERO_MODULES):
            if isinstance(m, _AVG_POOLS):
                self.calls[node.target] = self.calls.get(node.target, 0) + 1
                if self.calls[node.target] == 1:
                    self.ops.append(_OpRec(node.target, "pool", m, v))
                else:  # a reused pool module is not listed: shapes are traced for one call per op
                    self.ops = [o for o in self.ops if not (o.kind == "pool" and o.name == node.target)]
            if isinstance(m, (nn.ZeroPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d)) and len(_shape(node)) != 4:
                self.refuse(node, "pads a tensor that is not (B, C, H, W)")
            return self.same(v, node)
        if isinstance(m, _NONZERO_MODULES):
            return self.same(v, node, fresh=None, dirty=f"{type(m).__name__} at {self.where(node)}")
        if isinstance(m, _FLATTEN_MODULES):
            return self.reshape(node)
        if isinstance(m, nn.PReLU):
            if m.num_parameters > 1:
                _fix(v.space, f"per-channel PReLU {node.target!r} (its weights are not sliced)")
            return self.same(v, node)
        self.refuse(node, "is applied to a tensor with channels, and the tracer does not know what it does to them")

    def conv(self, node, m: nn.Conv2d, v: _Val):
        if len(_shape(node)) != 4:
            self.refuse(node, "runs on an unbatched input")
        depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
        if depthwise:
            op = _OpRec(node.target, "dw", m, v)
            self.ops.append(op)
            return self.same(v, node, dirty=None)  # the depthwise output is masked (mask_modules)
        if m.groups > 1:
            _fix(v.space, f"read by grouped conv {node.target!r} (groups={m.groups})")
            self.ops.append(_OpRec(node.target, "grouped", m, v))
            return self.new_fixed(node, f"written by grouped conv {node.target!r} (groups={m.groups})")
        return self.dense(node, m, v, "conv")

    def linear(self, node, m: nn.Linear, v: _Val):
        if len(_shape(node.args[0])) != 2:
            self.refuse(node, f"acts on the last dimension of a {len(_shape(node.args[0]))}-d tensor, not on its "
                              f"channels (dim 1)")
        return self.dense(node, m, v, "linear")

    def dense(self, node, m, v: _Val, kind: str):
        key = node.target
        shape = _shape(node)
        space = _Space(shape[1])
        self.producers[key] = _Producer(key, kind, len(self.producers), node, space, v)
        self.ops.append(_OpRec(key, kind, m, v, producer=key))
        return _Val(space, node, (key,), key, None)

    def batchnorm(self, node, m, v: _Val):
        src = node.args[0]
        owner = None
        if isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1:
            owner = next((o for o in reversed(self.ops) if o.name == src.target and o.kind != "pool"), None)
        if owner is not None and owner.bn is None and m.affine:
            owner.bn = node.target
            if owner.producer:
                p = self.producers[owner.producer]
                p.bn = node.target
                if isinstance(m, nn.BatchNorm1d):
                    _fix(v.space, f"BatchNorm1d {node.target!r} after {src.target!r} (compaction slices "
                                  f"BatchNorm2d only)")
            return self.same(v, node)
        _fix(v.space, f"BatchNorm {node.target!r} is not right after a conv (its channels are not sliced)")
        return self.same(v, node, fresh=None, dirty=f"BatchNorm {node.target!r}")

    # -- functions ---------------------------------------------------------------------------------
    def unary(self, node, zero: bool, why: str | None = None):
        v = self.val(node.args[0]) if node.args else None
        if not isinstance(v, _Val):
            self.refuse(node, "takes a tensor with channels in an argument other than the first")
        others = self.channel_args(node)
        if len(others) > 1 and any(o is not v for o in others):
            self.refuse(node, "combines several tensors with channels")
        if node.op == "call_function" and getattr(node.target, "__name__", "") == "max_pool2d" \
                and node.kwargs.get("return_indices"):
            self.refuse(node, "returns pooling indices")
        if zero:
            return self.same(v, node)
        return self.same(v, node, fresh=None, dirty=why)

    def scalar_operand(self, a):
        """Value of a non-channel operand: ('num', x), ('const', numel) or ('other', None)."""
        if isinstance(a, (int, float, bool)):
            return "num", float(a)
        if isinstance(a, torch.fx.Node):
            s = _shape(a)
            if s is None:
                return "num", None  # a Python number computed in forward (e.g. from x.size())
            return "const", math.prod(s)
        return "other", None

    def binary_operands(self, node):
        args = list(node.args[:2])
        if len(args) < 2:
            args.append(node.kwargs.get("other"))
        return args

    def add(self, node):
        a, b = self.binary_operands(node)
        va, vb = self.val(a), self.val(b)
        if isinstance(va, _Val) and isinstance(vb, _Val):
            sa, sb = _shape(a), _shape(b)
            if len(sa) < 2 or len(sb) < 2:
                self.refuse(node, "adds tensors without a channel dimension")
            ca, cb = sa[1], sb[1]
            if ca == cb:
                space = _unify(va.space, vb.space)
                contrib = tuple(sorted(set(va.contrib) | set(vb.contrib), key=lambda k: self.producers[k].order))
                self.adds.append(_AddEvent(node, va, vb))
                return _Val(space, node, contrib, None, va.dirty or vb.dirty)
            small, big = (va, vb) if ca == 1 else (vb, va) if cb == 1 else (None, None)
            if small is None:
                self.refuse(node, f"adds tensors of {ca} and {cb} channels")
            _fix(small.space, f"broadcast over channels at {self.where(node)}")
            return self.same(big, node, fresh=None, dirty=f"a 1-channel tensor added at {self.where(node)}")
        v, other = (va, b) if isinstance(va, _Val) else (vb, a)
        kind, x = self.scalar_operand(other)
        if kind == "num" and x == 0:
            return self.same(v, node)
        if kind == "const" and x != 1:
            _fix(v.space, f"combined with a tensor attribute at {self.where(node)}")
        return self.same(v, node, fresh=None, dirty=f"a constant added at {self.where(node)}")

    def mul(self, node):
        a, b = self.binary_operands(node)
        va, vb = self.val(a), self.val(b)
        if isinstance(va, _Val) and isinstance(vb, _Val):
            sa, sb = _shape(a), _shape(b)
            if len(sa) < 2 or len(sb) < 2:
                self.refuse(node, "multiplies tensors without a channel dimension")
            if sa[1] == 1 and sb[1] > 1:
                return self.same(vb, node)
            if sb[1] == 1 and sa[1] > 1:
                return self.same(va, node)
            if sa[1] != sb[1]:
                self.refuse(node, f"multiplies tensors of {sa[1]} and {sb[1]} channels")
            pa, pb = math.prod(sa[2:]), math.prod(sb[2:])
            if _find(va.space) is _find(vb.space) and va.contrib == vb.contrib and pa == pb:
                # x * f(x) (a hand-written swish): zero wherever x is a switched-off channel
                clean = va if not va.dirty else vb
                return self.same(clean, node, fresh=va.fresh if va.fresh == vb.fresh else None,
                                 dirty=va.dirty and vb.dirty)
            if pa == pb:
                space = _unify(va.space, vb.space)
                _fix(space, f"product of two feature maps at {self.where(node)}")
                contrib = tuple(sorted(set(va.contrib) | set(vb.contrib), key=lambda k: self.producers[k].order))
                return _Val(space, node, contrib, None, va.dirty or vb.dirty)
            main, scale = (va, vb) if pa > pb else (vb, va)
            _unify(main.space, scale.space)
            self.follows.append(_Follow(node, scale.contrib, main))
            return self.same(main, node)
        v, other = (va, b) if isinstance(va, _Val) else (vb, a)
        kind, x = self.scalar_operand(other)
        if kind == "const" and x != 1:
            _fix(v.space, f"multiplied by a tensor attribute at {self.where(node)}")
        return self.same(v, node)

    def div(self, node):
        a, b = self.binary_operands(node)
        if isinstance(self.val(b), _Val) or not isinstance(self.val(a), _Val):
            self.refuse(node, "divides by a tensor with channels")
        v = self.val(a)
        kind, x = self.scalar_operand(b)
        if kind == "const" and x != 1:
            _fix(v.space, f"divided by a tensor attribute at {self.where(node)}")
        return self.same(v, node)

    def cat(self, node):
        tensors = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        vals = [self.val(t) for t in tensors]
        if not all(isinstance(v, _Val) for v in vals):
            self.refuse(node, "concatenates tensors with channels and tensors without")
        ndim = len(_shape(node))
        dim = dim % ndim
        if dim == 1:
            for v in vals:
                _fix(v.space, f"concatenated on channels by torch.cat at {self.where(node)} (ranges of one op's "
                              f"input are not described)")
            return self.new_fixed(node, f"the output of torch.cat at {self.where(node)}")
        if dim == 0:
            self.refuse(node, "concatenates along the batch dimension")
        space = vals[0].space
        for v in vals[1:]:
            space = _unify(space, v.space)
        contrib = tuple(sorted({k for v in vals for k in v.contrib}, key=lambda k: self.producers[k].order))
        return _Val(space, node, contrib, None, next((v.dirty for v in vals if v.dirty), None))

    def reshape(self, node):
        v = self.val(node.args[0])
        src, out = _shape(node.args[0]), _shape(node)
        if not isinstance(v, _Val) or src is None or out is None or len(src) < 2:
            self.refuse(node, "reshapes a tensor with channels")
        b, c, rest = src[0], src[1], math.prod(src[2:])
        if len(out) >= 2 and out[0] == b and out[1] == c and math.prod(out[2:]) == rest:
            return self.same(v, node)
        if len(out) == 2 and out[0] == b and out[1] == c * rest:
            _fix(v.space, f"flattened with its {'x'.join(map(str, src[2:]))} positions into {c * rest} features at "
                          f"{self.where(node)}")
            return self.new_fixed(node, f"flattened features at {self.where(node)}")
        self.refuse(node, f"reshapes the channel dimension ({list(src)} -> {list(out)}), so channel pruning cannot "
                          f"follow it")

    def reduce(self, node):
        v = self.val(node.args[0])
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        src = _shape(node.args[0])
        if dims is None:
            self.refuse(node, "reduces over every dimension, channels included")
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        norm = {d % len(src) for d in dims}
        if norm & {0, 1}:
            self.refuse(node, "reduces over the channel (or batch) dimension")
        return self.same(v, node)

    def clamp(self, node):
        v = self.val(node.args[0])
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
        if isinstance(lo, torch.fx.Node) or isinstance(hi, torch.fx.Node):
            self.refuse(node, "clamps with tensor bounds")
        zero = (lo is None or lo <= 0) and (hi is None or hi >= 0)
        return self.same(v, node) if zero else self.same(v, node, fresh=None, dirty=f"clamp at {self.where(node)}")

    def getitem(self, node):
        v = self.val(node.args[0])
        idx = node.args[1]
        src = _shape(node.args[0])
        if not isinstance(idx, tuple):
            idx = (idx,)
        full = slice(None, None, None)
        if Ellipsis in idx:
            k = idx.index(Ellipsis)
            idx = idx[:k] + (full,) * (len(src) - len(idx) + 1) + idx[k + 1:]
        def spatial(i):  # a slice or a position (not a list or tensor: advanced indexing may move dims)
            return isinstance(i, (slice, int)) or isinstance(i, torch.fx.Node) and _shape(i) is None

        ok = len(idx) <= len(src) and all(isinstance(i, slice) and i == full for i in idx[:2]) \
            and all(spatial(i) for i in idx[2:])
        if not ok:
            self.refuse(node, "indexes the channel (or batch) dimension; the description cannot follow part of a "
                              "channel set")
        return self.same(v, node)

    def pad(self, node):
        v = self.val(node.args[0])
        pads = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        src = _shape(node.args[0])
        pads = tuple(pads)
        dims = len(pads) // 2  # pads the last `dims` dimensions
        padded = {len(src) - 1 - i for i in range(dims) if pads[2 * i] or pads[2 * i + 1]}
        if 0 in padded:
            self.refuse(node, "pads the batch dimension")
        if 1 in padded:
            _fix(v.space, f"zero-padded on channels by F.pad at {self.where(node)} (an option-A shortcut)")
            return self.new_fixed(node, f"channels padded by F.pad at {self.where(node)}")
        if mode == "constant" and value not in (None, 0, 0.0):
            return self.same(v, node, fresh=None, dirty=f"padding with {value} at {self.where(node)}")
        return self.same(v, node)

    # -- the description ---------------------------------------------------------------------------
    def finish(self) -> tuple[list[GatedTensor], list[Op], dict]:
        P = self.producers
        fixed: dict = {}
        # followers: producers whose output only scales a space (squeeze-excitation)
        follower_of: dict[str, _Val] = {}
        for f in self.follows:
            for k in f.scale_keys:
                follower_of.setdefault(k, f.main)
        # what dense ops read: producer keys read as data
        read_keys = set()
        readers: dict = {}
        for op in self.ops:
            if op.kind in ("conv", "linear") and isinstance(op.read, _Val):
                read_keys.update(op.read.contrib)
                root = _find(op.read.space)
                readers.setdefault(id(root), []).append(op)
                if op.read.dirty:
                    _fix(root, f"a switched-off channel is non-zero where {op.name!r} reads it ({op.read.dirty})")
        for k in follower_of:
            if k in read_keys:
                _fix(P[k].space, f"{k!r} scales other channels and is also read as data")
        members: dict = {}
        for k, p in P.items():
            if k not in follower_of:
                members.setdefault(id(_find(p.space)), []).append(k)
        for k in follower_of:
            root = _find(P[k].space)
            if len(members.get(id(root), [])) != 1:
                _fix(root, f"{k!r} scales a residual sum (or nothing prunable)")

        def prunable(space) -> bool:
            root = _find(space)
            return root.fixed is None and bool(members.get(id(root))) and bool(readers.get(id(root)))

        for k, p in P.items():
            root = _find(p.space)
            if not prunable(root):
                fixed[k] = root.fixed or ("no conv or linear reads it" if not readers.get(id(root)) else
                                          "it only scales channels that are fixed")
        gated = [k for k in P if k not in follower_of and prunable(P[k].space)]

        # residual spaces (numbered in order of their first addition) and block roles
        res_index: dict = {}
        blocks: dict = {}
        roles: dict = {}
        stem_readers = [op for op in self.ops if op.kind == "conv" and isinstance(op.read, _Val)
                        and _find(op.read.space) is _find(self.input_space)]
        if len(stem_readers) == 1:
            roles[stem_readers[0].producer] = dict(slot="stem", name="stem", stage=0, block=-1)
        for ev in self.adds:
            root = _find(ev.a.space)
            k = res_index.setdefault(id(root), len(res_index) + 1)
            b = blocks.get(k, 0)
            blocks[k] = b + 1
            self.block_roles(ev, k, b, roles)
        for k in list(roles):  # a delta or proj is one only inside a prunable trunk, a mid only outside
            in_trunk = k in gated and len(members[id(_find(P[k].space))]) > 1
            slot = roles[k]["slot"]
            if k not in gated or slot in ("delta", "proj") and not in_trunk or slot.startswith("mid") and in_trunk:
                del roles[k]

        # names: the role's, else the module path (also on a clash)
        names: dict[str, str] = {}
        for k in gated:
            n = roles[k]["name"] if k in roles else k
            if n in names.values() or (n in P and n != k):
                n = k
            names[k] = n

        trunk_ids: dict = {}
        for k in gated:
            root = _find(P[k].space)
            if len(members[id(root)]) > 1 and id(root) not in trunk_ids:
                n = res_index.get(id(root))
                trunk_ids[id(root)] = f"stage{n}" if n else f"trunk{len(trunk_ids) + 1}"

        def reads(v) -> tuple:
            if not isinstance(v, _Val) or not prunable(v.space):
                return ()
            return tuple(names[k] for k in v.contrib if k in names)

        masks: dict[str, list] = {k: [] for k in gated}
        ops = []
        for op in self.ops:
            m = op.module
            r = reads(op.read)
            if op.kind == "pool":
                ops.append(Op(op.name, "pool", 0, 0, reads=r))
            elif op.kind == "dw":
                w = r[0] if r else None
                if w is not None:
                    owner = next(k for k, n in names.items() if n == w)
                    masks[owner].append(op.bn or op.name)
                ops.append(Op(op.name, "conv", m.in_channels, m.out_channels, tuple(m.kernel_size), m.groups,
                              m.bias is not None, r, w, op.bn, True))
            elif op.kind == "grouped":
                ops.append(Op(op.name, "conv", m.in_channels // m.groups, m.out_channels, tuple(m.kernel_size),
                              m.groups, m.bias is not None, (), None, op.bn, False))
            else:
                k = op.producer
                w = names.get(k)
                if w is None and k in follower_of and prunable(P[k].space):
                    main = members[id(_find(P[k].space))][0]
                    w = names.get(main)
                if op.kind == "conv":
                    ops.append(Op(op.name, "conv", m.in_channels, m.out_channels, tuple(m.kernel_size), 1,
                                  m.bias is not None, r, w, op.bn, False))
                else:
                    ops.append(Op(op.name, "linear", m.in_features, m.out_features, (1, 1), 1, m.bias is not None,
                                  r, w, op.bn))

        tensors = []
        for k in gated:
            p = P[k]
            root = _find(p.space)
            role = roles.get(k, {})
            trunk = trunk_ids.get(id(root))
            slot = role.get("slot") or ("trunk" if trunk else "conv" if p.kind == "conv" else "linear")
            block_input = tuple(names[x] for x in role.get("block_input", ()) if x in names) if trunk else ()
            tensors.append(GatedTensor(names[k], slot, root.channels, p.bn or k, k, role.get("stage", -1),
                                       role.get("block", -1), tuple(masks[k]), block_input, trunk))
        return tensors, ops, fixed

    def block_roles(self, ev: _AddEvent, k: int, b: int, roles: dict) -> None:
        """Name the members of one residual addition (``delta``, ``proj``, the ``mid`` tensors between)."""
        x, y = ev.a, ev.b
        P = self.producers
        delta = proj = block_in = None  # block_in: the value the block's branch and shortcut start from
        block_input = ()
        if x.fresh and not y.fresh:
            delta, block_in, block_input = x.fresh, y, y.contrib
        elif y.fresh and not x.fresh:
            delta, block_in, block_input = y.fresh, x, x.contrib
        elif x.fresh and y.fresh:
            rx, ry = P[x.fresh].read, P[y.fresh].read
            ix, iy = (rx.node if rx else None), (ry.node if ry else None)
            # y's conv runs before the branch of x forks off: y is the block input itself (identity shortcut)
            if ix is not None and self.anc(P[y.fresh].node, ix):
                delta, block_in, block_input = x.fresh, y, y.contrib
            elif iy is not None and self.anc(P[x.fresh].node, iy):
                delta, block_in, block_input = y.fresh, x, x.contrib
            elif ix is not None and iy is not None and ix is not iy and self.anc(iy, ix):
                delta, proj, block_in, block_input = x.fresh, y.fresh, ry, (y.fresh,)
            elif ix is not None and iy is not None and ix is not iy and self.anc(ix, iy):
                delta, proj, block_in, block_input = y.fresh, x.fresh, rx, (x.fresh,)
        if delta is None or delta in roles:
            return
        mids = []
        v = P[delta].read
        while isinstance(v, _Val) and v.fresh and not self.anc(v.node, block_in.node):
            p = v.fresh
            if p in mids or p == delta or p == proj or p in block_in.contrib:
                break
            mids.insert(0, p)
            v = P[p].read
        paths = [delta] + mids + ([proj] if proj else [])
        parts = [p.split(".") for p in paths]
        prefix = []
        for comps in zip(*parts):
            if len(set(comps)) != 1:
                break
            prefix.append(comps[0])
        if len(paths) == 1:
            prefix = parts[0][:-1]
        base = ".".join(prefix)

        def name(slot):
            return f"{base}.{slot}" if base else None

        roles[delta] = dict(slot="delta", name=name("delta") or delta, stage=k, block=b, block_input=block_input)
        if proj and proj not in roles:
            roles[proj] = dict(slot="proj", name=name("proj") or proj, stage=k, block=b)
        for i, p in enumerate(mids, start=1):
            if p not in roles:
                slot = "mid" if len(mids) == 1 else f"mid{i}"
                roles[p] = dict(slot=slot, name=name(slot) or p, stage=k, block=b)


# --------------------------------------------------------------------------------------------------
# entry points


def trace_model(model: nn.Module, example_input: torch.Tensor, name: str | None = None) -> _Trace:
    """:func:`describe_traced`, plus why each conv/linear output that is not gated is fixed."""
    name = name or type(model).__name__
    if not isinstance(example_input, torch.Tensor):
        raise TracingError(f"cannot describe {name} by tracing: example_input must be a tensor (a batch the model "
                           f"accepts), got {type(example_input).__name__}")
    try:
        tracer = torch.fx.Tracer()
        tracer.record_stack_traces = True
        graph = tracer.trace(model)
        gm = torch.fx.GraphModule(tracer.root, graph)
    except Exception as e:  # noqa: BLE001 - any tracing failure becomes one line
        raise TracingError(f"cannot describe {name} by tracing: torch.fx cannot trace its forward ({type(e).__name__}: "
                           f"{_first_line(e)}); {_ADVICE}") from None
    from torch.fx.passes.shape_prop import ShapeProp

    states = {m: m.training for m in model.modules()}
    try:
        gm.eval()
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input)
    except Exception as e:  # noqa: BLE001
        raise TracingError(f"cannot describe {name} by tracing: example_input of shape {tuple(example_input.shape)} "
                           f"does not run through the model ({type(e).__name__}: {_first_line(e)})") from None
    finally:
        for m, t in states.items():
            m.training = t
    t = _Tracer(model, name)
    t.run(graph)
    tensors, ops, fixed = t.finish()
    counted = 0
    for op in ops:
        if op.kind == "pool":
            continue
        counted += sum(p.numel() for p in model.get_submodule(op.name).parameters(recurse=False))
        if op.bn:
            bn = model.get_submodule(op.bn)
            counted += sum(p.numel() for p in (bn.weight, bn.bias) if p is not None)
    total = sum(p.numel() for p in model.parameters())
    extra = total - counted
    if extra < 0:  # cannot happen with modules called once; a bug if it does
        raise TracingError(f"cannot describe {name} by tracing: its ops hold more parameters ({counted}) than the "
                           f"model ({total})")
    trunk_slots = {t.slot for t in tensors if t.trunk is not None}
    # the default placements gate conv outputs, as every hand-written spec does; hidden linear units
    # are gated only when a method names slot "linear"
    slots = [s for s in dict.fromkeys(t.slot for t in tensors) if s != "linear"]
    slot_sets = {"internal": tuple(s for s in slots if s not in trunk_slots), "outputs": tuple(slots)}
    spec = ModelSpec(name, tensors, ops, tuple(example_input.shape[1:]), FAMILY, extra, slot_sets)
    try:
        spec = trace_shapes(model, spec)
    finally:  # trace_shapes sets every submodule to the root's training flag
        for m, t in states.items():
            m.training = t
    return _Trace(spec, fixed)


def describe_traced(model: nn.Module, example_input: torch.Tensor, name: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of ``model`` found by tracing it with ``example_input`` (module docstring).

    Args:
        model: any ``nn.Module`` that ``torch.fx`` can trace; not modified (its training flags are
            restored after one forward pass in eval mode).
        example_input: a batch the model accepts, ``(B, C, H, W)``; its size is the spec's input size.
        name: the spec's model name (default: the model's class name); structures carry it.

    Raises:
        TracingError (a :class:`~prunelab.errors.ConfigError`): one line naming the op and module path
            the tracer cannot follow, and the fix (a hand-written describer).
    """
    return trace_model(model, example_input, name).spec
