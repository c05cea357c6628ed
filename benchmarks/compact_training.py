"""Does training the compacted offspring pay? The same LeNet-5 evolution, from the same
ancestor and seeds, with ``compact_training`` on and off: wall seconds per generation side by
side, and the two histories' counts and accuracies, which must agree.

    python benchmarks/compact_training.py [--data-dir DIR] [--generations 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import evosynth
from evosynth.config import load_config
from evosynth.costs import machine
from evosynth.report import markdown_table
from evosynth.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--config", default=str(ROOT / "configs" / "lenet5_mnist.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-compact-training"))
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--ancestor-weights", default=None,
                    help="a trained ancestor (safetensors) to start from instead of training one")
    args = ap.parse_args()
    out = Path(args.out)
    base = {"data_dir": args.data_dir, "measure.costs": False}
    weights = args.ancestor_weights
    if weights is None:
        anc = load_config(args.config, {**base, "evolution.generations": 0})
        evosynth.run(anc, out / "ancestor", force=True, progress=False, log=lambda s: None)
        weights = str(RunDir(out / "ancestor").weights_path(0))
    hist = {}
    for flag in (False, True):
        cfg = load_config(args.config, {**base, "ancestor_weights": weights,
                                        "evolution.generations": args.generations,
                                        "evolution.compact_training": flag})
        hist[flag] = evosynth.run(cfg, out / f"compact-{flag}", force=True, progress=False,
                                  log=lambda s: None).history
    rows = []
    for a, b in zip(hist[False], hist[True], strict=True):
        if a["generation"] == 0:
            continue
        rows.append({"generation": a["generation"], "synapses": a["synapses"],
                     "same_synapses": a["synapses"] == b["synapses"],
                     "val_masked": a["val_accuracy"], "val_compact": b["val_accuracy"],
                     "s_masked": a["wall_seconds"], "s_compact": b["wall_seconds"],
                     "speedup": a["wall_seconds"] / b["wall_seconds"]})
    cols = (("gen", "generation", "{}"), ("synapses", "synapses", "{:,}"),
            ("same synapses", "same_synapses", "{}"),
            ("val % masked", "val_masked", "{:.2%}"), ("val % compact", "val_compact", "{:.2%}"),
            ("s masked", "s_masked", "{:.1f}"), ("s compact", "s_compact", "{:.1f}"),
            ("speed-up", "speedup", "{:.2f}x"))
    total = (sum(r["s_masked"] for r in rows), sum(r["s_compact"] for r in rows))
    print(f"machine: {machine()}")
    print(markdown_table(rows, cols))
    print(f"\ntotal training seconds: masked {total[0]:.0f}, compact {total[1]:.0f} "
          f"({total[0] / total[1]:.2f}x)")


if __name__ == "__main__":
    main()
