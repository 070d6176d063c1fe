"""A hand-written CIFAR ResNet (option-A shortcuts) with given block-middle widths: the reference a
compacted prunelab network is timed against (engine overhead), with no prunelab code in its path."""

from __future__ import annotations

import torch.nn as nn
import torch.nn.functional as F


class PlainBlock(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride, self.pad = stride, cout - cin

    def forward(self, x):
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + x)


class PlainResNet(nn.Module):
    """Stem 3x3 conv (16), three stages of :class:`PlainBlock` (16, 32, 64 wide trunks, strides 1, 2, 2),
    global average pool, linear classifier; ``mids`` gives each block's middle width in order."""

    def __init__(self, mids, blocks_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers, cin, i = [], 16, 0
        for s, cout in enumerate((16, 32, 64)):
            for b in range(blocks_per_stage):
                layers.append(PlainBlock(cin, int(mids[i]), cout, 2 if s > 0 and b == 0 else 1))
                cin, i = cout, i + 1
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.layers(F.relu(self.bn1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
