"""CIFAR ResNets (He et al. 2016, §4.2): 3 stages of basic blocks at 32²/16²/8².

Shortcut options (docs/decisions.md §0.2, G1):

* ``"A"`` (default): identity; where the stride is 2 and the width doubles, spatial subsampling
  plus zero-padded new channels. No parameters. The residual trunk is never pruned.
* ``"B"``: 1x1 strided conv + BN wherever the stride or width changes (PFS).
* ``"conv_nobn"``: 1x1 strided conv without BN (ManiDP's CIFAR code).
* ``"proj"``: 1x1 conv + BN on the first block of *every* stage, stage 1 included (BAR's WRN).

With B, conv_nobn and proj the trunk is prunable: the stem, projections and block deltas are gated
tensors whose alive channels unite in the trunk (docs/decisions.md §4.4).
"""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model
from .spec import GatedTensor, ModelSpec, conv_op, pool_op

SHORTCUTS = ("A", "B", "conv_nobn", "proj")


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad ``extra`` channels (half each side)."""

    def __init__(self, stride: int, extra: int):
        super().__init__()
        self.stride, self.extra = stride, extra

    def forward(self, x):
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.extra:
            half = self.extra // 2
            x = F.pad(x, (0, 0, 0, 0, half, self.extra - half))
        return x

    def extra_repr(self):
        return f"stride={self.stride}, extra={self.extra}"


class BasicBlock(nn.Module):
    """Post-activation basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A", first_in_stage=False):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        changes = stride != 1 or in_planes != planes
        if shortcut == "proj" and first_in_stage or shortcut == "B" and changes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
        elif shortcut == "conv_nobn" and changes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
        elif shortcut == "A" and changes:
            self.shortcut = ShortcutA(stride, planes - in_planes)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, three stages of :class:`BasicBlock`, global average pool, linear classifier.

    Args:
        blocks: blocks per stage, e.g. ``(3, 3, 3)`` for ResNet-20.
        widths: channels of the three stages.
        stem_width: channels of the stem conv (default ``widths[0]``).
        shortcut: one of :data:`SHORTCUTS`.
    """

    def __init__(self, blocks=(3, 3, 3), widths=(16, 32, 64), stem_width: int | None = None,
                 shortcut: str = "A", num_classes: int = 10):
        super().__init__()
        if shortcut not in SHORTCUTS:
            from ..errors import ConfigError

            raise ConfigError(f"unknown shortcut {shortcut!r}; valid: {', '.join(SHORTCUTS)}")
        stem_width = stem_width or widths[0]
        self.shortcut_kind = shortcut
        self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        in_planes = stem_width
        for s, (n, w) in enumerate(zip(blocks, widths), start=1):
            layer = []
            for b in range(n):
                stride = 2 if s > 1 and b == 0 else 1
                layer.append(BasicBlock(in_planes, w, stride, shortcut, first_in_stage=b == 0))
                in_planes = w
            self.add_module(f"layer{s}", nn.Sequential(*layer))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def stages(self):
        return [self.layer1, self.layer2, self.layer3]

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))


def describe_cifar_resnet(model: CifarResNet) -> ModelSpec:
    """Gated tensors: ``mid`` and ``delta`` of every block; ``stem`` and ``proj`` when the trunk is
    prunable (all shortcuts but A). Trunk channels are the union of their contributors."""
    prunable_trunk = model.shortcut_kind != "A"
    tensors, ops = [], []
    first = model.layer1[0]
    stem_in_trunk = isinstance(first.shortcut, nn.Identity)
    if prunable_trunk:
        tensors.append(GatedTensor("stem", "stem", model.bn1.num_features, "bn1", "conv1", 0, -1,
                                   trunk="stage1" if stem_in_trunk else None))
    ops.append(conv_op(model, "conv1", writes="stem" if prunable_trunk else None, bn="bn1"))
    members = ["stem"] if prunable_trunk else []
    for s, layer in enumerate(model.stages, start=1):
        for b, block in enumerate(layer):
            p = f"layer{s}.{b}"
            reads = tuple(members)
            planes = block.bn1.num_features
            tensors.append(GatedTensor(f"{p}.mid", "mid", planes, f"{p}.bn1", f"{p}.conv1", s, b))
            ops.append(conv_op(model, f"{p}.conv1", reads, f"{p}.mid", f"{p}.bn1"))
            sc = block.shortcut
            if isinstance(sc, (nn.Sequential, nn.Conv2d)):
                conv, bn = (f"{p}.shortcut.0", f"{p}.shortcut.1") if isinstance(sc, nn.Sequential) else (f"{p}.shortcut", None)
                if prunable_trunk:
                    tensors.append(GatedTensor(f"{p}.proj", "proj", planes, bn or conv, conv, s, b, trunk=f"stage{s}"))
                ops.append(conv_op(model, conv, reads, f"{p}.proj" if prunable_trunk else None, bn))
                members = [f"{p}.proj"] if prunable_trunk else []
            tensors.append(GatedTensor(
                f"{p}.delta", "delta", planes, f"{p}.bn2", f"{p}.conv2", s, b,
                block_input=tuple(members), trunk=f"stage{s}" if prunable_trunk else None))
            ops.append(conv_op(model, f"{p}.conv2", (f"{p}.mid",), f"{p}.delta", f"{p}.bn2"))
            if prunable_trunk:
                members = members + [f"{p}.delta"]
    ops.append(pool_op(model, "pool", tuple(members)))
    ops.append(conv_op(model, "fc", tuple(members)))
    return ModelSpec("", tensors, ops)


def _resnet(depth: int, shortcut: str, width: int, num_classes: int) -> CifarResNet:
    n = (depth - 2) // 6
    return CifarResNet((n, n, n), (width, 2 * width, 4 * width), width, shortcut, num_classes)


SLOT_SETS = {"internal": ("mid",), "outputs": ("stem", "mid", "delta", "proj")}

@register_model(describe=describe_cifar_resnet, family="resnet_cifar", slot_sets=SLOT_SETS, reference_kwargs={"width": 16})
def resnet20(shortcut: str = "A", width: int = 16, num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR (0.27 M params, 40.55 M MACs with shortcut A). ``width`` is the base
    width c (stages c, 2c, 4c): PFS's expansion sets it."""
    return _resnet(20, shortcut, width, num_classes)


@register_model(describe=describe_cifar_resnet, family="resnet_cifar", slot_sets=SLOT_SETS, reference_kwargs={"width": 16})
def resnet32(shortcut: str = "A", width: int = 16, num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR."""
    return _resnet(32, shortcut, width, num_classes)


@register_model(describe=describe_cifar_resnet, family="resnet_cifar", slot_sets=SLOT_SETS, reference_kwargs={"width": 16})
def resnet56(shortcut: str = "A", width: int = 16, num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR (125.49 M MACs with shortcut A, 125.75 M with B)."""
    return _resnet(56, shortcut, width, num_classes)


@register_model(describe=describe_cifar_resnet, family="resnet_cifar", slot_sets=SLOT_SETS, reference_kwargs={"width": 16})
def resnet110(shortcut: str = "A", width: int = 16, num_classes: int = 10) -> CifarResNet:
    """ResNet-110 for CIFAR."""
    return _resnet(110, shortcut, width, num_classes)
