"""MobileNetV2 (CIFAR and ImageNet) and MobileNetV3-small (ImageNet), built from torchvision.

Gated tensors (PFS placement, docs/decisions.md §0.3): the stem, the expansion output of every inverted
residual that has one, and the final 1x1 conv. An expansion's channels run through the depthwise
conv (and the squeeze-excitation of V3) to the projection, so the alive mask is applied again after
the depthwise BatchNorm: without it a switched-off channel would re-appear as BN's constant.
Block outputs (the residual stream) are not pruned.
"""

from __future__ import annotations

import torch.nn as nn
from torchvision.models import mobilenet_v2 as tv_mobilenet_v2
from torchvision.models import mobilenet_v3_small as tv_mobilenet_v3_small
from torchvision.ops.misc import SqueezeExcitation

from .registry import register_model
from .spec import GatedTensor, ModelSpec, conv_op, pool_op

# (expansion t, channels c, repeats n, stride s): ImageNet's setting with the first two strides at 1
CIFAR_SETTING = [[1, 16, 1, 1], [6, 24, 2, 1], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
                 [6, 160, 3, 2], [6, 320, 1, 1]]


def describe_mobilenet(model: nn.Module) -> ModelSpec:
    """Spec of torchvision's MobileNetV2 / MobileNetV3 (see the module docstring)."""
    feats = model.features
    last = len(feats) - 1
    tensors: dict[str, dict] = {}
    ops = []

    def add(name, slot, module, conv, block):
        tensors[name] = dict(name=name, slot=slot, channels=model.get_submodule(module).num_features,
                             module=module, conv=conv, block=block, mask_modules=[])

    add("stem", "stem", "features.0.1", "features.0.0", -1)
    ops.append(conv_op(model, "features.0.0", (), "stem", "features.0.1"))
    current = "stem"  # gated tensor at the input of the next block (None: the fixed stream)
    for i in range(1, last):
        block = feats[i]
        seq_name = "conv" if hasattr(block, "conv") else "block"
        p = f"features.{i}.{seq_name}"
        layers = list(getattr(block, seq_name))
        reads = (current,) if current else ()
        k = 0
        hidden = current
        if isinstance(layers[0], nn.Sequential) and layers[0][0].groups == 1:  # expansion 1x1
            hidden = f"features.{i}.expand"
            add(hidden, "expand", f"{p}.0.1", f"{p}.0.0", i - 1)
            ops.append(conv_op(model, f"{p}.0.0", reads, hidden, f"{p}.0.1"))
            k = 1
        dw_reads = (hidden,) if hidden else ()
        ops.append(conv_op(model, f"{p}.{k}.0", dw_reads, hidden, f"{p}.{k}.1"))
        if hidden:
            tensors[hidden]["mask_modules"].append(f"{p}.{k}.1")
        k += 1
        if isinstance(layers[k], SqueezeExcitation):
            ops.append(conv_op(model, f"{p}.{k}.fc1", dw_reads, None))
            ops.append(conv_op(model, f"{p}.{k}.fc2", (), hidden))
            k += 1
        if isinstance(layers[k], nn.Conv2d):  # V2: bare conv + BN
            ops.append(conv_op(model, f"{p}.{k}", dw_reads, None, f"{p}.{k + 1}"))
        else:  # V3: Conv2dNormActivation without activation
            ops.append(conv_op(model, f"{p}.{k}.0", dw_reads, None, f"{p}.{k}.1"))
        current = None
    add("final", "final", f"features.{last}.1", f"features.{last}.0", -1)
    ops.append(conv_op(model, f"features.{last}.0", (), "final", f"features.{last}.1"))
    linears = [n for n, m in model.classifier.named_children() if isinstance(m, nn.Linear)]
    if hasattr(model, "avgpool"):
        ops.append(pool_op(model, "avgpool", ("final",)))
    reads = ("final",)
    for n in linears:
        ops.append(conv_op(model, f"classifier.{n}", reads))
        reads = ()
    gated = [GatedTensor(**{**d, "mask_modules": tuple(d["mask_modules"])}) for d in tensors.values()]
    return ModelSpec("", gated, ops)


SLOT_SETS = {"internal": ("stem", "expand", "final"), "outputs": ("stem", "expand", "final")}

@register_model(describe=describe_mobilenet, family="mobilenet", slot_sets=SLOT_SETS, reference_kwargs={"width_mult": 1.0})
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0) -> nn.Module:
    """MobileNetV2 for CIFAR: torchvision's network with stride 1 in the stem and first stages."""
    model = tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult,
                            inverted_residual_setting=CIFAR_SETTING)
    model.features[0][0].stride = (1, 1)
    return model


@register_model(describe=describe_mobilenet, family="mobilenet", slot_sets=SLOT_SETS, input_size=(3, 224, 224), num_classes=1000,
                reference_kwargs={"width_mult": 1.0})
def mobilenetv2_imagenet(num_classes: int = 1000, width_mult: float = 1.0) -> nn.Module:
    """torchvision's MobileNetV2 (ImageNet, 224x224)."""
    return tv_mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult)


@register_model(describe=describe_mobilenet, family="mobilenet", slot_sets=SLOT_SETS, input_size=(3, 224, 224), num_classes=1000)
def mobilenetv3_small_imagenet(num_classes: int = 1000) -> nn.Module:
    """torchvision's MobileNetV3-small (ImageNet, 224x224)."""
    return tv_mobilenet_v3_small(weights=None, num_classes=num_classes)
