"""One parent, two parents, a population of 4 with 2 parents: LeNet-5 on real MNIST from one
ancestor and the same training budget; then one population generation local vs on Ray.

    python benchmarks/population.py [--data-dir ../shared/data/mnist] [--epochs-budget 48]
        [--ancestor-weights runs/compare/ancestor/generations/0/weights.safetensors]

Every variant is evosynth's defaults plus a floor (max_drop, default 1 point) and the
population settings, capped at the same total offspring-training epochs (the generation cap
is the budget over the epochs a generation trains; retries of the adaptive environment
count too, and the table says what each spent). For each variant: the best kernel-cluster
and synaptic efficiency among the generations at >= 99.0% and >= 98.5% test accuracy
(chosen by test for reporting only; the run selects on validation).

Then the wall time of breeding one population generation (4 offspring of 2 parents each,
taken from the population-4 run: its generation 2, large networks, and its last, small
ones) in this process (all cores to torch) and as Ray tasks on two single-thread workers,
measured in the same run, with the bytes that move per generation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

import evosynth
from evosynth.config import validate
from evosynth.costs import machine
from evosynth.report import markdown_table
from evosynth.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "one parent": {"population": 1, "parents": 1, "offspring": 1},
    "two parents": {"population": 2, "parents": 2, "offspring": 2},
    "population 4, two parents": {"population": 4, "parents": 2, "offspring": 4},
}


def best_at(history: list[dict], level: float, key: str) -> dict | None:
    ok = [r for r in history[1:] if r["test_accuracy"] >= level]
    return max(ok, key=lambda r: r[key]) if ok else None


def run_variant(name: str, base: dict, budget: int, out: Path) -> dict:
    ev = VARIANTS[name]
    per_generation = ev["offspring"] * base["train"]["epochs"]
    cfg = validate({**base, "evolution": {**base["evolution"], **ev,
                                          "generations": budget // per_generation}})
    t0 = time.perf_counter()
    res = evosynth.run(cfg, out / name.replace(" ", "-").replace(",", ""), force=True,
                       progress=False, log=lambda s: None)
    wall = time.perf_counter() - t0
    epochs = sum(len(r["offspring_val_accuracy"]) * r.get("environment", {}).get("tries", 1)
                 for r in res.history[1:]) * base["train"]["epochs"]
    row = {"variant": name, "generations": res.history[-1]["generation"],
           "epochs": epochs, "stopped": res.run_dir.summary()["stopped"], "wall": wall}
    for level in (0.99, 0.985):
        tag = f"{level:.1%}"
        clu = best_at(res.history, level, "cluster_efficiency")
        syn = best_at(res.history, level, "synaptic_efficiency")
        row[f"clu {tag}"] = (f"{clu['cluster_efficiency']:.2f}x (g{clu['generation']}, "
                             f"{clu['test_accuracy']:.2%})") if clu else "none"
        row[f"syn {tag}"] = (f"{syn['synaptic_efficiency']:.1f}x (g{syn['generation']}, "
                             f"{syn['test_accuracy']:.2%})") if syn else "none"
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "population"))
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--epochs-budget", type=int, default=48,
                    help="offspring-training epochs each variant may spend")
    ap.add_argument("--ancestor-weights", default=None,
                    help="a trained LeNet-5 (safetensors, seed 0 split) instead of training one")
    ap.add_argument("--only", nargs="*", default=list(VARIANTS))
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--timing-only", action="store_true",
                    help="only the local/Ray timing, on the runs a previous call left in --out")
    args = ap.parse_args()
    out = Path(args.out)
    if args.timing_only:
        text = f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}\n\n" + ray_timing(out)
        print(text)
        (out / "timing.md").write_text(text + "\n")
        return
    t_start = time.perf_counter()
    base = {"model": "lenet5", "dataset": "mnist", "data_dir": args.data_dir, "seed": 0,
            "train": {"epochs": 2}, "evolution": {"max_drop": args.max_drop}}
    given = {"ancestor_weights": args.ancestor_weights} if args.ancestor_weights else {}
    anc = evosynth.run(validate({**base, **given, "evolution": {"generations": 0}}),
                       out / "ancestor", force=True, progress=False, log=lambda s: None)
    base["ancestor_weights"] = str(RunDir(out / "ancestor").weights_path(0))
    a0 = anc.history[0]
    print(f"ancestor: val {a0['val_accuracy']:.2%}, test {a0['test_accuracy']:.2%}", flush=True)
    rows = []
    for name in args.only:
        rows.append(run_variant(name, base, args.epochs_budget, out))
        print(rows[-1], flush=True)
    cols = [("variant", "variant", "{}"), ("gens", "generations", "{}"),
            ("epochs", "epochs", "{}"), ("stopped", "stopped", "{}")]
    cols += [(k, k, "{}") for k in rows[0] if k.startswith(("clu", "syn"))]
    cols += [("wall s", "wall", "{:.0f}")]
    text = (f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}\n"
            f"ancestor: val {a0['val_accuracy']:.2%}, test {a0['test_accuracy']:.2%}; floor: "
            f"ancestor val - {args.max_drop:.1%}; budget {args.epochs_budget} offspring epochs "
            f"per variant\n\n" + markdown_table(rows, cols))
    if not args.skip_ray and "population 4, two parents" in args.only:
        text += "\n\n" + ray_timing(out)
    text += f"\n\ntotal wall time: {(time.perf_counter() - t_start) / 60:.1f} min"
    print("\n" + text)
    (out / "population.md").write_text(text + "\n")
    (out / "population.json").write_text(json.dumps(rows, indent=1))


def time_breeding(source: Path, upto: int, out: Path) -> dict:
    """Breed generation ``upto + 1`` of a population run (4 offspring) here and on Ray
    (cold: workers starting; then warm), timing the breeding alone, in this one process."""
    import ray

    from evosynth.backends import LocalBackend, RayBackend
    from evosynth.breeding import TrainHooks
    from evosynth.config import ExecutionConfig
    from evosynth.environment import factors
    from evosynth.evolution import Evolution

    folder = out / f"timing-{upto + 1}"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(source, folder)
    for d in (folder / "generations").iterdir():
        if d.name.isdigit() and int(d.name) > upto:
            shutil.rmtree(d)
    cfg = RunDir(folder).config()
    model, data = evosynth.build(cfg)
    evo = Evolution(cfg, model, data, RunDir(folder), progress="quiet", log=lambda s: None)
    evo.restore()
    g = upto + 1
    jobs = evo.jobs(g, 4, factors(cfg.evolution.environment, evo.pressure(g)), 0)
    pop = {p.id: p for p in evo.population}
    args = (pop, None, lambda j: TrainHooks(), lambda j: "")
    t0 = time.perf_counter()
    list(LocalBackend(evo.breeder).breed(jobs, *args))
    local = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # for reference: what each Ray worker has
    t0 = time.perf_counter()
    list(LocalBackend(evo.breeder).breed(jobs, *args))
    local1 = time.perf_counter() - t0
    torch.set_num_threads(threads)
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    backend = RayBackend(evo.breeder, ExecutionConfig(backend="ray", cpus_per_offspring=1))
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        list(backend.breed(jobs, *args))
        times.append(time.perf_counter() - t0)
    moved = {**backend.generation_bytes, "data": backend.run_bytes}
    ray.shutdown()
    synapses = sum(p.synapses for p in evo.population) // len(evo.population)
    return {"generation": g, "synapses": synapses, "local": local, "local 1": local1,
            "ray cold": times[0],
            "ray warm": times[1], "moved": moved}


def ray_timing(out: Path) -> str:
    """An early (large networks) and the last (small networks) population generation."""
    source = out / "population-4-two-parents"
    last = RunDir(source).complete_generations()[-1]
    rows = [time_breeding(source, g, out) for g in sorted({1, max(1, last - 1)})]
    for r in rows:
        r["ratio"] = f"**{r['local'] / r['ray warm']:.2f}x**"
        r["ratio cold"] = f"{r['local'] / r['ray cold']:.2f}x"
        r["ratio 1"] = f"{r['local 1'] / r['ray warm']:.2f}x"
    cols = [("generation", "generation", "{}"), ("mean parent synapses", "synapses", "{:,}"),
            ("local s", "local", "{:.1f}"), ("Ray s (warm)", "ray warm", "{:.1f}"),
            ("local / Ray", "ratio", "{}"), ("Ray s (cold)", "ray cold", "{:.1f}"),
            ("local / Ray cold", "ratio cold", "{}"),
            ("local 1 thread s", "local 1", "{:.1f}"), ("local 1 thread / Ray", "ratio 1", "{}")]
    mb = {k: f"{v / 1e6:.2f} MB" for k, v in rows[-1]["moved"].items()}
    first = {k: f"{v / 1e6:.2f} MB" for k, v in rows[0]["moved"].items()}
    return (f"one population generation, 4 offspring of 2 parents each, bred here with "
            f"{torch.get_num_threads()} torch threads (local) and as Ray tasks on 2 workers "
            f"x 1 thread, in this run:\n\n" + markdown_table(rows, cols) +
            f"\n\nmoved per generation (generation {rows[0]['generation']} / "
            f"{rows[-1]['generation']}): parents to the workers {first['parents']} / "
            f"{mb['parents']}, offspring back {first['offspring']} / {mb['offspring']}; "
            f"the data, once per run: {mb['data']}")


if __name__ == "__main__":
    main()
