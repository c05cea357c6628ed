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


class Tagger(nn.Module):
    """Token ids in, a class per token out: (N, T) int64 -> (N, T, C)."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 16)
        self.rnn = nn.GRU(16, 24, batch_first=True)
        self.hidden = nn.Linear(24, 32)
        self.out = nn.Linear(32, 3)

    def forward(self, tokens):
        h, _ = self.rnn(self.embed(tokens))
        return self.out(torch.relu(self.hidden(h)))


def test_int64_tokens_with_per_token_targets(tmp_path):
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 20, (400, 7), generator=g)
    tags = tokens % 3  # learnable per token
    torch.manual_seed(0)
    res = evosynth.evolve(Tagger(), (tokens, tags), (tokens[:100], tags[:100]),
                          config={**CONFIG, "measure": {"costs": False},
                                  "ancestor_train": {"epochs": 15, "optimizer": "adam",
                                                     "lr": 0.01}},
                          run_dir=tmp_path / "tagger", log=lambda s: None)
    for r in res.history:
        assert 0 <= r["val_accuracy"] <= 1 and 0 <= r["test_accuracy"] <= 1
    assert res.history[0]["val_accuracy"] > 0.6, "the tagger did not learn per token"
    assert res.history[-1]["synapses"] < res.history[0]["synapses"]
    summary = res.run_dir.summary()["compaction"]
    if summary == "exact":  # exact, or refused in words; never silently different
        c = compact(res.best_model, tokens[:2], res.best_genome.masks)
        with torch.no_grad():
            assert torch.allclose(c.model(tokens[:20]), res.best_model(tokens[:20]), atol=1e-5)
    else:
        assert "compaction" in summary


def test_targets_that_cannot_match_the_outputs_are_one_line(tmp_path):
    tokens = torch.randint(0, 20, (50, 7))
    with pytest.raises(evosynth.UserError, match="cannot match outputs"):
        evosynth.evolve(Tagger(), (tokens, torch.zeros(50, 5, dtype=torch.long)),
                        config=CONFIG, run_dir=tmp_path / "r", log=lambda s: None)


def test_compact_takes_the_masks_of_a_run_with_exclusions(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(),
                          nn.Linear(32, 4))
    res = evosynth.evolve(model, (X, Y), config={**CONFIG, "encoding": {"exclude": ["0"]}},
                          run_dir=tmp_path / "ex", log=lambda s: None)
    assert set(res.best_genome.masks) == {"2", "4"}
    c = compact(res.best_model, X[:2], res.best_genome.masks)  # the README's call
    with torch.no_grad():
        assert torch.allclose(c.model(X[:50]), res.best_model.eval()(X[:50]), atol=1e-5)


class Upsampler(nn.Module):
    """A transposed convolution between two convolutions (a decoder's shape)."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.up = nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.c2 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 16 * 16, 2)

    def forward(self, x):
        h = torch.relu(self.up(torch.relu(self.c1(x))))
        return self.fc(torch.relu(self.c2(h)).flatten(1))


def test_conv_transpose_is_a_boundary_whose_dead_inputs_are_removed(tmp_path):
    """Transposed convs stay dense (not evolved), but the dead filters feeding them leave
    the network, and the transposed conv's inputs shrink to match, exactly."""
    torch.manual_seed(0)
    x = torch.randn(300, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()
    res = evosynth.evolve(Upsampler(), (x, y), config={
        **CONFIG, "evolution": {"generations": 2, "max_drop": None,
                                "environment": {"pressure": 0.4}}},
        run_dir=tmp_path / "up", log=lambda s: None)
    assert "up" not in res.best_genome.masks
    dead = int((~res.best_genome.masks["c1"].reshape(8, -1).any(1)).sum())
    assert dead > 0, "no filter of c1 died: the test would prove nothing"
    c = compact(res.best_model, x[:2], res.best_genome.masks)
    assert c.model.c1.out_channels == c.model.up.in_channels == 8 - dead
    with torch.no_grad():
        assert torch.allclose(c.model(x[:50]), res.best_model.eval()(x[:50]), atol=1e-5)


class FlattenCat(nn.Module):
    """A flattened conv map concatenated with a dense branch of the same input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.dense = nn.Linear(64, 8)
        self.fc = nn.Linear(4 * 64 + 8, 2)

    def forward(self, x):
        a = torch.relu(self.conv(x)).flatten(1)
        return self.fc(torch.cat([a, torch.relu(self.dense(x.flatten(1)))], 1))


def test_flatten_and_concat_evolves_and_compacts_exactly(tmp_path):
    """Was an IndexError: Torch-Pruning maps the dense branch's channels outside its size;
    that group is left uncoupled (said in a warning) and the rest stays exact."""
    torch.manual_seed(0)
    x = torch.randn(300, 1, 8, 8)
    y = (x.mean((1, 2, 3)) > 0).long()
    with pytest.warns(UserWarning, match="not coupled"):
        res = evosynth.evolve(FlattenCat(), (x, y), config={
            **CONFIG, "evolution": {"generations": 2, "max_drop": None,
                                    "environment": {"pressure": 0.4}}},
            run_dir=tmp_path / "cat", log=lambda s: None)
    assert res.history[-1]["synapses"] < res.history[0]["synapses"]
    assert res.run_dir.summary()["compaction"] == "exact"
    c = compact(res.best_model, x[:2], res.best_genome.masks)
    with torch.no_grad():
        assert torch.allclose(c.model(x[:50]), res.best_model.eval()(x[:50]), atol=1e-5)
