"""ResNet-50 for ImageNet, torchvision's definition.

Gated tensors: the outputs of conv1 (``mid1``) and conv2 (``mid2``) of every bottleneck (PFS and
DDNP placement, D10). The residual stream is not pruned.
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import resnet50 as tv_resnet50

from .registry import register_model
from .spec import GatedTensor, ModelSpec, conv_op, pool_op


def describe_bottleneck_resnet(model: nn.Module) -> ModelSpec:
    tensors, ops = [], [conv_op(model, "conv1", (), None, "bn1")]
    for s in range(1, 5):
        for b, block in enumerate(getattr(model, f"layer{s}")):
            p = f"layer{s}.{b}"
            for j in (1, 2):
                tensors.append(GatedTensor(f"{p}.mid{j}", f"mid{j}", getattr(block, f"bn{j}").num_features,
                                           f"{p}.bn{j}", f"{p}.conv{j}", s, b))
            ops.append(conv_op(model, f"{p}.conv1", (), f"{p}.mid1", f"{p}.bn1"))
            ops.append(conv_op(model, f"{p}.conv2", (f"{p}.mid1",), f"{p}.mid2", f"{p}.bn2"))
            ops.append(conv_op(model, f"{p}.conv3", (f"{p}.mid2",), None, f"{p}.bn3"))
            if block.downsample is not None:
                ops.append(conv_op(model, f"{p}.downsample.0", (), None, f"{p}.downsample.1"))
    ops.append(pool_op(model, "avgpool"))
    ops.append(conv_op(model, "fc"))
    return ModelSpec("", tensors, ops)


SLOT_SETS = {"internal": ("mid1", "mid2"), "outputs": ("mid1", "mid2")}

@register_model(describe=describe_bottleneck_resnet, family="resnet_imagenet", slot_sets=SLOT_SETS, input_size=(3, 224, 224),
                num_classes=1000)
def resnet50_imagenet(num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-50 (ImageNet, 224x224; 4.09 G MACs)."""
    return tv_resnet50(weights=None, num_classes=num_classes)
