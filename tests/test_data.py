"""Data: IDX reading (.gz and raw), validation split, clear errors."""

import gzip
import hashlib

import numpy as np
import pytest
import torch

from evosynth.data import TensorData, load_dataset, split_validation
from evosynth.data import mnist as mnist_mod
from evosynth.data.idx import read_idx, write_idx
from evosynth.errors import UserError

from .conftest import SHARED_MNIST, write_fake_mnist


def test_idx_roundtrip_gz_and_raw(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        p = tmp_path / f"a{compress}"
        write_idx(p, a, compress=compress)
        assert np.array_equal(read_idx(p), a)


def test_idx_errors(tmp_path):
    p = tmp_path / "bad"
    p.write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(UserError, match="bad magic"):
        read_idx(p)
    a = np.zeros((5, 2), np.uint8)
    write_idx(p, a, compress=False)
    p.write_bytes(p.read_bytes()[:-1])
    with pytest.raises(UserError, match="bytes follow"):
        read_idx(p)


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_loader_reads_both_forms(tmp_path, compress):
    folder = write_fake_mnist(tmp_path / "m", n_train=50, n_test=20, compress=compress)
    s = load_dataset("mnist", str(folder), 0.2, torch.Generator().manual_seed(0))
    assert len(s.train) == 40 and len(s.val) == 10 and len(s.test) == 20
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10
    assert s.train.x.dtype == torch.float32 and s.train.y.dtype == torch.int64


def test_missing_offline_names_the_files(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist_mod, "MIRRORS", ("http://127.0.0.1:9/",))
    with pytest.raises(UserError) as exc:
        load_dataset("mnist", str(tmp_path), 0.1, torch.Generator())
    msg = str(exc.value)
    assert str(tmp_path) in msg and "train-images-idx3-ubyte.gz" in msg and "\n" not in msg


def test_download_verifies_checksum(tmp_path, monkeypatch):
    """A mirror serving wrong bytes is refused and nothing is saved."""
    served = write_fake_mnist(tmp_path / "served", n_train=10, n_test=10)

    class Resp:
        def __init__(self, url):
            self.blob = (served / url.rsplit("/", 1)[1]).read_bytes()

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return False

        def read(self):
            return self.blob

    monkeypatch.setattr(mnist_mod.urllib.request, "urlopen", lambda url, timeout: Resp(url))
    with pytest.raises(UserError, match="md5"):
        load_dataset("mnist", str(tmp_path / "dl"), 0.1, torch.Generator())
    assert not any((tmp_path / "dl").glob("*.gz"))
    # with the right checksums the same files are accepted and cached
    sums = {s: hashlib.md5(gzip.decompress((served / f"{s}.gz").read_bytes())).hexdigest()
            for s in mnist_mod.FILES}
    monkeypatch.setattr(mnist_mod, "FILES", sums)
    s = load_dataset("mnist", str(tmp_path / "dl"), 0.1, torch.Generator())
    assert len(s.test) == 10 and len(list((tmp_path / "dl").glob("*.gz"))) == 4


def test_validation_split_is_seeded_and_disjoint():
    d = TensorData(torch.arange(100).float().unsqueeze(1), torch.arange(100))
    tr, va = split_validation(d, 0.1, torch.Generator().manual_seed(1))
    _tr2, va2 = split_validation(d, 0.1, torch.Generator().manual_seed(1))
    assert torch.equal(va.y, va2.y) and len(va) == 10 and len(tr) == 90
    assert not set(tr.y.tolist()) & set(va.y.tolist())


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST not beside the repo")
def test_real_mnist_matches_its_readme():
    s = load_dataset("mnist", str(SHARED_MNIST), 0.1, torch.Generator().manual_seed(0))
    assert len(s.train) + len(s.val) == 60000 and len(s.test) == 10000
    counts = torch.bincount(s.test.y, minlength=10).tolist()
    assert counts == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
