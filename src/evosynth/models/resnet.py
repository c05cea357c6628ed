"""He et al. (2016) CIFAR ResNets: 6n+2 layers, three stages of n basic blocks.

Shortcuts are identities inside a stage. Where a stage doubles the width and halves the
resolution, the shortcut is a 1x1 convolution with stride 2 followed by BatchNorm (the
paper's option B; its CIFAR runs used option A, zero-padded identities, which has no
weights and cannot be pruned channel by channel). With option B, ResNet-56 on 32x32 RGB
has 851,504 weights in its convolutions and linear layer (855,770 parameters with BatchNorm
and the classifier's bias).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """``depth`` = 6n + 2; ``widths`` of the three stages (16, 32, 64 in the paper)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32),
                 depth: int = 56, widths: Sequence[int] = (16, 32, 64)):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise UserError(f"a CIFAR ResNet's depth is 6n+2 (20, 32, 44, 56, 110), got {depth}")
        if len(widths) != 3 or min(widths) < 1:
            raise UserError(f"widths must be three positive stage widths, got {list(widths)}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, c_in = [], widths[0]
        for s, width in enumerate(widths):
            blocks = []
            for b in range(n):
                blocks.append(BasicBlock(c_in, width, 2 if s > 0 and b == 0 else 1))
                c_in = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[2], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def resnet56(num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32),
             depth: int = 56, widths: Sequence[int] = (16, 32, 64)) -> CifarResNet:
    return CifarResNet(num_classes, input_shape, depth, widths)
