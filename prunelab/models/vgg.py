"""VGG-16 for CIFAR, Network Slimming's variant (Liu et al. 2017), used by NS and PFS.

13 conv3x3-BN-ReLU layers (64...512, no conv bias), four max-pools, a 2x2 average pool and one
linear layer 512 -> classes: 313.20 M MACs, 14.72 M params. Every conv output is a gated tensor.
BN scales start at 0.5 as in NS's code. The average pool is inline in NS/PFS code, so PFS's counter
never counts it; it is not listed as an op here either.
"""

from __future__ import annotations

import torch.nn as nn

from .registry import register_model
from .spec import GatedTensor, ModelSpec, conv_op

CFG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class CifarVGG(nn.Module):
    def __init__(self, cfg=CFG16, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        layers, c_in = [], 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            c = int(round(v * width))
            layers += [nn.Conv2d(c_in, c, 3, 1, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AvgPool2d(2)
        self.classifier = nn.Linear(c_in, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, (2.0 / n) ** 0.5)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def describe_vgg(model: CifarVGG) -> ModelSpec:
    """One gated tensor (slot ``conv``) per conv output; a plain chain."""
    tensors, ops, prev = [], [], ()
    convs = [i for i, m in enumerate(model.features) if isinstance(m, nn.Conv2d)]
    for j, i in enumerate(convs, start=1):
        name = f"conv{j}"
        tensors.append(GatedTensor(name, "conv", model.features[i].out_channels, f"features.{i + 1}",
                                   f"features.{i}", -1, j - 1))
        ops.append(conv_op(model, f"features.{i}", prev, name, f"features.{i + 1}"))
        prev = (name,)
    ops.append(conv_op(model, "classifier", prev))
    return ModelSpec("", tensors, ops)


SLOT_SETS = {"internal": ("conv",), "outputs": ("conv",)}

@register_model(describe=describe_vgg, family="vgg", slot_sets=SLOT_SETS, reference_kwargs={"width": 1.0})
def vgg16(num_classes: int = 10, width: float = 1.0) -> CifarVGG:
    """VGG-16 (NS CIFAR variant). ``width`` multiplies every layer (PFS's expansion: 1.25 = e 80)."""
    return CifarVGG(CFG16, num_classes, width)
