"""BAR's wide ResNet for CIFAR (docs/decisions.md §4.1, B11, B12).

Three stages of ``blocks_per_stage`` post-activation basic blocks with widths 16k/32k/64k, a
16-channel stem, and a 1x1 conv + BN projection on the first block of *every* stage (stage 1
included). With ``blocks_per_stage=4, k=12`` it has 28 gated tensors (1 stem, 12 mid, 12 delta,
3 proj) holding 12,112 channels; V0 = 3,112,960, 7.544 G MACs (1.509e10 FLOP), 52.5 M params.
ChipNet calls this network "WRN-26-12"; Zagoruyko's 6N+4 convention would say "WRN-28-12".

The ``cpu`` scale uses k = 1 (V0 = 274,432; 55.2 M MACs) [unverified; B15].
"""

from __future__ import annotations

from .registry import register_model
from .resnet_cifar import SLOT_SETS, CifarResNet, describe_cifar_resnet


@register_model(describe=describe_cifar_resnet, family="resnet_cifar", slot_sets=SLOT_SETS)
def bar_wrn(blocks_per_stage: int = 4, k: int = 12, num_classes: int = 10) -> CifarResNet:
    """BAR's wide ResNet: stages of 16k/32k/64k channels, projections on every stage."""
    n = blocks_per_stage
    return CifarResNet((n, n, n), (16 * k, 32 * k, 64 * k), 16, "proj", num_classes)
