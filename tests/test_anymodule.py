"""Models this project did not write: compaction is exact, or refused in one clear line; never
a silently different network."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import evosynth
from evosynth.compact import CompactionError, compact

torch.manual_seed(0)
X = torch.randn(600, 32)
Y = X[:, :4].argmax(1)
CONFIG = {"evolution": {"generations": 2, "max_drop": None}, "ancestor_train": {"epochs": 3},
          "train": {"epochs": 1}}


def evolve(model, tmp_path, name, **kw):
    return evosynth.evolve(model, (X, Y), (X[:200], Y[:200]), config=CONFIG,
                           run_dir=tmp_path / name, log=lambda s: None, **kw)


def test_layernorm_mlp_is_refused_not_silently_wrong(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 4))
    res = evolve(model, tmp_path, "ln")
    summary = res.run_dir.summary()
    assert summary["compaction"].startswith("compaction would change what the network")
    assert "1 (LayerNorm)" in summary["compaction"]
    assert "compact_macs" not in res.history[-1]  # no costs of a network we cannot build
    assert res.history[-1]["synapses"] < res.history[0]["synapses"]  # evolution went on
    with pytest.raises(CompactionError, match="LayerNorm"):
        compact(res.best_model, X[:2], res.best_genome.masks)


def test_batchnorm_mlp_compacts_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.GELU(), nn.Linear(64, 4))
    res = evolve(model, tmp_path, "bn")
    assert res.run_dir.summary()["compaction"] == "exact"
    c = compact(res.best_model, X[:2], res.best_genome.masks)
    assert c.removed, "nothing was removed: the test would prove nothing"
    with torch.no_grad():
        assert torch.allclose(c.model(X[:50]), res.best_model.eval()(X[:50]), atol=1e-5)


def test_untraceable_model_says_compaction_is_off(tmp_path, monkeypatch):
    """When Torch-Pruning's tracer fails, the run says so once, records it and evolves
    masked; compaction refuses in one line instead of silently removing nothing."""
    import torch_pruning as tp

    def fail(*args, **kwargs):
        raise RuntimeError("an op the tracer does not know")

    monkeypatch.setattr(tp.DependencyGraph, "build_dependency", fail)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.warns(UserWarning, match="compaction is off"):
        res = evolve(model, tmp_path, "untraceable")
    assert "cannot trace" in res.run_dir.summary()["compaction"]
    assert res.history[-1]["synapses"] < res.history[0]["synapses"]
    with pytest.warns(UserWarning), pytest.raises(CompactionError, match="cannot trace"):
        compact(res.best_model, X[:2], res.best_genome.masks)


def test_compaction_check_catches_a_wrong_network():
    """The check itself: a compact network that differs is refused, naming the module."""
    from evosynth.compact import verify

    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))
    b = nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))
    b.load_state_dict(a.state_dict())
    verify(a, b, [X[:4]])  # equal: passes
    with torch.no_grad():
        b[2].bias += 0.1
    with pytest.raises(CompactionError, match="first seen at module 2"):
        verify(a, b, [X[:4]])
