"""The LeNets of the papers' MNIST experiments."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError


class LeNet5(nn.Module):
    """Caffe's LeNet-5: conv 20@5x5, pool, conv 50@5x5, pool, fc 500, relu, fc 10.

    As in Caffe's ``lenet_train_test.prototxt`` the convolutions have no ReLU; 430,500
    weights on 28x28 inputs (500 + 25,000 + 400,000 + 5,000).
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28),
                 conv1: int = 20, conv2: int = 50, hidden: int = 500):
        super().__init__()
        c, h, w = input_shape
        fh, fw = ((h - 4) // 2 - 4) // 2, ((w - 4) // 2 - 4) // 2
        if fh < 1 or fw < 1:
            raise UserError(f"lenet5 needs inputs of at least 16x16, got {h}x{w}")
        self.conv1 = nn.Conv2d(c, conv1, 5)
        self.conv2 = nn.Conv2d(conv1, conv2, 5)
        self.fc1 = nn.Linear(conv2 * fh * fw, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv1(x), 2)
        x = F.max_pool2d(self.conv2(x), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class LeNet300(nn.Module):
    """LeNet-300-100: a 784-300-100-10 perceptron with ReLUs (266,200 weights on MNIST)."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, ...] = (1, 28, 28),
                 hidden: tuple[int, int] = (300, 100)):
        super().__init__()
        n_in = int(torch.Size(input_shape).numel())
        self.fc1 = nn.Linear(n_in, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.fc3 = nn.Linear(hidden[1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))
