"""DetectNet (NVIDIA DIGITS, 2016): GoogLeNet cut at stride 16 made fully convolutional, and
a 1x1 head that writes, per grid cell, one coverage logit per class and four box-corner
offsets per class (``evosynth.detection.grid``).

Backbone as in Szegedy et al. 2015 up to inception 4e: conv 7x7/2 64, max pool 3/2,
conv 1x1 64, conv 3x3 192, max pool 3/2, inception 3a-3b, max pool 3/2, inception 4a-4e
(832 channels). Each convolution is followed by BatchNorm and ReLU (the BN-GoogLeNet of
Ioffe & Szegedy; the 2015 network used local response normalization and trained far more
slowly). DetectNet's coverage and box heads are two 1x1 convolutions on the same features;
here they are one (its first C outputs are coverage, the next 4C boxes), the same function
with one output layer for the encoding to protect. Inception blocks concatenate their
branches: evosynth's coupling and compaction follow the concatenation, so a branch filter
that dies takes its slice of the next block's input with it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError

# (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj) of inception 3a, 3b, 4a, 4b, 4c, 4d, 4e
GOOGLENET = ((64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64),
             (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
             (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
             (256, 160, 320, 32, 128, 128))
STRIDE = 16


def conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, k // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Inception(nn.Module):
    def __init__(self, c_in: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pp: int):
        super().__init__()
        self.b1 = conv_bn(c_in, c1, 1)
        self.b3 = nn.Sequential(conv_bn(c_in, c3r, 1), conv_bn(c3r, c3, 3))
        self.b5 = nn.Sequential(conv_bn(c_in, c5r, 1), conv_bn(c5r, c5, 5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(c_in, pp, 1))
        self.out_channels = c1 + c3 + c5 + pp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class DetectNet(nn.Module):
    """``width`` scales every channel count; ``blocks`` (3-7) keeps inception 3a, 3b and
    the first ``blocks - 2`` of 4a-4e."""

    stride = STRIDE

    def __init__(self, num_classes: int = 3, input_shape: tuple[int, ...] = (3, 384, 1248),
                 width: float = 1.0, blocks: int = 7):
        super().__init__()
        if not 3 <= blocks <= 7:
            raise UserError(f"detectnet: blocks must be 3-7 (inception 3a .. 4e), got {blocks}")
        c, h, w = input_shape
        if h % STRIDE or w % STRIDE:
            raise UserError(f"detectnet needs image sides that are multiples of {STRIDE}, "
                            f"got {h}x{w}")

        def s(n: int) -> int:
            return max(1, round(n * width))

        self.stem = nn.Sequential(conv_bn(c, s(64), 7, 2), nn.MaxPool2d(3, 2, 1),
                                  conv_bn(s(64), s(64), 1), conv_bn(s(64), s(192), 3),
                                  nn.MaxPool2d(3, 2, 1))
        layers, c_in = [], s(192)
        for i, spec in enumerate(GOOGLENET[:blocks]):
            if i == 2:
                layers.append(nn.MaxPool2d(3, 2, 1))
            block = Inception(c_in, *(s(v) for v in spec))
            layers.append(block)
            c_in = block.out_channels
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv2d(c_in, 5 * num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.stem(x)))


def detectnet(num_classes: int = 3, input_shape: tuple[int, ...] = (3, 384, 1248),
              width: float = 1.0, blocks: int = 7) -> DetectNet:
    return DetectNet(num_classes, input_shape, width, blocks)


def detectnet_small(num_classes: int = 3, input_shape: tuple[int, ...] = (3, 128, 128),
                    width: float = 0.25, blocks: int = 4) -> DetectNet:
    """A quarter of the channels and inception 3a, 3b, 4a, 4b: for CPUs and tests."""
    return DetectNet(num_classes, input_shape, width, blocks)
