"""A corpus of user mistakes: each gets exit code 2 and one line, never a traceback, and
no file that existed before changes."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from evosynth import UserError, evolve
from evosynth.data.idx import write_idx

from .conftest import run_cli, write_fake_mnist

QUICK = ["--model", "lenet300", "--dataset", "digits", "--generations", "1", "--epochs", "1",
         "--ancestor-epochs", "1", "--no-progress"]
TAIL = "1.5 1.6 3.9 -3 1.7 8 0.1"


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "run"
    from evosynth.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["evolve", *QUICK, "--out", str(out)])
    assert exc.value.code == 0
    return out


def hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_exit_2(capsys, *args, expect: str) -> None:
    code, _, err = run_cli(capsys, *args)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("evosynth: error:"), err
    assert "Traceback" not in err
    assert expect in lines[0], lines[0]


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncate" else b"\x00garbage\xff")


# (setup, argv with {run}/{tmp}, expected words); setup(run_copy, tmp) makes the mistake
def _meta_missing_key(run, tmp):
    import json

    p = run / "generations" / "1" / "metrics.json"
    m = json.loads(p.read_text())
    del m["synapses"]
    p.write_text(json.dumps(m))


RUN_CASES = {
    "weights truncated, resume": (
        lambda r, t: corrupt(r / "generations/1/weights.safetensors", "truncate"),
        ["resume", "{run}"], "weights.safetensors is damaged"),
    "masks garbage, export": (
        lambda r, t: corrupt(r / "generations/1/masks.safetensors", "garbage"),
        ["export", "{run}", "--generation", "1", "--format", "safetensors", "--out",
         "{tmp}/m.safetensors"], "masks.safetensors is damaged"),
    "metrics garbage, resume": (
        lambda r, t: corrupt(r / "generations/1/metrics.json", "garbage"),
        ["resume", "{run}"], "metrics.json is damaged"),
    "metrics lacks a key, resume": (_meta_missing_key, ["resume", "{run}"], "no synapses"),
    "history garbage, show": (
        lambda r, t: corrupt(r / "history.jsonl", "garbage"), ["show", "{run}"],
        "history.jsonl is damaged"),
    "summary garbage, show": (
        lambda r, t: corrupt(r / "summary.json", "truncate"), ["show", "{run}"],
        "summary.json is damaged"),
    "summary garbage, export": (
        lambda r, t: corrupt(r / "summary.json", "garbage"),
        ["export", "{run}", "--out", "{tmp}/m.onnx"], "summary.json is damaged"),
    "config garbage, resume": (
        lambda r, t: (r / "config.yaml").write_text("model: [lenet5\n"), ["resume", "{run}"],
        "config.yaml is damaged"),
    "config garbage, export": (
        lambda r, t: (r / "config.yaml").write_bytes(b"\xff\xfe\x00"), ["export", "{run}"],
        "config.yaml is damaged"),
    "export over the run's summary": (
        lambda r, t: None,
        ["export", "{run}", "--format", "safetensors", "--out", "{run}/summary.safetensors"],
        "one of the run's own files"),
    "export weights named .json": (
        lambda r, t: None, ["export", "{run}", "--format", "safetensors", "--out", "{tmp}/m.json"],
        "would overwrite it"),
    "export into a folder": (
        lambda r, t: (t / "d").mkdir(), ["export", "{run}", "--out", "{tmp}/d"], "is a folder"),
    "export over an existing file": (
        lambda r, t: (t / "mine.onnx").write_text("mine"),
        ["export", "{run}", "--out", "{tmp}/mine.onnx"], "pass --force"),
    "force over a run holding a user's file": (
        lambda r, t: (r / "thesis.tex").write_text("years"),
        ["evolve", *QUICK, "--force", "--out", "{run}"], "did not write (thesis.tex)"),
    "force over a run without its marker": (
        lambda r, t: (r / "run.json").unlink(),
        ["evolve", *QUICK, "--force", "--out", "{run}"], "not an evosynth run"),
    "resume with other generations": (
        lambda r, t: None,
        ["evolve", *QUICK[:4], "--generations", "5", "--resume", "--out", "{run}"],
        "evolution.generations (run: 1, given: 5)"),
    "resume of a file": (
        lambda r, t: (t / "f").write_text("x"), ["resume", "{tmp}/f"], "is a file"),
    "show of a missing run": (lambda r, t: None, ["show", "{tmp}/none"], "does not exist"),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_damaged_or_misused_run(finished, tmp_path, capsys, case):
    setup, argv, expect = RUN_CASES[case]
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    setup(run, tmp_path)
    before = hashes(tmp_path)
    one_line_exit_2(capsys, *[a.replace("{run}", str(run)).replace("{tmp}", str(tmp_path))
                              for a in argv], expect=expect)
    assert hashes(tmp_path) == before


def _mnist_with(tmp: Path, label: int | None = None, test_side: int | None = None) -> Path:
    folder = write_fake_mnist(tmp / "mnist", n_train=60, n_test=20)
    if label is not None:
        write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(60, label, np.uint8))
    if test_side is not None:
        write_idx(folder / "t10k-images-idx3-ubyte.gz",
                  np.zeros((20, test_side, test_side), np.uint8))
    return folder


def _kitti(tmp: Path, line: bytes) -> Path:
    from PIL import Image

    root = tmp / "kitti" / "training"
    (root / "image_2").mkdir(parents=True)
    (root / "label_2").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (64, 32)).save(root / "image_2" / f"{i:06d}.png")
        (root / "label_2" / f"{i:06d}.txt").write_bytes(line)
    return tmp / "kitti"


MNIST = ["--model", "lenet5", "--dataset", "mnist", "--no-progress", "--generations", "0",
         "--ancestor-epochs", "1"]
INPUT_CASES = {
    "--data-dir is a file": (
        lambda t: (t / "f.bin").write_text("x"), [*MNIST, "--data-dir", "{tmp}/f.bin"],
        "is a file"),
    "a label of 200": (
        lambda t: _mnist_with(t, label=200), [*MNIST, "--data-dir", "{tmp}/mnist"],
        "range over 200..200"),
    "test images of another size": (
        lambda t: _mnist_with(t, test_side=20), [*MNIST, "--data-dir", "{tmp}/mnist"],
        "test inputs have shape (1, 20, 20)"),
    "KITTI box with inf": (
        lambda t: _kitti(t, f"Car 0 0 0 1 2 inf 9 {TAIL}\n".encode()),
        ["--model", "detectnet-small", "--dataset", "kitti", "--data-dir", "{tmp}/kitti"],
        "not finite"),
    "KITTI label not UTF-8": (
        lambda t: _kitti(t, b"Car \xff\xfe 0 0 1 2 3 4\n"),
        ["--model", "detectnet-small", "--dataset", "kitti", "--data-dir", "{tmp}/kitti"],
        "not UTF-8"),
    "lenet5 on kitti": (
        lambda t: _kitti(t, f"Car 0 0 0 1 2 30 20 {TAIL}\n".encode()),
        ["--model", "lenet5", "--dataset", "kitti", "--data-dir", "{tmp}/kitti"],
        "cannot take the training data"),
    "config not UTF-8": (
        lambda t: (t / "c.yaml").write_bytes(b"model: \xff\xfe\n"),
        ["--config", "{tmp}/c.yaml"], "not UTF-8"),
    "epochs: true": (
        lambda t: (t / "c.yaml").write_text("train: {epochs: true}\n"),
        ["--config", "{tmp}/c.yaml"], "train.epochs"),
    "a NaN factor": (
        lambda t: (t / "c.yaml").write_text("encoding: {cluster_factor: .nan}\n"),
        ["--config", "{tmp}/c.yaml"], "finite number"),
    "schedule factors under the adaptive environment": (
        lambda t: (t / "c.yaml").write_text("encoding: {cluster_factor: 0.5}\n"),
        ["--config", "{tmp}/c.yaml"], "encoding.cluster_factor is a schedule setting"),
    "the width rule under one network-wide budget": (
        lambda t: (t / "c.yaml").write_text("evolution: {environment: {width_exponent: 0.5}}\n"),
        ["--config", "{tmp}/c.yaml"], "set encoding.normalization: budget"),
    "per-layer cluster factors under one network-wide budget": (
        lambda t: (t / "c.yaml").write_text(
            "encoding: {layers: {fc1: {cluster: 0.5}}}\n"
            "evolution: {environment: {kind: schedule}}\n"),
        ["--config", "{tmp}/c.yaml"], "encoding.layers' cluster factors set each layer's"),
    "ancestor weights not safetensors": (
        lambda t: (t / "w.pt").write_bytes(b"\x80\x04pickle"),
        [*QUICK, "--config", "{tmp}/c.yaml"], "w.pt is damaged"),
    "--epochs abc": (lambda t: None, [*QUICK[:4], "--epochs", "abc"], "--epochs:"),
    "--seed 1.5": (lambda t: None, [*QUICK[:4], "--seed", "1.5"], "--seed:"),
    "an unknown flag": (lambda t: None, [*QUICK, "--frobnicate"], "--frobnicate"),
}


@pytest.mark.parametrize("case", INPUT_CASES)
def test_bad_input(tmp_path, capsys, monkeypatch, case):
    monkeypatch.setattr("evosynth.data.mnist.MIRRORS", ("http://127.0.0.1:9/",))
    setup, argv, expect = INPUT_CASES[case]
    setup(tmp_path)
    if case == "ancestor weights not safetensors":
        (tmp_path / "c.yaml").write_text(f"ancestor_weights: {tmp_path}/w.pt\n")
    before = hashes(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    out = [] if "--out" in argv else ["--out", str(tmp_path / "r")]
    one_line_exit_2(capsys, "evolve", *argv, *out, expect=expect)
    assert hashes(tmp_path) == before
    assert not (tmp_path / "r").exists()


def test_missing_out_is_one_line(capsys):
    one_line_exit_2(capsys, "evolve", *QUICK, expect="--out")


@pytest.mark.parametrize("out", ["", ".", "..", "/", "~"])
def test_out_that_can_never_be_a_run(tmp_path, capsys, monkeypatch, out):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / "config.yaml").write_text("lr: 1\n")
    (work / "data.csv").write_text("precious")
    monkeypatch.chdir(work)
    before = hashes(tmp_path)
    one_line_exit_2(capsys, "evolve", *QUICK, "--force", "--out",
                    os.path.expanduser(out), expect="")
    assert hashes(tmp_path) == before


def test_out_a_file_or_a_symlink(tmp_path, capsys):
    (tmp_path / "f").write_text("mine")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    before = hashes(tmp_path)
    one_line_exit_2(capsys, "evolve", *QUICK, "--out", tmp_path / "f", expect="not a folder")
    one_line_exit_2(capsys, "evolve", *QUICK, "--out", tmp_path / "link",
                    expect="symbolic link")
    assert hashes(tmp_path) == before


def test_offline_data_dir_creates_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("evosynth.data.mnist.MIRRORS", ("http://127.0.0.1:9/",))
    one_line_exit_2(capsys, "evolve", *MNIST, "--data-dir", tmp_path / "a" / "b",
                    "--out", tmp_path / "r", expect="could not be downloaded")
    assert not (tmp_path / "a").exists()


NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


@pytest.mark.skipif(os.geteuid() == 0 and not shutil.which("setpriv"),
                    reason="root ignores file permissions and setpriv is missing")
@pytest.mark.parametrize("what", ["out", "export", "data"])
def test_permission_errors_name_the_path(finished, what):
    """Run as an ordinary user (root ignores permissions): read-only places are named."""
    tmp_path = Path(tempfile.mkdtemp())  # pytest's own folders are closed to other users
    tmp_path.chmod(0o777)
    ro = tmp_path / "ro"
    ro.mkdir()
    run = shutil.copytree(finished, tmp_path / "run")
    subprocess.run(["chmod", "-R", "a+rX", str(run)], check=True)
    argv = {"out": ["evolve", *QUICK, "--out", ro / "run"],
            "export": ["export", run, "--out", ro / "m.onnx"],
            "data": ["evolve", *MNIST, "--data-dir", _mnist_with(ro), "--out", tmp_path / "r"]}
    if what == "data":
        for f in ro.rglob("*"):
            f.chmod(0o700 if f.is_dir() else 0o000)
        (ro / "mnist").chmod(0o755)
    ro.chmod(0o555)
    cmd = [*(NOBODY if os.geteuid() == 0 else []), sys.executable, "-m", "evosynth.cli",
           *map(str, argv[what])]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False,
                       env={**os.environ, "HOME": str(tmp_path)})
    subprocess.run(["chmod", "-R", "u+rwX", str(tmp_path)], check=True)
    shutil.rmtree(tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith(f"evosynth: error: permission denied: {ro}"), lines[0]


def test_force_replaces_only_evosynths_run_and_keeps_it_on_failure(finished, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    before = hashes(run)
    one_line_exit_2(capsys, "evolve", *QUICK, "--model", "nope", "--force", "--out", run,
                    expect="unknown model")
    assert hashes(run) == before
    code, _, err = run_cli(capsys, "evolve", *QUICK, "--seed", "3", "--force", "--out", run)
    assert code == 0, err
    assert hashes(run) != before and not list(tmp_path.glob(".run.replaced-*"))


def test_run_files_take_the_umask(finished):
    mask = os.umask(0)
    os.umask(mask)
    assert (finished / "summary.json").stat().st_mode & 0o777 == 0o666 & ~mask


# -- the same mistakes from Python ----------------------------------------------------------
X = torch.randn(40, 1, 8, 8)
Y = torch.arange(40) % 4


def net(dtype=torch.float32):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4)).to(dtype)


PY_CASES = {
    "label out of range": (lambda: (net(), (X, Y + 4), {}), "the model has 4 outputs"),
    "negative label": (lambda: (net(), (X, Y - 1), {}), "range over -1"),
    "one-hot labels": (lambda: (net(), (X, nn.functional.one_hot(Y).float()), {}), "one-hot"),
    "float64 model": (lambda: (net(torch.float64), (X, Y), {}), "cannot take the training"),
    "wrong input shape": (lambda: (net(), (torch.randn(40, 1, 5, 5), Y), {}),
                          "cannot take the training"),
    "config a list": (lambda: (net(), (X, Y), {"config": [1, 2]}), "config: expected"),
    "all-NaN inputs": (lambda: (net(), (torch.full_like(X, float("nan")), Y), {}),
                       "NaN or infinite"),
}


@pytest.mark.parametrize("case", PY_CASES)
def test_python_api_mistakes(case, tmp_path):
    make, expect = PY_CASES[case]
    model, data, kw = make()
    with pytest.raises(UserError, match=expect):
        evolve(model, data, run_dir=tmp_path / "r", log=lambda s: None, **kw)
    assert not (tmp_path / "r").exists()


def test_python_api_takes_a_list_pair(tmp_path):
    res = evolve(net(), [X, Y], config={"evolution": {"generations": 1},
                                        "ancestor_train": {"epochs": 1},
                                        "train": {"epochs": 1}, "measure": {"costs": False}},
                 run_dir=tmp_path / "r", log=lambda s: None)
    assert [r["generation"] for r in res.history] == [0, 1]
