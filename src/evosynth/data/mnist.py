"""MNIST from the original IDX files: ``.gz`` or raw, from a folder, or downloaded."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from . import TensorData
from .idx import read_idx

# md5 of the *decompressed* official files (the release's own checksums)
FILES = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
           "https://storage.googleapis.com/cvdf-datasets/mnist/")
MEAN, STD = 0.1307, 0.3081
DEFAULT_DIR = "~/.cache/evosynth/mnist"


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def _download(folder: Path) -> None:
    for stem, md5 in FILES.items():
        if _find(folder, stem):
            continue
        last: Exception | None = None
        for mirror in MIRRORS:
            try:
                with urllib.request.urlopen(mirror + stem + ".gz", timeout=30) as r:
                    blob = r.read()
            except OSError as exc:
                last = exc
                continue
            if hashlib.md5(gzip.decompress(blob)).hexdigest() != md5:
                raise UserError(f"downloaded {stem}.gz fails its md5 check; not saved")
            folder.mkdir(parents=True, exist_ok=True)  # only once there is a file to keep
            tmp = folder / f".{stem}.gz.part"
            tmp.write_bytes(blob)
            os.replace(tmp, folder / f"{stem}.gz")
            break
        else:
            raise UserError(f"MNIST is not in {folder} and could not be downloaded ({last}); "
                            f"put {', '.join(s + '.gz' for s in FILES)} (or the raw files) "
                            "there, or pass --data-dir")


def _folder(data_dir: str | None) -> Path:
    folder = Path(data_dir or os.environ.get("EVOSYNTH_MNIST", DEFAULT_DIR)).expanduser()
    if folder.exists() and not folder.is_dir():
        raise UserError(f"--data-dir {folder} is a file; name the folder holding the MNIST "
                        "files")
    if not all(_find(folder, s) for s in FILES):
        _download(folder)
    return folder


def load_mnist_arrays(data_dir: str | None, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of ``train`` or ``t10k``."""
    folder = _folder(data_dir)
    return (read_idx(_find(folder, f"{prefix}-images-idx3-ubyte")),
            read_idx(_find(folder, f"{prefix}-labels-idx1-ubyte")))


def load_mnist(data_dir: str | None) -> tuple[TensorData, TensorData, int]:
    folder = _folder(data_dir)
    arrays = {s: read_idx(_find(folder, s)) for s in FILES}

    def pair(prefix: str) -> TensorData:
        images = arrays[f"{prefix}-images-idx3-ubyte"]
        labels = arrays[f"{prefix}-labels-idx1-ubyte"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{folder}: {prefix} images {images.shape} and labels "
                            f"{labels.shape} do not pair up")
        x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
        return TensorData((x - MEAN) / STD, torch.from_numpy(labels.astype(np.int64)))

    return pair("train"), pair("t10k"), 10
