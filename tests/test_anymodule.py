"""Models this project did not write: compaction is exact, or refused in one clear line; never
a silently different network."""

from __future__ import annotations

import copy

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


def compact_exactly(res, example, batch):
    """The run's best network compacted, checked against the masked one on ``batch``."""
    from evosynth.compact import output_tensor
    from evosynth.inputs import call

    c = compact(res.best_model, example, res.best_genome.masks)
    with torch.no_grad():
        want = output_tensor(call(res.best_model.eval(), batch))
        assert torch.allclose(output_tensor(call(c.model.eval(), batch)), want, atol=1e-5)
    return c


def test_layernorm_width_is_a_boundary_and_compaction_stays_exact(tmp_path):
    """A LayerNorm mixes its channels: the layer writing them keeps every filter (it still
    loses synapses), nothing is removed across the normalization, and the compact network
    is the masked one."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.LayerNorm(64), nn.GELU(), nn.Linear(64, 4))
    # its only filters are protected: by default (no synaptic pressure) nothing could
    # evolve, which is refused in one line before anything is written
    with pytest.raises(evosynth.UserError, match=r"nothing can evolve.*synapse_share"):
        evolve(model, tmp_path, "refused")
    assert not (tmp_path / "refused").exists()
    res = evosynth.evolve(model, (X, Y), (X[:200], Y[:200]), run_dir=tmp_path / "ln",
                          config={**CONFIG, "evolution": {
                              **CONFIG["evolution"], "environment": {"synapse_share": 0.5}}},
                          log=lambda s: None)
    assert res.run_dir.summary()["compaction"] == "exact"
    last = res.history[-1]
    assert last["layers"]["0"]["filters"] == 64  # the normalized width is whole
    assert last["layers"]["0"]["synapses"] < 64 * 32  # but its synapses evolved
    assert last["synapses"] < res.history[0]["synapses"]
    compact_exactly(res, X[:2], X[:50])


class Encoder(nn.Module):
    """A transformer classifier built from PyTorch's own layer (post-norm, as defaulted)."""

    def __init__(self, batch_first: bool = True):
        super().__init__()
        self.batch_first = batch_first
        self.inp = nn.Linear(16, 32)
        self.enc = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=batch_first)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = self.enc(self.inp(x) if self.batch_first else self.inp(x).transpose(0, 1))
        return self.head(h.mean(1 if self.batch_first else 0))


class ExplicitAttention(nn.Module):
    """nn.MultiheadAttention called directly, its q/k/v width the residual width."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        h = self.inp(x)
        a, _ = self.attn(h, h, h)
        return self.head((h + a).mean(1))


SEQ = torch.randn(600, 8, 16, generator=torch.Generator().manual_seed(1))
SEQ_Y = SEQ[:, :, :4].sum(1).argmax(1)


@pytest.mark.parametrize("make", [Encoder, ExplicitAttention,
                                  lambda: Encoder(batch_first=False)])
def test_attention_evolves_by_whole_heads_and_compacts_exactly(tmp_path, make):
    torch.manual_seed(0)
    cfg = {**CONFIG, "evolution": {"generations": 3, "max_drop": None,
                                   "environment": {"pressure": 0.4}}}
    res = evosynth.evolve(make(), (SEQ, SEQ_Y), (SEQ[:200], SEQ_Y[:200]), config=cfg,
                          run_dir=tmp_path / "r", log=lambda s: None)
    assert res.run_dir.summary()["compaction"] == "exact"
    name = "attn" if make is ExplicitAttention else "enc.self_attn"
    first, last = res.history[0], res.history[-1]
    assert first["heads"] == 4 and 1 <= last["heads"] < 4
    parts = res.best_genome.masks[name].reshape(3, 4, 8, 32).any(-1).any(-1)  # (q|k|v, head)
    assert torch.equal(parts.all(0), parts.any(0)), "a head lives or dies whole"
    per_head = parts.all(0)
    c = compact_exactly(res, SEQ[:2], SEQ[:50])
    attn = c.model.get_submodule(name)
    assert attn.num_heads == int(per_head.sum()) < 4
    assert attn.out_proj.in_features == 8 * attn.num_heads
    assert last["compact_params"] < first["compact_params"]


def test_head_pruned_attention_equals_the_masked_attention_under_every_mask():
    """The replacement computes what MultiheadAttention computed with dead heads zeroed:
    batch first or not, unbatched, attention and padding masks (2-D, 3-D per head, bool,
    float), causal, with and without attention weights; a dead head's v bias folds into the
    output bias."""
    from evosynth.attention import shrink_heads

    torch.manual_seed(0)
    for batch_first in (True, False):
        mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).double().eval()
        dead = torch.tensor([False, True, False, True])
        with torch.no_grad():
            for h in torch.nonzero(dead).flatten().tolist():
                rows = slice(32 + 4 * h, 32 + 4 * (h + 1))  # v rows of head h
                mha.in_proj_weight[rows] = 0
                mha.in_proj_bias[rows] = 0.3  # a constant v: folded into the output bias
        holder = nn.Module()
        holder.attn = mha
        twin = copy.deepcopy(holder)
        ref = copy.deepcopy(mha)
        assert shrink_heads(holder, twin, "attn", dead)
        small = holder.attn
        assert small.num_heads == 2
        b, t = 3, 5
        x = torch.randn((b, t, 16) if batch_first else (t, b, 16), dtype=torch.float64)
        pad = torch.zeros(b, t, dtype=torch.bool)
        pad[0, -2:] = True
        causal = torch.ones(t, t, dtype=torch.bool).triu(1)
        per_head = torch.randn(b * 4, t, t, dtype=torch.float64)
        cases = [{}, {"key_padding_mask": pad}, {"attn_mask": causal},
                 {"attn_mask": causal.double() * -1e9}, {"attn_mask": per_head},
                 {"attn_mask": causal, "key_padding_mask": pad}]
        for kw in cases:
            for need in (False, True):
                a, wa = ref(x, x, x, need_weights=need, average_attn_weights=False, **kw)
                o, wo = small(x, x, x, need_weights=need, average_attn_weights=False, **kw)
                assert torch.allclose(a, o, atol=1e-10), kw
                if need:  # the attention weights of the heads that live
                    assert torch.allclose(wa[:, ~dead], wo, atol=1e-10), kw
        xu = torch.randn(t, 16, dtype=torch.float64)
        assert torch.allclose(ref(xu, xu, xu)[0], small(xu, xu, xu)[0], atol=1e-10)


def test_batchnorm_mlp_compacts_exactly(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.GELU(), nn.Linear(64, 4))
    res = evolve(model, tmp_path, "bn")
    assert res.run_dir.summary()["compaction"] == "exact"
    c = compact_exactly(res, X[:2], X[:50])
    assert c.removed, "nothing was removed: the test would prove nothing"


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
        compact_exactly(res, tokens[:2], tokens[:20])
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
    compact_exactly(res, X[:2], X[:50])  # the README's call


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
    c = compact_exactly(res, x[:2], x[:50])
    assert c.model.c1.out_channels == c.model.up.in_channels == 8 - dead


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
    compact_exactly(res, x[:2], x[:50])


def test_hugging_face_bert_evolves_by_heads_and_neurons_and_compacts_exactly(tmp_path):
    """A tiny BertForSequenceClassification, built locally: its outputs' .logits are the
    class scores; its q/k/v attention evolves by whole heads (q, k, v rows and the output
    projection's columns together) and dead heads leave the compact network
    (num_attention_heads shrinks); feed-forward neurons evolve too; the residual stream
    keeps its width."""
    transformers = pytest.importorskip("transformers", reason="pip install 'evosynth[hf]'")
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=48,
                                  max_position_embeddings=16, num_labels=3,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(cfg)
    tokens = torch.randint(1, 50, (500, 12), generator=torch.Generator().manual_seed(0))
    labels = tokens[:, 0] % 3
    res = evosynth.evolve(
        model, (tokens, labels), (tokens[:100], labels[:100]),
        config={"evolution": {"generations": 3, "max_drop": None,
                              "environment": {"pressure": 0.4}},
                "ancestor_train": {"epochs": 6, "optimizer": "adamw", "lr": 0.003},
                "train": {"epochs": 1, "optimizer": "adamw", "lr": 0.001}},
        run_dir=tmp_path / "bert", log=lambda s: None)
    assert res.run_dir.summary()["compaction"] == "exact"
    first, last = res.history[0], res.history[-1]
    assert first["val_accuracy"] > 0.9, "the ancestor did not learn"
    assert first["heads"] == 8 and last["heads"] < 8
    masks = res.best_genome.masks
    att = "bert.encoder.layer.0.attention"
    per_head = [masks[f"{att}.self.{p}"].reshape(4, -1).any(1) for p in ("query", "key", "value")]
    assert torch.equal(per_head[0], per_head[1]) and torch.equal(per_head[1], per_head[2])
    dead_cols = ~per_head[2].repeat_interleave(8)
    assert not masks[f"{att}.output.dense"][:, dead_cols].any()
    ffn = "bert.encoder.layer.0.intermediate.dense"
    assert last["layers"][ffn]["filters"] < 48
    assert last["layers"][f"{att}.output.dense"]["filters"] == 32  # the stream is whole
    c = compact_exactly(res, tokens[:2], tokens[:40])
    small = c.model.get_submodule(f"{att}.self")
    assert small.num_attention_heads == int(per_head[2].sum()) < 4
    assert small.query.out_features == 8 * small.num_attention_heads
    assert c.model.get_submodule(ffn).out_features == last["layers"][ffn]["filters"]


class TwoInputs(nn.Module):
    """Two tensors in, by position or by name (an image-like and a tabular branch)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 24)
        self.b = nn.Linear(6, 8)
        self.head = nn.Linear(32, 4)

    def forward(self, x, extra):
        return self.head(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(extra))], 1))


@pytest.mark.parametrize("named", [False, True])
def test_a_model_of_two_inputs_takes_a_tuple_or_a_dict(tmp_path, named):
    extra = torch.randn(600, 6, generator=torch.Generator().manual_seed(2))
    inputs = {"x": X, "extra": extra} if named else (X, extra)
    test = {"x": X[:200], "extra": extra[:200]} if named else (X[:200], extra[:200])
    torch.manual_seed(0)
    res = evosynth.evolve(TwoInputs(), (inputs, Y), (test, Y[:200]),
                          config={**CONFIG, "ancestor_train": {"epochs": 12}},
                          run_dir=tmp_path / "r", log=lambda s: None)
    assert res.history[0]["val_accuracy"] > 0.6
    assert res.history[-1]["synapses"] < res.history[0]["synapses"]
    assert res.run_dir.summary()["compaction"] == "exact"
    from evosynth.inputs import Inputs

    def first(n):
        return (Inputs(kwargs={"x": X[:n], "extra": extra[:n]}) if named
                else Inputs((X[:n], extra[:n])))

    compact_exactly(res, first(2), first(50))


def test_inputs_of_different_lengths_are_one_line(tmp_path):
    with pytest.raises(evosynth.UserError, match="different numbers of examples"):
        evosynth.evolve(TwoInputs(), ((X, torch.randn(10, 6)), Y), config=CONFIG,
                        run_dir=tmp_path / "r", log=lambda s: None)


class Counted(torch.utils.data.Dataset):
    """Examples made on demand (as a dataset too big for memory would read them), counted."""

    def __init__(self, x, y):
        self.x, self.y, self.reads = x, y, 0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        self.reads += 1
        return self.x[i], self.y[i]


def test_a_data_loader_is_streamed_every_epoch_and_runs_repeat(tmp_path):
    from torch.utils.data import DataLoader

    def run(name):
        train = Counted(X[200:], Y[200:])
        loader = DataLoader(train, batch_size=64, shuffle=True,
                            generator=torch.Generator().manual_seed(0))
        val = DataLoader(Counted(X[:200], Y[:200]), batch_size=100)
        torch.manual_seed(0)
        res = evosynth.evolve(nn.Sequential(nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4)),
                              loader, val_data=val,
                              config={**CONFIG, "ancestor_train": {"epochs": 10}},
                              run_dir=tmp_path / name, log=lambda s: None)
        return res, train.reads

    res, reads = run("a")
    # 10 ancestor epochs and 2 offspring epochs, each a pass over the 400 examples
    assert reads >= 400 * 12, reads
    assert res.history[0]["val_accuracy"] > 0.5
    assert res.history[-1]["synapses"] < res.history[0]["synapses"]
    again, _ = run("b")
    strip = [{k: v for k, v in r.items() if k not in ("wall_seconds", "latency_ms")}
             for r in res.history]
    assert strip == [{k: v for k, v in r.items() if k not in ("wall_seconds", "latency_ms")}
                     for r in again.history]
    with pytest.raises(evosynth.UserError, match="pass val_data too"):
        evosynth.evolve(nn.Linear(32, 4), DataLoader(Counted(X, Y), batch_size=64),
                        config=CONFIG, run_dir=tmp_path / "c", log=lambda s: None)


def test_vit_with_dead_heads_and_neurons_compacts_exports_and_reloads(tmp_path):
    """The registry's ViT: heads and feed-forward neurons killed by masks leave the compact
    network, which equals the masked one, exports to ONNX (checked by onnxruntime) and
    reloads from safetensors."""
    from evosynth.clusters import prunable_layers
    from evosynth.export import export_onnx, export_safetensors, load_safetensors
    from evosynth.genome import Genome
    from evosynth.models.vit import ViT

    torch.manual_seed(0)
    net = ViT(dim=16, depth=2, heads=4, mlp=24).eval()
    layers = prunable_layers(net)
    assert [layers[n].kind for n in layers].count("attention") == 2
    masks = Genome.dense(net, layers).masks
    masks["blocks.0.self_attn"].view(3, 4, 4, 16)[:, 1:3] = False  # heads 1 and 2
    masks["blocks.1.linear1"][10:] = False
    masks["blocks.1.linear2"][:, 10:] = False
    x = torch.randn(8, 1, 28, 28)
    c = compact(net, x[:2], masks)
    assert c.removed == {"blocks.0.self_attn": 2, "blocks.1.linear1": 14}
    small = c.model.eval()
    with torch.no_grad():
        from evosynth.genome import apply_param_masks, weight_masks

        apply_param_masks(net, weight_masks(masks, layers))
        assert torch.allclose(small(x), net(x), atol=1e-5)
    export_safetensors(small, tmp_path / "v.safetensors", {})
    back = load_safetensors(ViT(dim=16, depth=2, heads=4, mlp=24), tmp_path / "v.safetensors")
    with torch.no_grad():
        assert torch.equal(back(x), small(x))
    pytest.importorskip("onnxruntime")
    assert export_onnx(small, x, tmp_path / "v.onnx") < 1e-4


def test_a_python_run_says_in_one_line_how_to_export_it(tmp_path, capsys):
    from .conftest import run_cli

    torch.manual_seed(0)
    evolve(nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4)), tmp_path, "py")
    assert evosynth.RunDir(tmp_path / "py").config().model == "python:Sequential"
    for args in (("export", tmp_path / "py"), ("resume", tmp_path / "py")):
        code, _, err = run_cli(capsys, *args)
        assert code == 2 and "made from Python" in err and "export_onnx(compact(" in err
        assert len(err.strip().splitlines()) == 1
