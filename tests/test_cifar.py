"""CIFAR-10 in its official binary layout, the data options and the seeded augmentation."""

import urllib.request

import numpy as np
import pytest
import torch

from evosynth.config import DataConfig
from evosynth.data import load_dataset
from evosynth.data.augment import crop_flip
from evosynth.data.cifar import MEAN, STD, load_cifar10
from evosynth.errors import UserError

from .conftest import write_fake_cifar


def test_folder_and_tarball_read_the_same_records(tmp_path):
    folder = write_fake_cifar(tmp_path / "a")
    tarball = write_fake_cifar(tmp_path / "b", tarball=True)
    (tr_a, te_a, k), (tr_b, te_b, _) = load_cifar10(str(folder)), load_cifar10(str(tarball))
    assert k == 10 and tr_a.x.shape == (200, 3, 32, 32) and te_a.x.shape == (60, 3, 32, 32)
    assert torch.equal(tr_a.x, tr_b.x) and torch.equal(te_a.y, te_b.y)
    # byte 0 is the label, then 1024 red, 1024 green, 1024 blue pixels, row-major
    raw = (folder / "cifar-10-batches-bin" / "data_batch_1.bin").read_bytes()
    assert int(tr_a.y[0]) == raw[0]
    blue = np.frombuffer(raw[1 + 2048:1 + 3072], dtype=np.uint8).reshape(32, 32)
    expect = (torch.from_numpy(blue.astype(np.float32)) / 255 - MEAN[2]) / STD[2]
    assert torch.allclose(tr_a.x[0, 2], expect)
    assert tr_a.augment is crop_flip and te_a.augment is None


def test_bad_files_get_one_line_errors(tmp_path, monkeypatch):
    folder = write_fake_cifar(tmp_path / "c")
    batch = folder / "cifar-10-batches-bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-5])
    with pytest.raises(UserError, match=r"data_batch_3\.bin.*whole number of 3073-byte"):
        load_cifar10(str(folder))
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tarball")
    with pytest.raises(UserError, match=r"not a readable \.tar\.gz"):
        load_cifar10(str(tmp_path / "junk.tar.gz"))

    def offline(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(UserError, match=r"put cifar-10-binary\.tar\.gz .* there") as exc:
        load_cifar10(str(tmp_path / "empty"))
    assert "\n" not in str(exc.value)
    assert not any((tmp_path / "empty").glob("*.part"))


def test_crop_flip_is_seeded_and_a_real_crop():
    x = torch.randn(16, 3, 32, 32)
    y = torch.arange(16)
    a, ya = crop_flip(x, y, torch.Generator().manual_seed(1))
    b, _ = crop_flip(x, y, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.shape == x.shape and torch.equal(ya, y)
    assert not torch.equal(a, crop_flip(x, y, torch.Generator().manual_seed(2))[0])
    # each output is a shifted (maybe mirrored) window of the zero-padded input
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(16):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)


def test_data_options_resize_repeat_and_limit(fake_mnist):
    cfg = DataConfig(size=32, channels=3, train_limit=100, test_limit=30)
    splits = load_dataset("mnist", str(fake_mnist), 0.1, torch.Generator().manual_seed(0), cfg)
    assert splits.input_shape == (3, 32, 32)
    assert len(splits.train) + len(splits.val) == 100 and len(splits.test) == 30
    assert torch.equal(splits.train.x[:, 0], splits.train.x[:, 2])
    assert splits.train.augment is None
    aug = load_dataset("mnist", str(fake_mnist), 0.1, torch.Generator().manual_seed(0),
                       DataConfig(augment="crop-flip"))
    assert aug.train.augment is crop_flip and aug.val.augment is None
    with pytest.raises(UserError, match="flip-shift is for detection"):
        load_dataset("mnist", str(fake_mnist), 0.1, torch.Generator().manual_seed(0),
                     DataConfig(augment="flip-shift"))


def test_shift_translates_digits_without_mirroring():
    from evosynth.data.augment import shift

    x = torch.randn(12, 1, 28, 28)
    a, _ = shift(x, torch.arange(12), torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(12):
        windows = [padded[i, :, r:r + 28, c:c + 28] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], w) for w in windows)
    assert not torch.equal(a, x)
