"""LeNet-5 on real MNIST: one ancestor, evolved with the cluster-driven and the synaptic
encoding; a per-generation table for each, the machine, and the papers' targets checked.

    python benchmarks/mnist_lenet5.py [--data-dir ../shared/data/mnist] [--out runs/bench]

Both encodings start from the same trained ancestor and get the same epochs per generation.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import evosynth
from evosynth.config import load_config
from evosynth.costs import machine
from evosynth.report import columns, markdown_table, write_results
from evosynth.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = columns("generation", "test_accuracy", "val_accuracy", "synapses", "kernel_clusters",
                  "filters", "synaptic_efficiency", "cluster_efficiency", "wall_seconds")


def best_at(history, floor: float, key: str):
    ok = [r for r in history if r["generation"] > 0 and r["test_accuracy"] >= floor]
    return max(ok, key=lambda r: r[key]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-mnist-lenet5"))
    ap.add_argument("--cluster-config", default=str(ROOT / "configs" / "lenet5_mnist.yaml"))
    ap.add_argument("--synaptic-config",
                    default=str(ROOT / "configs" / "lenet5_mnist_synaptic.yaml"))
    ap.add_argument("--generations", type=int, default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    out = Path(args.out)
    t_start = time.perf_counter()
    common = {"data_dir": args.data_dir, "device": args.device}

    print(f"machine: {machine()}")
    anc_cfg = load_config(args.cluster_config, {**common, "evolution.generations": 0})
    anc = evosynth.run(anc_cfg, out / "ancestor", force=True, progress=False)
    weights = RunDir(out / "ancestor").weights_path(0)

    results = {}
    for name, path in (("cluster", args.cluster_config), ("synaptic", args.synaptic_config)):
        cfg = load_config(path, {**common, "ancestor_weights": str(weights),
                                 "evolution.generations": args.generations})
        print(f"\n== {name}-driven encoding ({cfg.encoding.normalization} normalization, "
              f"{cfg.encoding.granularity} clusters, {cfg.train.epochs} epochs/generation)")
        res = evosynth.run(cfg, out / name, force=True, progress=False)
        # the ancestor row carries the ancestor's own training time
        res.history[0]["wall_seconds"] = anc.history[0]["wall_seconds"]
        results[name] = res.history

    total = time.perf_counter() - t_start
    lines = [f"machine: {machine()}", f"total wall time: {total / 60:.1f} min", ""]
    for name, hist in results.items():
        lines += [f"### {name}-driven encoding", "", markdown_table(hist, COLUMNS), ""]
    lines.append("### targets (test accuracy; generations chosen by test only for reporting)")
    for name, hist in results.items():
        a = best_at(hist, 0.990, "cluster_efficiency")
        b = best_at(hist, 0.985, "synaptic_efficiency")
        fa = (f"gen {a['generation']}: {a['cluster_efficiency']:.2f}x kernels, "
              f"{a['synaptic_efficiency']:.1f}x synapses at {a['test_accuracy']:.2%}"
              if a else "none")
        fb = (f"gen {b['generation']}: {b['synaptic_efficiency']:.1f}x synapses, "
              f"{b['cluster_efficiency']:.2f}x kernels at {b['test_accuracy']:.2%}"
              if b else "none")
        lines += [f"- {name}: best cluster efficiency at >= 99.0%: {fa}",
                  f"- {name}: best synaptic efficiency at >= 98.5%: {fb}"]
    text = "\n".join(lines)
    print("\n" + text)
    write_results(out, text, results, total, machine())

if __name__ == "__main__":
    main()
