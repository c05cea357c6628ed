"""CIFAR-10 from the official *binary* release: records of 1 label byte + 3072 pixel bytes
(1024 red, 1024 green, 1024 blue, row-major 32x32). No pickle is ever read."""

from __future__ import annotations

import hashlib
import os
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import TensorData
from .augment import crop_flip

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
TARBALL = "cifar-10-binary.tar.gz"
MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # the release's published checksum
TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST = ("test_batch.bin",)
RECORD = 1 + 3 * 32 * 32
# per-channel mean and standard deviation of the training images, the usual constants
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
DEFAULT_DIR = "~/.cache/evosynth/cifar10"


def parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(raw) == 0 or len(raw) % RECORD:
        raise UserError(f"{where}: {len(raw)} bytes is not a whole number of "
                        f"{RECORD}-byte CIFAR-10 records")
    rec = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = rec[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise UserError(f"{where}: label {labels.max()} outside 0-9; not a CIFAR-10 batch")
    return rec[:, 1:].reshape(-1, 3, 32, 32), labels


def _read_folder(folder: Path) -> dict[str, bytes] | None:
    for d in (folder, folder / "cifar-10-batches-bin"):
        if all((d / n).is_file() for n in TRAIN + TEST):
            return {n: (d / n).read_bytes() for n in TRAIN + TEST}
    return None


def _read_tarball(path: Path) -> dict[str, bytes]:
    out = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                name = Path(member.name).name
                if member.isfile() and name in TRAIN + TEST:
                    out[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable .tar.gz ({exc})") from None
    missing = [n for n in TRAIN + TEST if n not in out]
    if missing:
        raise UserError(f"{path}: missing {', '.join(missing)}; expected the binary release "
                        f"{TARBALL}")
    return out


def _download(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(URL, timeout=60) as r:
            blob = r.read()
    except OSError as exc:
        raise UserError(f"CIFAR-10 is not in {folder} and could not be downloaded ({exc}); "
                        f"put {TARBALL} (or its extracted cifar-10-batches-bin folder) there, "
                        "or pass --data-dir") from None
    if hashlib.md5(blob).hexdigest() != MD5:
        raise UserError(f"downloaded {TARBALL} fails its md5 check; not saved")
    tmp = folder / f".{TARBALL}.part"
    tmp.write_bytes(blob)
    os.replace(tmp, folder / TARBALL)
    return folder / TARBALL


def load_cifar10(data_dir: str | None, augment: bool = True
                 ) -> tuple[TensorData, TensorData, int]:
    """``data_dir``: the tarball, its folder, or the extracted folder. Training data gets
    random 4-pixel-padded crops and horizontal flips when ``augment``."""
    root = Path(data_dir or os.environ.get("EVOSYNTH_CIFAR10", DEFAULT_DIR)).expanduser()
    if root.is_file():
        files = _read_tarball(root)
    elif (files := _read_folder(root)) is None:
        tarball = root / TARBALL
        files = _read_tarball(tarball if tarball.is_file() else _download(root))
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)

    def join(names) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [parse_batch(files[n], f"{root}: {n}") for n in names]
        x = torch.from_numpy(np.concatenate([p[0] for p in parts])).float() / 255.0
        return (x - mean) / std, torch.from_numpy(np.concatenate([p[1] for p in parts]))

    train, test = join(TRAIN), join(TEST)
    return (TensorData(*train, augment=crop_flip if augment else None),
            TensorData(*test), 10)
