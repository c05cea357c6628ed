"""The defaults on data they were not tuned on: evosynth against Torch-Pruning on
scikit-learn's breast cancer and wine sets and a seeded synthetic task
(``make_classification``), an MLP each, side by side as in ``compare.py``.

    python benchmarks/unseen.py [--seeds 0 1 2] [--out runs/unseen]

No default was chosen on these (they were chosen on MNIST and the digits). Each data set is
split by the seed (a quarter held out for test), standardized on its training part, and
an MLP (in -> 256 -> 128 -> classes) is evolved with ``evosynth.evolve`` and nothing but
its defaults, the default floor included (validation accuracy >= the ancestor's minus one
point). The epochs evosynth trained are each Torch-Pruning criterion's budget, in steps of
the same epochs and recipe, on the same ancestor, split and floor (``compare.py``'s code).
Per data set and seed, each method's result is its step with the fewest neurons (the MLP's
kernel clusters) among those that held the validation floor, with its test accuracy.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

import evosynth
from evosynth.clusters import prunable_layers
from evosynth.config import validate
from evosynth.costs import machine
from evosynth.data import Splits, TensorData, split_validation
from evosynth.io import write_text
from evosynth.report import markdown_table
from evosynth.rundir import RunDir
from evosynth.seeding import generator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare import IMPORTANCES, Bench, epochs_trained, structured

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (("data", "data", "{}"), ("seed", "seed", "{}"), ("val/test n", "sizes", "{}"),
           ("method", "method", "{}"),
           ("step", "step", "{}"), ("ancestor test %", "ancestor_test", "{:.2%}"),
           ("val %", "val_accuracy", "{:.2%}"), ("test %", "test_accuracy", "{:.2%}"),
           ("neurons", "filters", "{:,}"), ("clu eff", "cluster_efficiency", "{:.2f}x"),
           ("syn eff", "synaptic_efficiency", "{:.1f}x"), ("MACs", "macs", "{:,}"),
           ("epochs", "epochs", "{}"))


def dataset(name: str, seed: int) -> tuple[TensorData, TensorData]:
    """Train and test splits (a seeded quarter held out), standardized on train."""
    from sklearn import datasets

    if name == "synthetic":
        x, y = datasets.make_classification(
            n_samples=6000, n_features=40, n_informative=16, n_redundant=8, n_classes=6,
            n_clusters_per_class=2, class_sep=1.0, random_state=seed)
    else:
        x, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    x, y = torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long)
    order = torch.randperm(len(y), generator=generator(seed, "unseen", name))
    test, train = order[: len(y) // 4], order[len(y) // 4:]
    mean, std = x[train].mean(0), x[train].std(0).clamp(min=1e-6)
    x = (x - mean) / std
    return TensorData(x[train], y[train]), TensorData(x[test], y[test])


def mlp(features: int, classes: int) -> nn.Module:
    return nn.Sequential(nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(),
                         nn.Linear(128, classes))


def one(name: str, seed: int, out: Path) -> list[dict]:
    """evosynth, then each Torch-Pruning criterion, on one data set and seed: each method's
    result row."""
    train, test = dataset(name, seed)
    classes = int(train.y.max()) + 1
    torch.manual_seed(seed)
    model = mlp(train.x.shape[1], classes)
    cfg = validate({"seed": seed, "device": "cpu"})
    t0 = time.perf_counter()
    res = evosynth.evolve(model, (train.x, train.y), (test.x, test.y), config=cfg,
                          run_dir=out / f"{name}-s{seed}", force=True, log=lambda s: None)
    rd = RunDir(out / f"{name}-s{seed}")
    ancestor = copy.deepcopy(model)
    layers = prunable_layers(ancestor)
    rd.load_generation(0, ancestor, layers)
    fit, val = split_validation(train, cfg.evolution.val_fraction, generator(seed, "split"))
    bench = Bench(Splits(fit, val, test, classes, None), ancestor, cfg, torch.device("cpu"),
                  repeats=3)
    base = bench.measure("ancestor", 0, copy.deepcopy(ancestor), 0.0)
    assert abs(base["val_accuracy"] - res.history[0]["val_accuracy"]) < 1e-9, "split differs"
    bench.floor = rd.summary()["floor"]
    for rec in res.history[1:]:
        net = copy.deepcopy(ancestor)
        genome = rd.load_generation(rec["generation"], net, layers)
        bench.measure("evosynth (defaults)", rec["generation"], net, rec["wall_seconds"],
                      genome.masks)
    epochs = epochs_trained(res.history, cfg)
    evo_seconds = time.perf_counter() - t0
    steps = max(1, epochs // cfg.train.epochs)
    for criterion in IMPORTANCES:
        structured(bench, steps, ratio=0.97, criterion=criterion)
    print(f"{name} seed {seed}: evosynth {evo_seconds:.0f} s, {epochs} epochs; "
          f"floor {bench.floor:.2%}", flush=True)
    results = []
    for method in dict.fromkeys(r["method"] for r in bench.rows[1:]):
        held = [r for r in bench.rows
                if r["method"] == method and r["val_accuracy"] >= bench.floor]
        if not held:
            continue
        best = min(held, key=lambda r: (r["filters"], r["synapses"]))
        results.append({**best, "data": name, "seed": seed, "epochs": epochs,
                        "ancestor_test": base["test_accuracy"],
                        "sizes": f"{len(val)}/{len(test)}"})
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["breast_cancer", "wine", "synthetic"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", default=str(ROOT / "runs" / "unseen"))
    args = ap.parse_args()
    out, t0 = Path(args.out), time.perf_counter()
    rows = [r for name in args.data for seed in args.seeds for r in one(name, seed, out)]
    text = (f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}\n"
            f"total wall time: {(time.perf_counter() - t0) / 60:.1f} min\n\n"
            f"{markdown_table(rows, COLUMNS)}\n")
    write_text(out / "unseen.md", text)
    write_text(out / "unseen.json", json.dumps(rows, indent=1))
    print("\n" + text + f"\nwrote {out / 'unseen.md'}")


if __name__ == "__main__":
    main()
