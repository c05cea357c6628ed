"""CUDA: what the method promises on the CPU holds on a GPU (skipped where there is none; CI
has none, so these run on a lent GPU machine: the README's "On a GPU")."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import evosynth
from evosynth.clusters import prunable_layers
from evosynth.compact import compact
from evosynth.detection.grid import nms
from evosynth.encoding import Environment
from evosynth.rundir import RunDir
from evosynth.seeding import generator

from .test_compact import MODELS, kill, masked_copy, randomize_bn
from .test_encoding import lenet_and_encoding, weights_and_masks
from .test_evolution import Crash, crash_after_gen1, quick, strip

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.mark.parametrize("enc", [{}, {"normalization": "global", "strength": "group"},
                                 {"normalization": "global", "scale": "rank"}])
def test_an_offspring_drawn_on_cuda_is_the_one_drawn_on_the_cpu(enc):
    """Same generator state, same masks, wherever the weights live: a run moved between a
    laptop and a GPU breeds the same offspring."""
    model, layers, encoding = lenet_and_encoding(coupled=True, **enc)
    w, m = weights_and_masks(model, layers)
    env = Environment(cluster=0.6, synapse=0.8, kernel=0.9)
    for e in (None, env):
        on_cpu = encoding.sample(w, m, 1, generator(0, "t"), e)
        on_gpu = encoding.sample({n: t.cuda() for n, t in w.items()},
                                 {n: t.cuda() for n, t in m.items()}, 1, generator(0, "t"), e)
        for name in layers:
            assert on_gpu[name].device.type == "cuda"
            assert torch.equal(on_gpu[name].cpu(), on_cpu[name]), name


@pytest.mark.parametrize("normalization", ["budget", "global"])
def test_a_kernel_phase_offspring_drawn_on_cuda_is_the_one_drawn_on_the_cpu(normalization):
    """The kernel phase's per-kernel draw (one chance per conv kernel, a filter keeps its
    most probable kernel) gives the same masks on the GPU as on the CPU, and kills some."""
    from evosynth.config import EnvironmentConfig
    from evosynth.environment import factors

    model, layers, encoding = lenet_and_encoding(granularity="filter",
                                                 normalization=normalization)
    w, m = weights_and_masks(model, layers)
    env = factors(EnvironmentConfig(kernel_phase=True), 0.4, phase="kernels")
    on_cpu = encoding.sample(w, m, 1, generator(0, "t"), env)
    on_gpu = encoding.sample({n: t.cuda() for n, t in w.items()},
                             {n: t.cuda() for n, t in m.items()}, 1, generator(0, "t"), env)
    assert int(on_cpu["conv2"].sum()) < int(m["conv2"].sum())
    for name in layers:
        assert torch.equal(on_gpu[name].cpu(), on_cpu[name]), name


@pytest.mark.parametrize("name", list(MODELS))
def test_compaction_on_cuda_is_exact(name):
    cls, shape = MODELS[name]
    torch.manual_seed(0)
    model = cls().eval()
    randomize_bn(model)
    masks = kill(model, prunable_layers(model), seed=3)
    ex = torch.randn(8, *shape)
    ref = masked_copy(model, masks, True, ex).cuda()
    c = compact(ref, ex.cuda(), {n: t.cuda() for n, t in masks.items()})
    assert next(c.model.parameters()).device.type == "cuda"
    x = torch.randn(64, *shape, device="cuda")
    with torch.no_grad():
        assert (c.model(x) - ref(x)).abs().max() <= 1e-4  # TF32 convolutions round coarser


def test_a_cuda_run_keeps_dead_synapses_dead_and_resumes_exactly(tmp_path):
    cfg = quick(device="cuda", evolution={"offspring": 2})
    whole = evosynth.run(cfg, tmp_path / "whole", progress=False, log=lambda s: None)
    rd = RunDir(tmp_path / "whole")
    assert json.loads(rd.marker.read_text())["device"] == "cuda"
    for g in range(4):
        d = rd.generation_dir(g)
        weights = load_file(str(d / "weights.safetensors"))
        for layer, mask in load_file(str(d / "masks.safetensors")).items():
            assert torch.all(weights[f"{layer}.weight"][mask == 0] == 0), (g, layer)
    with pytest.raises(Crash):
        evosynth.run(cfg, tmp_path / "cut", progress=False, log=crash_after_gen1)
    resumed = evosynth.resume(tmp_path / "cut", progress=False, log=lambda s: None)
    assert strip(resumed.history) == strip(whole.history)
    # the registry's model was built on the CPU: its best offspring comes back there
    assert whole.best_model.fc1.weight.device.type == "cpu"


def test_evolve_on_cuda_hands_the_network_back_where_the_model_came_from(tmp_path):
    """A CPU model and CPU data, trained on the GPU: the best network comes back on the CPU,
    so the caller's own tensors still feed it, and it compacts from a CPU batch."""
    torch.manual_seed(0)
    x, model = torch.randn(400, 16), nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    y = x[:, :4].argmax(1)
    res = evosynth.evolve(model, (x, y), config={"device": "cuda", "evolution": {
        "generations": 2, "max_drop": None}, "ancestor_train": {"epochs": 2}},
        run_dir=tmp_path / "r", log=lambda s: None)
    assert json.loads(res.run_dir.marker.read_text())["device"] == "cuda"
    assert next(res.best_model.parameters()).device.type == "cpu"
    c = compact(res.best_model, x[:8], res.best_genome.masks)
    with torch.no_grad():
        assert torch.allclose(c.model(x), res.best_model(x), atol=1e-5)


@pytest.mark.parametrize("where", ["cpu", "cuda"])
def test_ask_tell_candidates_live_where_the_model_does(tmp_path, where):
    """Your loop trains the candidates on your tensors: under ``device: auto`` they are
    handed out on your model's device, and so is the best network."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).to(where)
    x = torch.randn(64, 16, device=where)
    syn = evosynth.Synthesis(net, x[:8], 0.5, {"evolution": {"generations": 1, "offspring": 2},
                                               "measure": {"costs": False}},
                             run_dir=tmp_path / where, log=lambda s: None)
    for cand in syn.ask():
        assert next(cand.model.parameters()).device.type == where
        with torch.no_grad():
            cand.model(x)
        syn.tell(cand, 0.6)
    assert syn.done and next(syn.best[0].parameters()).device.type == where


def test_an_ask_tell_run_resumes_where_the_model_now_is(tmp_path):
    """``device: auto`` is recorded as asked, not as resolved: a run begun on the GPU and
    resumed with the model on the CPU hands its candidates out on the CPU, the same ones."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(64, 16)
    cfg = {"evolution": {"generations": 2, "offspring": 2}, "measure": {"costs": False}}
    syn = evosynth.Synthesis(net.cuda(), x[:8].cuda(), 0.5, cfg, run_dir=tmp_path / "r",
                             log=lambda s: None)
    first = syn.ask()
    syn.tell(first[0], 0.6)  # one told, one left when the run stops
    syn.close()
    again = evosynth.Synthesis.resume(net.cpu(), x[:8], tmp_path / "r", log=lambda s: None)
    left = again.ask()
    assert len(left) == 1 and next(left[0].model.parameters()).device.type == "cpu"
    assert all(torch.equal(left[0].masks[n].cpu(), first[1].masks[n].cpu())
               for n in first[1].masks)


def test_nms_of_boxes_on_cuda_keeps_what_it_keeps_on_the_cpu():
    g = torch.Generator().manual_seed(0)
    corner = torch.rand(200, 2, generator=g) * 100
    boxes = torch.cat([corner, corner + 5 + torch.rand(200, 2, generator=g) * 20], 1)
    scores = torch.rand(200, generator=g)
    on_cpu = nms(boxes, scores, 0.5)
    assert len(on_cpu) < 200
    on_gpu = nms(boxes.cuda(), scores.cuda(), 0.5)
    assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu)
