"""Torch-Pruning at other step counts, on a side-by-side run's ancestor.

    python benchmarks/peer_steps.py RUN --seed N --steps 44 52 60 [--criterion "L1 magnitude"]

``RUN`` is a ``benchmarks/compare.py --out`` folder: its ancestor, data split (``--seed``,
as given to compare.py), floor (``--max-drop``), fine-tuning recipe and measuring code are
``compare.py``'s own, so a step count that compare.py ran gives its rows again. Why: the
peer prunes on a linear schedule to its final ratio over the budget's steps, so its result
moves with the step count that evosynth's budget happens to give it; this shows how far.
One process, one thread, per step count, in turn.
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

import compare
import torch

ROOT = Path(__file__).resolve().parents[1]


def best(rows: list[dict], floor: float | None = None) -> dict | None:
    """The step with the fewest kernel clusters at >= 99.0% test (holding ``floor``)."""
    ok = [r for r in rows if r["test_accuracy"] >= 0.99
          and (floor is None or r["val_accuracy"] >= floor)]
    return min(ok, key=lambda r: r["kernel_clusters"]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a compare.py --out folder (its ancestor/ is read)")
    ap.add_argument("--seed", type=int, required=True, help="the seed compare.py was given")
    ap.add_argument("--steps", type=int, nargs="+", required=True)
    ap.add_argument("--criterion", default="L1 magnitude", choices=list(compare.IMPORTANCES))
    ap.add_argument("--max-drop", type=float, default=0.002)
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    ancestor = Path(args.run) / "ancestor"
    over = {"model": "lenet5", "dataset": "mnist", "data_dir": args.data_dir, "seed": args.seed}
    history = [json.loads(line) for line in (ancestor / "history.jsonl").open()]
    for steps in args.steps:
        bench = compare.make_bench(over, ancestor, quick=False)
        bench.measure("ancestor", 0, copy.deepcopy(bench.ancestor), 0.0)
        bench.floor = history[0]["val_accuracy"] - args.max_drop
        compare.run_peer(bench, args.criterion, steps, quick=False)  # compare.py's setting
        rows = bench.rows[1:]
        out = Path(args.run) / f"peer-steps-{args.criterion.split()[0]}-{steps}.json"
        out.write_text(json.dumps(rows, indent=1))
        b, h = best(rows), best(rows, bench.floor)
        print(f"{args.criterion}, {steps} steps: fewest kernel clusters at >= 99.0% test "
              f"{b['kernel_clusters'] if b else None} (step {b['step'] if b else None}); "
              f"holding the floor {h['kernel_clusters'] if h else None}; "
              f"stopped at step {rows[-1]['step']}; wrote {out}", flush=True)


if __name__ == "__main__":
    main()
