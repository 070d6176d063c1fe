"""Physical compaction: a plain, smaller ``nn.Module`` from a model and a structure.

Conv, BatchNorm and Linear weights are sliced to the alive channels; deterministic gate values are
folded into the BatchNorm (or conv) they follow. Residual trunks whose contributors have different
alive sets use BAR's mixed-connectivity block (supplement Algorithm 1): the input's alive channels are
gathered by index, the projection's and the delta's outputs are scattered into the trunk. The trunk
of a stage is held at the width of the union of its contributors, not at the full width (same result,
less memory than Algorithm 1's ``zeros(batch, N_res, h, w)``); line 3's ``x_out <- i_in`` is read as
``x_out <- x_in`` (a typo, methods.md §4.4).

Compaction is an eval-mode transformation: the compact model's outputs equal the gated (masked) model's
outputs in eval mode. A block whose ``mid`` set is empty adds BN's constant (gate x beta - gate x gamma x
mu / sigma) instead of its convs; a block whose ``delta`` set is empty has no branch at all.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

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
# the mixed-connectivity residual block


def _scatter(x: torch.Tensor, pos: torch.Tensor, n: int) -> torch.Tensor:
    """Place the channels of ``x`` at positions ``pos`` of a zero tensor with ``n`` channels."""
    z = x.new_zeros((x.shape[0], n, *x.shape[2:]))
    if x.is_contiguous(memory_format=torch.channels_last):
        z = z.contiguous(memory_format=torch.channels_last)
    return z.index_add(1, pos, x)


class MixedBasicBlock(nn.Module):
    """A compact basic block with index gather/scatter (BAR supplement, Algorithm 1).

    Buffers ``in_pos`` (input channels conv1 and the projection read), ``res_pos`` (where the
    shortcut's channels go in the output) and ``delta_pos`` (where the delta's channels go) are
    positions in the compact tensors; an empty buffer means "all, in order" (no indexing).
    ``branch`` is ``"conv"``, ``"const"`` (empty mid: BN's constant) or ``"none"`` (empty delta);
    ``shortcut_kind`` is ``"proj"``, ``"identity"``, ``"A"`` or ``"zero"`` (every projection channel pruned).
    """

    def __init__(self, conv1, bn1, conv2, bn2, shortcut: nn.Module, shortcut_kind: str, out_channels: int,
                 in_pos=None, res_pos=None, delta_pos=None, branch: str = "conv", delta_const=None, stride: int = 1):
        super().__init__()
        self.branch = branch
        self.stride = stride
        self.shortcut_kind = shortcut_kind  # "proj" | "identity" | "A"
        self.out_channels = out_channels
        if branch == "conv":
            self.conv1, self.bn1, self.conv2, self.bn2 = conv1, bn1, conv2, bn2
        self.shortcut = shortcut if shortcut_kind in ("proj", "A") else nn.Identity()
        for name, v in (("in_pos", in_pos), ("res_pos", res_pos), ("delta_pos", delta_pos)):
            self.register_buffer(name, torch.as_tensor(v if v is not None else [], dtype=torch.long))
        if branch == "const":
            self.register_buffer("delta_const", torch.as_tensor(delta_const, dtype=torch.float32))

    def forward(self, x):
        xa = x.index_select(1, self.in_pos) if self.in_pos.numel() else x
        if self.shortcut_kind == "proj":
            r = self.shortcut(xa)
        elif self.shortcut_kind == "A":
            r = self.shortcut(x)
        elif self.shortcut_kind == "identity":
            r = x
        else:  # "zero": every projection channel was pruned
            h, w = -(-x.shape[2] // self.stride), -(-x.shape[3] // self.stride)
            r = x.new_zeros((x.shape[0], 0, h, w))
        if r.shape[1] != self.out_channels:
            r = _scatter(r, self.res_pos, self.out_channels)
        if self.branch == "none":
            return F.relu(r)
        if self.branch == "conv":
            d = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(xa)))))
        else:
            d = self.delta_const.to(r.dtype).view(1, -1, 1, 1).expand(r.shape[0], -1, *r.shape[2:])
        out = r.index_add(1, self.delta_pos, d) if self.delta_pos.numel() else r + d
        return F.relu(out)

    def extra_repr(self):
        return (f"branch={self.branch}, shortcut={self.shortcut_kind}, out_channels={self.out_channels}, "
                f"gather={int(self.in_pos.numel())}, res_scatter={int(self.res_pos.numel())}, "
                f"delta_scatter={int(self.delta_pos.numel())}")


# --------------------------------------------------------------------------------------------------
# compaction


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

    family = get_entry(spec.model).family
    conv_bn = []
    for op in spec.ops:
        if op.kind == "pool":
            continue
        in_arr = alive.union(op.reads)
        out_arr = alive.of(op.writes) if op.writes else None
        if (in_arr is not None and len(in_arr) == 0) or (out_arr is not None and len(out_arr) == 0):
            if family == "resnet_cifar" and (op.name.endswith((".conv1", ".conv2")) or ".shortcut" in op.name):
                continue  # an empty residual branch or projection: the block is rebuilt below
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
    if family == "resnet_cifar":
        _compact_cifar_resnet(new, spec, alive)
        conv_bn = [(c, b) for c, b in conv_bn if _exists(new, c) and _exists(new, b)]
    new.prunelab_name = spec.model
    new.prunelab_kwargs = dict(getattr(net, "prunelab_kwargs", {}))
    new.prunelab_compact = True
    new.prunelab_conv_bn = conv_bn
    return new


def _exists(root, path) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


def _compact_cifar_resnet(new, spec: ModelSpec, alive: _Alive) -> None:
    from ..models.resnet_cifar import ShortcutA

    prunable = new.shortcut_kind != "A"
    trunks = spec.trunks()
    rep = alive.of("stem") if prunable else None  # channels of the tensor flowing into the next block
    for s, layer in enumerate(new.stages, start=1):
        u = alive.union(trunks[f"stage{s}"]) if prunable else None
        if prunable and len(u) == 0:
            raise PrunelabError(f"structure leaves stage {s}'s residual trunk without channels; keep at least one")
        for b in range(len(layer)):
            p = f"layer{s}.{b}"
            block = layer[b]
            conv1_op = next(op for op in spec.ops if op.name == f"{p}.conv1")
            full_out = spec.tensor(f"{p}.delta").channels
            n_out = len(u) if prunable else full_out
            in_pos = None
            if prunable:
                i_set = alive.union(conv1_op.reads)
                in_pos = _positions(i_set, rep)
            sc = block.shortcut
            if isinstance(sc, (nn.Sequential, nn.Conv2d)):
                kind = "proj" if not prunable or len(alive.of(f"{p}.proj")) else "zero"
                res_pos = _positions(alive.of(f"{p}.proj"), u) if prunable else None
            elif isinstance(sc, ShortcutA):
                kind, res_pos = "A", None
            else:
                kind = "identity"
                res_pos = _positions(rep, u) if prunable else None
            mid, delta = alive.of(f"{p}.mid"), alive.of(f"{p}.delta")
            delta_pos = _positions(delta, u) if prunable else (None if len(delta) == full_out else delta)
            branch, const = "conv", None
            if len(delta) == 0:
                branch = "none"
            elif len(mid) == 0:
                branch = "const"
                bn2 = block.bn2  # not sliced (its conv was skipped): take the delta channels
                with torch.no_grad():
                    c = bn2.bias - bn2.weight * bn2.running_mean / torch.sqrt(bn2.running_var + bn2.eps)
                const = c[torch.as_tensor(delta, dtype=torch.long, device=c.device)].cpu()
            layer[b] = MixedBasicBlock(block.conv1, block.bn1, block.conv2, block.bn2, sc, kind, n_out,
                                       in_pos, res_pos, delta_pos, branch, const, block.conv1.stride[0])
            if prunable:
                rep = u


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
    from ..utils import atomic_write_bytes
    import io

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
    from ..train.rundir import load_checkpoint

    folder = Path(folder)
    structure = Structure.load(folder / "plan.json")
    payload = load_checkpoint(folder / "weights.pt", map_location)
    if payload.get("model_name") != structure.model:
        raise CheckpointError(f"{folder}/weights.pt holds model {payload.get('model_name')!r} but the plan is for "
                              f"{structure.model!r}")
    model = compact(create(structure.model, **structure.model_kwargs), structure)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
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
        if get_entry(spec.model).family == "resnet_cifar":  # constant branches -> BN bias
            for s, layer in enumerate(compact_model.stages, start=1):
                for b, block in enumerate(layer):
                    if getattr(block, "branch", "conv") == "const":
                        delta = torch.as_tensor(alive.of(f"layer{s}.{b}.delta"), dtype=torch.long)
                        dense.get_submodule(f"layer{s}.{b}.bn2").bias[delta] = block.delta_const.cpu()
    return dense
