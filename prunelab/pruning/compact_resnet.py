"""Compaction rules of CIFAR ResNets (shortcut A, B, projections; BAR's WRN).

Residual trunks whose contributors have different alive sets use BAR's mixed-connectivity block
(supplement Algorithm 1): the input's alive channels are gathered by index, the projection's and the
delta's outputs are scattered into the trunk. The trunk of a stage is held at the width of the union
of its contributors, not at the full width (same result, less memory than Algorithm 1's
``zeros(batch, N_res, h, w)``); line 3's ``x_out <- i_in`` is read as ``x_out <- x_in`` (a typo; see
docs/decisions.md §4.4). A block whose ``mid`` set is empty adds BN's constant (gate x beta - gate x
gamma x mu / sigma) instead of its convs; a block whose ``delta`` set is empty has no branch at all.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import PrunelabError
from ..models.resnet_cifar import ShortcutA
from ..models.spec import ModelSpec
from .compact import FamilyCompaction, _Alive, _positions, register_family


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



def _exists(root, path) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


@register_family("resnet_cifar")
class CifarResNetCompaction(FamilyCompaction):
    """CIFAR ResNets (and BAR's WRN): every block becomes a :class:`MixedBasicBlock`."""

    def may_be_empty(self, op) -> bool:
        return op.name.endswith((".conv1", ".conv2")) or ".shortcut" in op.name

    def check_structure(self, spec, alive, family) -> None:
        """A trunk's members may keep different sets (the mixed block gathers and scatters them); only the
        blocks' convs and projections may lose every channel (the rules BAR's studies were run with)."""
        for op in spec.ops:
            if op.kind == "pool" or self.may_be_empty(op):
                continue
            empty_out = bool(op.writes) and len(alive.of(op.writes)) == 0
            if empty_out or (op.reads and len(alive.union(op.reads)) == 0):
                which = op.writes if empty_out else ", ".join(op.reads)
                raise PrunelabError(f"structure leaves no channel in {which}, which disconnects the network at "
                                    f"{op.name}; keep at least one channel there")

    def rebuild(self, new, spec, alive) -> None:
        _compact_blocks(new, spec, alive)

    def kept_conv_bn(self, new, pairs):
        return [(c, b) for c, b in pairs if _exists(new, c) and _exists(new, b)]

    def expand_extra(self, dense, compact_model, alive) -> None:
        # constant branches (an empty mid) -> the dense block's BN bias
        for s, layer in enumerate(compact_model.stages, start=1):
            for b, block in enumerate(layer):
                if getattr(block, "branch", "conv") == "const":
                    delta = torch.as_tensor(alive.of(f"layer{s}.{b}.delta"), dtype=torch.long)
                    dense.get_submodule(f"layer{s}.{b}.bn2").bias[delta] = block.delta_const.cpu()


def _compact_blocks(new, spec: ModelSpec, alive: _Alive) -> None:
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
