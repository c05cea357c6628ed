"""How the defaults were chosen: variants of the encoding and the environment evolved from one
ancestor, each with the defaults plus a floor and one change, on MNIST or the digits.

    python benchmarks/defaults.py [--dataset mnist|digits] [--data-dir ../shared/data/mnist]
        [--only NAME ...] [--device auto] [--jobs 1]

Every variant gets the same ancestor, floor and generation cap; the table gives, per
variant, the best generation that holds the floor on validation (what a user gets), its
test accuracy, kernel-cluster and synaptic efficiency, MACs, the generations and offspring
trained (the training spent) and the wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import torch

import evosynth
from evosynth.config import validate
from evosynth.costs import machine
from evosynth.report import markdown_table
from evosynth.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k, {}), v) if isinstance(v, dict) else v
    return out


# the defaults until the seventh round (no synapse phase) and until the sixth, which the
# earlier rounds' variants changed
BEFORE_SEVENTH = {"evolution": {"environment": {"thin": False}}}
BEFORE_SIXTH = merge(BEFORE_SEVENTH, {"encoding": {"normalization": "budget"},
                                      "evolution": {"environment": {"synapse_share": 0.5}}})


def _variant(granularity: str, ease: float, width: float = 0.0, retire: int = 0,
             noise: float = 0.0) -> dict:
    return merge(BEFORE_SIXTH, {
        "encoding": {"granularity": granularity}, "train": {"distill": 0.0},
        "evolution": {"environment": {"ease": ease, "width_exponent": width,
                                      "retire": retire, "noise": noise}}})


def _sixth(normalization: str, synapse_share: float, thin: bool = False) -> dict:
    return {"encoding": {"normalization": normalization},
            "evolution": {"environment": {"synapse_share": synapse_share, "thin": thin}}}


VARIANTS: dict[str, dict] = {
    "defaults": {},
    "own strength": {"encoding": {"strength": "own"}},
    "per-layer budget": {"encoding": {"normalization": "budget"}},
    "filter only": {"encoding": {"granularity": "filter"}},
    "distill parent": merge(BEFORE_SIXTH, {"train": {"distill": 0.5, "teacher": "parent"}}),
    "distill ancestor": merge(BEFORE_SIXTH, {"train": {"distill": 0.5,
                                                       "teacher": "ancestor"}}),
    "2 offspring": {"evolution": {"population": 1, "parents": 1, "offspring": 2}},
    "3 epochs": {"train": {"epochs": 3}},
    "grow 2.0": {"evolution": {"environment": {"grow": 2.0}}},
    "headroom 0.25": {"evolution": {"environment": {"headroom": 0.25}}},
    "own, per-layer": {"encoding": {"strength": "own", "normalization": "budget"}},
    "5 tries": {"evolution": {"environment": {"tries": 5}}},
    "distill, 2 offspring": {"train": {"distill": 0.5}, "evolution": {"offspring": 2}},
    "filter+kernel": {"encoding": {"granularity": "filter+kernel"}},
    # granularity, controller, width rule, retirements and noise, each named in full
    # (2026-11-26; noise 0 unless named, no distillation: what they were measured with)
    **{name: _variant(*spec) for name, spec in {
        "filter, ease 0.85, width 0 (the defaults before retire)": ("filter", 0.85, 0.0),
        "filter+kernel, ease 0.85": ("filter+kernel", 0.85, 0.0),
        "filter+kernel, hold": ("filter+kernel", 1.0, 0.0),
        "filter+kernel, ease 0.85, width 0.5": ("filter+kernel", 0.85, 0.5),
        "filter+kernel, hold, width 0.5": ("filter+kernel", 1.0, 0.5),
        "filter+kernel, ease 0.85, width 1": ("filter+kernel", 0.85, 1.0),
        "filter+kernel, hold, width 1": ("filter+kernel", 1.0, 1.0),
        "filter, ease 0.85, width 0.5": ("filter", 0.85, 0.5),
        "filter, ease 0.85, retire 2 (the defaults before noise)": ("filter", 0.85, 0.0, 2),
        "filter+kernel, hold, retire 2": ("filter+kernel", 1.0, 0.0, 2),
        "filter, hold, retire 2": ("filter", 1.0, 0.0, 2),
        "filter, ease 0.85, noise 1, retire 2 (the defaults before distillation)": (
            "filter", 0.85, 0.0, 2, 1.0),
    }.items()},
    "2 offspring early": merge(_variant("filter", 0.85),
                               {"evolution": {"offspring": {"1": 2, "6": 1}}}),
    # the fifth round's (over its defaults: distillation from the ancestor) and the sixth's
    "defaults, width 0.5": merge(BEFORE_SIXTH,
                                 {"evolution": {"environment": {"width_exponent": 0.5}}}),
    "defaults, global": _sixth("global", 0.5),
    "defaults, global, synapses 0.25": _sixth("global", 0.25),
    "defaults, global, synapses 0": _sixth("global", 0.0),
    # the seventh round: then the synapse phase (the defaults); synapses under pressure in
    # one network-wide budget (the sixth round's "global" variants had per-layer budgets)
    "defaults, global, synapses 0, thin": _sixth("global", 0.0, thin=True),
    "defaults, thin, synapses 0.5 network": _sixth("global", 0.5, thin=True),
    "defaults, thin, synapses 0.25 network": _sixth("global", 0.25, thin=True),
    "two parents": {"evolution": {"population": 2, "parents": 2, "offspring": 2}},
    "one parent": {"evolution": {"population": 1, "parents": 1, "offspring": 1}},
    # the ninth round: a gentler climb (evosynth spent its allowed drop by generation 6)
    "max pressure 0.3": {"evolution": {"environment": {"max_pressure": 0.3}}},
    "grow 1.25": {"evolution": {"environment": {"grow": 1.25}}},
    # the tenth round: survival by the order of the strengths, not their values
    "rank": {"encoding": {"scale": "rank"}},
    "rank, max pressure 0.3": {"encoding": {"scale": "rank"},
                               "evolution": {"environment": {"max_pressure": 0.3}}},
    # the eleventh round: layers retired early evolve again once nothing else can
    "revisit": {"evolution": {"environment": {"revisit": True}}},
    # the eleventh round too: an offspring trained from a lower peak rate
    "train lr 0.01": {"train": {"lr": 0.01}},
    "train lr 0.005": {"train": {"lr": 0.005}},
    # twelfth round: clusters priced by the kernel clusters their death removes
    "cost 0.1": {"encoding": {"cost_exponent": 0.1}},
    "filter+kernel, cost 0.1": {"encoding": {"granularity": "filter+kernel",
                                             "cost_exponent": 0.1}},
    # and the parent as the yardstick in the cluster phase too
    "parent grows": {"evolution": {"environment": {"parent_grows": True}}},
    "kernel phase": {"evolution": {"environment": {"kernel_phase": True}}},
    "no kernel phase": {"evolution": {"environment": {"kernel_phase": False}}},
    "cost 0.1, parent grows": {"encoding": {"cost_exponent": 0.1},
                               "evolution": {"environment": {"parent_grows": True}}},
}
COLUMNS = (("variant", "variant", "{}"), ("gen", "generation", "{}"),
           ("val %", "val_accuracy", "{:.2%}"), ("test %", "test_accuracy", "{:.2%}"),
           ("kernels", "kernel_clusters", "{:,}"), ("clu eff", "cluster_efficiency", "{:.2f}x"),
           ("synapses", "synapses", "{:,}"), ("syn eff", "synaptic_efficiency", "{:.1f}x"),
           ("MACs", "compact_macs", "{:,}"), ("offspring", "offspring_trained", "{}"),
           ("stopped", "stopped", "{}"), ("wall s", "wall_seconds", "{:.0f}"))


def run_variant(name: str, base: dict, out: Path, threads: int) -> dict:
    torch.set_num_threads(threads)
    cfg = validate(merge(base, VARIANTS[name]))
    t0 = time.perf_counter()
    res = evosynth.run(cfg, out / name.replace(" ", "-"), force=True, progress=False,
                       log=lambda s: None)
    summary = res.run_dir.summary()
    best = res.history[summary["best_generation"]]
    trained = sum(len(r["offspring_val_accuracy"]) * r.get("environment", {}).get("tries", 1)
                  for r in res.history[1:])
    return {**best, "variant": name, "stopped": summary["stopped"],
            "offspring_trained": trained, "wall_seconds": time.perf_counter() - t0,
            "trajectory": [(r["generation"], r["val_accuracy"], r["test_accuracy"],
                            r["kernel_clusters"], r["synapses"],
                            r.get("environment", {}).get("pressure")) for r in res.history]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="mnist", choices=("mnist", "digits"))
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "defaults"))
    ap.add_argument("--max-drop", type=float, default=0.004, help="the floor below the ancestor")
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1, help="variants run at once")
    ap.add_argument("--data", default="{}", help="data settings as JSON (e.g. train_limit)")
    ap.add_argument("--ancestor-train", default="{}", help="ancestor training as JSON")
    ap.add_argument("--base", default="{}", help="settings every variant starts from (JSON)")
    ap.add_argument("--ancestor-weights", default=None,
                    help="a trained ancestor (safetensors, same split) instead of training one")
    args = ap.parse_args()
    out = Path(args.out)
    t_start = time.perf_counter()
    base = {"model": "lenet5", "dataset": args.dataset, "data_dir": args.data_dir,
            "data": json.loads(args.data), "ancestor_train": json.loads(args.ancestor_train),
            "device": args.device,
            "evolution": {"max_drop": args.max_drop, "generations": args.generations}}
    base = merge(base, json.loads(args.base))
    given = {"ancestor_weights": args.ancestor_weights} if args.ancestor_weights else {}
    anc = evosynth.run(validate(merge(base, {"evolution": {"generations": 0}, **given})),
                       out / "ancestor", force=True, progress=False)
    base["ancestor_weights"] = str(RunDir(out / "ancestor").weights_path(0))
    print(f"ancestor: val {anc.history[0]['val_accuracy']:.2%}, "
          f"test {anc.history[0]['test_accuracy']:.2%}", flush=True)
    # torch's threads (OMP_NUM_THREADS sets them) shared among the jobs, as in compare.py:
    # another count means other float sums, so other draws
    threads = max(1, torch.get_num_threads() // args.jobs)
    # spawn: the ancestor may have initialised CUDA, which a forked worker cannot use
    out.mkdir(parents=True, exist_ok=True)
    done: dict[str, dict] = {}
    with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_variant, name, base, out, threads): name
                   for name in args.only}
        for f in as_completed(futures):
            done[futures[f]] = f.result()
            print(markdown_table([done[futures[f]]], COLUMNS).splitlines()[-1], flush=True)
            (out / "defaults.json").write_text(json.dumps(list(done.values()), indent=1))
    rows = [done[name] for name in args.only]
    total = time.perf_counter() - t_start
    text = (f"machine: {machine()}\ndata: {args.dataset}, floor: ancestor val - "
            f"{args.max_drop:.1%}, cap {args.generations} generations\n"
            f"ancestor: val {anc.history[0]['val_accuracy']:.2%}, test "
            f"{anc.history[0]['test_accuracy']:.2%}\ntotal wall time: {total / 60:.1f} min\n\n"
            + markdown_table(rows, COLUMNS))
    print("\n" + text)
    (out / "defaults.md").write_text(text + "\n")
    (out / "defaults.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
