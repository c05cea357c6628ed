"""AlexNet sized for 32x32 CIFAR images.

The variant of pytorch-classification (Wei Yang), common in the CIFAR pruning literature:
AlexNet's five convolutions with their ImageNet widths and kernels, a stride-4 first layer
so that 32x32 inputs shrink as 224x224 ones did, and one linear classifier on the 256
features left at 1x1:

    conv1 64@11x11 s4 p5, relu, maxpool 2 | conv2 192@5x5 p2, relu, maxpool 2 |
    conv3 384@3x3 p1, relu | conv4 256@3x3 p1, relu | conv5 256@3x3 p1, relu, maxpool 2 |
    fc 10

2,471,104 weights on 32x32 RGB with 10 classes (23,232 + 307,200 + 663,552 + 884,736 +
589,824 + 2,560), 2,472,266 parameters with the biases. ``widths`` narrows it for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class AlexNetCifar(nn.Module):
    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (3, 32, 32),
                 widths: Sequence[int] = (64, 192, 384, 256, 256)):
        super().__init__()
        if len(widths) != 5 or min(widths) < 1:
            raise UserError(f"widths must be five positive layer widths, got {list(widths)}")
        c, h, w = input_shape
        if h < 16 or w < 16:
            raise UserError(f"alexnet-cifar needs inputs of at least 16x16, got {h}x{w}")
        w1, w2, w3, w4, w5 = widths
        self.conv1 = nn.Conv2d(c, w1, 11, 4, 5)
        self.conv2 = nn.Conv2d(w1, w2, 5, 1, 2)
        self.conv3 = nn.Conv2d(w2, w3, 3, 1, 1)
        self.conv4 = nn.Conv2d(w3, w4, 3, 1, 1)
        self.conv5 = nn.Conv2d(w4, w5, 3, 1, 1)
        side = lambda n: (((n + 10 - 11) // 4 + 1) // 2 // 2) // 2  # noqa: E731
        self.fc = nn.Linear(w5 * side(h) * side(w), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.conv4(F.relu(self.conv3(x))))
        x = F.max_pool2d(F.relu(self.conv5(x)), 2)
        return self.fc(x.flatten(1))
