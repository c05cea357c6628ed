"""Export: ONNX matches PyTorch under onnxruntime; safetensors + JSON reloads exactly."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

import evosynth
from evosynth.api import load_run
from evosynth.compact import compact
from evosynth.config import validate
from evosynth.export import export_onnx, export_safetensors, load_safetensors
from evosynth.models.lenet import LeNet5

from .conftest import run_cli


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("r") / "run"
    cfg = validate({"model": "lenet5", "dataset": "digits",
                    "evolution": {"generations": 2, "max_drop": None,
                                  "environment": {"kind": "schedule"}},
                    "encoding": {"cluster_factor": 0.6, "granularity": "filter"},
                    "ancestor_train": {"epochs": 1}, "train": {"epochs": 1}})
    evosynth.run(cfg, out, progress=False, log=lambda s: None)
    return out


def test_onnx_matches_pytorch(run, tmp_path):
    r = load_run(run)
    model, genome, example = r.model, r.genome, r.example
    small = compact(model, example, genome.masks).model
    assert small.conv1.out_channels < 20
    diff = export_onnx(small, example, tmp_path / "m.onnx")
    assert diff <= 1e-4
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(33, 1, 28, 28)  # another batch size: the batch axis is dynamic
    got = sess.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        assert np.abs(got - model(x).numpy()).max() <= 1e-4


def test_safetensors_reload_computes_the_same(run, tmp_path):
    r = load_run(run, generation=2)
    model, genome, example = r.model, r.genome, r.example
    small = compact(model, example, genome.masks).model
    export_safetensors(small, tmp_path / "m.safetensors", {"model": "lenet5"})
    back = load_safetensors(LeNet5(), tmp_path / "m.safetensors")
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(back(x), small(x))
        assert (back(x) - model(x)).abs().max() <= 1e-5


def test_cli_export(run, monkeypatch, capsys):
    from .test_cli import cli

    code, out, _ = cli(monkeypatch, capsys, "export", run, "--format", "onnx")
    assert code == 0 and "max abs diff" in out
    code, _, err = cli(monkeypatch, capsys, "export", run, "--generation", "9")
    assert code == 2 and "generation 9 is not complete" in err


def test_a_run_moved_away_from_its_data_loads_where_the_data_now_is(fake_mnist, tmp_path,
                                                                   monkeypatch, capsys):
    """``load_run(..., data_dir=)`` and ``evosynth export --data-dir``: a run directory
    copied to another machine (a GPU box, say) reads its data from where it lies there,
    and rebuilds the same generation; without it, a one-line error (exit 2)."""
    from evosynth.errors import UserError

    cfg = validate({"model": "lenet5", "dataset": "mnist", "data_dir": str(fake_mnist),
                    "evolution": {"generations": 1, "max_drop": None,
                                  "environment": {"kind": "schedule"}},
                    "ancestor_train": {"epochs": 1}, "train": {"epochs": 1}})
    evosynth.run(cfg, tmp_path / "run", progress=False, log=lambda s: None)
    here = load_run(tmp_path / "run", 1)
    moved = fake_mnist.rename(tmp_path / "elsewhere")

    def offline(*a, **k):
        raise OSError("no network in tests")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(UserError):
        load_run(tmp_path / "run", 1)
    there = load_run(tmp_path / "run", 1, data_dir=moved)
    assert torch.equal(there.example, here.example)
    theirs = there.model.state_dict()
    for n, a in here.model.state_dict().items():
        assert torch.equal(a, theirs[n]), n
    code, _, err = run_cli(capsys, "export", str(tmp_path / "run"), "--out",
                           str(tmp_path / "m.onnx"))
    assert code == 2 and "MNIST is not in" in err and not (tmp_path / "m.onnx").exists()
    code, out, _ = run_cli(capsys, "export", str(tmp_path / "run"), "--out",
                           str(tmp_path / "m.onnx"), "--data-dir", str(moved))
    assert code == 0 and (tmp_path / "m.onnx").is_file() and "wrote" in out
