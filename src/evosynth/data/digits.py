"""scikit-learn's 8x8 digits, upsampled to 28x28: MNIST-shaped data that needs no download."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from . import TensorData

TEST_FRACTION = 0.2


def load_digits() -> tuple[TensorData, TensorData, int]:
    try:
        from sklearn.datasets import load_digits as sk_digits
    except ImportError:
        raise UserError("the digits data set needs scikit-learn: "
                        "pip install 'evosynth[digits]'") from None
    d = sk_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(d.target, dtype=torch.int64)
    # a fixed split (not the run seed): the test set must not move between runs
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(1797))
    n_test = int(len(y) * TEST_FRACTION)
    test, train = perm[:n_test], perm[n_test:]
    return TensorData(x[train], y[train]), TensorData(x[test], y[test]), 10
