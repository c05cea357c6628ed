from __future__ import annotations

import os
import subprocess
import sys
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


def write_fake_cifar(folder: Path, per_batch: int = 40, n_test: int = 60, tarball: bool = False,
                     seed: int = 0) -> Path:
    """Files in the official CIFAR-10 binary layout (label byte + 3072 pixel bytes) whose
    classes are learnable: class k paints a block in one colour plane."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    files = {}
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in names:
        n = n_test if name == "test_batch.bin" else per_batch
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = (rng.random((n, 3, 32, 32)) * 80).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = divmod(int(k), 5)
            x[i, int(k) % 3, 4 + 12 * r: 14 + 12 * r, 1 + 6 * c: 6 + 6 * c] = 255
        files[name] = np.concatenate([y[:, None], x.reshape(n, -1)], axis=1).tobytes()
    folder.mkdir(parents=True, exist_ok=True)
    if not tarball:
        sub = folder / "cifar-10-batches-bin"
        sub.mkdir(exist_ok=True)
        for name, blob in files.items():
            (sub / name).write_bytes(blob)
        return folder
    path = folder / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, blob in files.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


@pytest.fixture
def fake_cifar(tmp_path) -> Path:
    return write_fake_cifar(tmp_path / "cifar")


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The ``evosynth`` command in this process: (exit code, stdout, stderr)."""
    from evosynth.cli import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def snapshot(folder: Path) -> dict[Path, bytes]:
    """Every file under ``folder`` with its bytes: what must not change."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def cli_process(*args, kill_at: str | None = None, **kw) -> subprocess.CompletedProcess:
    """The CLI in a fresh single-thread process (``kill_at``: EVOSYNTH_KILL_AT, the fault
    point where it kills itself)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("EVOSYNTH_KILL_AT", None)
    if kill_at:
        env["EVOSYNTH_KILL_AT"] = kill_at
    code = "import torch; torch.set_num_threads(1); from evosynth.cli import main; main()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], env=env,
                          capture_output=True, text=True, check=False, **kw)


def uninterrupted_run(folder: Path, config: str) -> tuple[Path, Path]:
    """The reference run of a kill test: its config file and its run directory."""
    cfg = folder / "c.yaml"
    cfg.write_text(config)
    r = cli_process("evolve", "--config", cfg, "--out", folder / "whole", "--no-progress")
    assert r.returncode == 0, r.stderr
    return cfg, folder / "whole"
