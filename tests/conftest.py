from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from evosynth.data.idx import write_idx

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def write_fake_mnist(folder: Path, n_train: int = 300, n_test: int = 100, compress=True,
                     seed: int = 0) -> Path:
    """Tiny MNIST-format files whose classes are learnable: class k lights a block."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = divmod(int(k), 5)
            x[i, 4 + 10 * r: 12 + 10 * r, 2 + 5 * c: 6 + 5 * c] = 255
        suffix = ".gz" if compress else ""
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", x, compress=compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", y, compress=compress)
    return folder


@pytest.fixture
def fake_mnist(tmp_path) -> Path:
    return write_fake_mnist(tmp_path / "mnist")
