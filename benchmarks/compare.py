"""evosynth against what users would pick instead, on one ancestor, the same data, the same
floor and the same training budget, in one run.

    python benchmarks/compare.py [--data-dir ../shared/data/mnist] [--out runs/compare]
        [--max-drop 0.002] [--seed 0] [--ancestor-weights W] [--jobs 2] [--draws 3]
    python benchmarks/compare.py --quick        # tiny: digits (the test suite runs it)

evosynth runs with its defaults plus a floor (validation accuracy >= the ancestor's minus
``--max-drop``); the epochs it trained (offspring x epochs, retries included) are every
peer's budget, spent in steps of the same epochs, each step fine-tuned with the
offspring's training recipe (distillation from the ancestor included when evosynth
distils). With ``--draws K`` evosynth runs K times on the same ancestor, each another draw
of its offspring and training order (``evolution.draw_seed``), the peers get the most any
draw trained, and the summary gives each draw's ratio to the best peer and their median:
one draw is not a result. Each peer prunes step by step until its validation accuracy
falls below the same floor (or the budget ends): Torch-Pruning's global
structured pruning with each of its importance criteria (L1 magnitude, L2 group norm,
first-order Taylor; BatchNorm scale has nothing to read in LeNet-5), physically shrunk by
Torch-Pruning; global iterative magnitude pruning (``torch.nn.utils.prune``); random
unstructured pruning at that sparsity (a control). Every step is measured by the same
code: validation and test accuracy, synapses, kernel clusters, filters/neurons, compact MACs,
wall time, and CPU latency at batch 256 of every compact network, timed at the end
round-robin (one forward of each network per round, 30 rounds, median) so that whatever
else the machine does weighs on all methods alike. The summary gives each method's best step
at >= 99.0% and >= 98.5% test accuracy counting every step (the first below the floor
included), then at >= 99.0% counting only the steps that held the validation floor.
With ``--jobs N`` the peers run N at a time, each in a process with 1/N of the threads
(at least one): a peer is one process's sequence of steps, so its rows are those of a
sequential run at that thread count. evosynth runs first, before any peer: one draw alone
with every thread, several draws N at a time like the peers.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

import evosynth
from evosynth.clusters import prunable_layers
from evosynth.compact import compact
from evosynth.config import load_config
from evosynth.costs import count_macs, interleaved_latency_ms, latency_ms, machine
from evosynth.data import Splits
from evosynth.genome import Genome
from evosynth.io import write_text
from evosynth.report import markdown_table
from evosynth.rundir import RunDir
from evosynth.seeding import generator
from evosynth.tasks import accuracy as evaluate
from evosynth.train import Teacher, teacher_scores, train

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (("method", "method", "{}"), ("step", "step", "{}"),
           ("val %", "val_accuracy", "{:.2%}"), ("test %", "test_accuracy", "{:.2%}"),
           ("synapses", "synapses", "{:,}"),
           ("kernels", "kernel_clusters", "{:,}"), ("filters", "filters", "{:,}"),
           ("MACs", "macs", "{:,}"), ("ms @256", "latency_ms", "{:.2f}"),
           ("syn eff", "synaptic_efficiency", "{:.1f}x"),
           ("clu eff", "cluster_efficiency", "{:.2f}x"), ("speed-up", "speedup", "{:.2f}x"),
           ("wall s", "wall_seconds", "{:.0f}"))


class Bench:
    """Shared data, ancestor and measuring code for every method."""

    def __init__(self, data: Splits, ancestor: nn.Module, cfg, device, repeats: int):
        self.data, self.ancestor, self.cfg, self.device = data, ancestor, cfg, device
        self.floor = -1.0  # validation accuracy every method must hold (set from the ancestor)
        self.repeats = repeats
        self.x256 = data.test.inputs(slice(0, 256))
        self.rows: list[dict] = []
        self.models: list[nn.Module] = []  # each row's compact network, for remeasure()
        self.base: dict | None = None
        self._teacher: Teacher | None = None

    def measure(self, method: str, step: int, model: nn.Module, seconds: float,
                masks: dict[str, torch.Tensor] | None = None) -> dict:
        model = model.eval()
        layers = prunable_layers(model)
        genome = Genome(layers, masks) if masks else Genome.from_weights(model, layers)
        stats = genome.stats("kernel")
        small = compact(model, self.x256[:2], genome.masks).model
        row = {"method": method, "step": step,
               "val_accuracy": evaluate(model, self.data.val, self.device),
               "test_accuracy": evaluate(model, self.data.test, self.device),
               "synapses": stats["synapses"], "kernel_clusters": stats["kernel_clusters"],
               "filters": stats["filters"], "macs": count_macs(small, self.x256[:8]),
               # a first look; remeasure() times every network again, round-robin
               "latency_ms": latency_ms(small.cpu(), self.x256, min(self.repeats, 5)),
               "wall_seconds": seconds}
        self.models.append(small.cpu())
        if self.base is None:
            self.base = row
        row["synaptic_efficiency"] = self.base["synapses"] / max(1, row["synapses"])
        row["cluster_efficiency"] = self.base["kernel_clusters"] / max(1, row["kernel_clusters"])
        row["speedup"] = self.base["latency_ms"] / row["latency_ms"]
        self.rows.append(row)
        print(f"  {method} step {step}: test {row['test_accuracy']:.2%}, "
              f"{row['synapses']:,} synapses, {row['kernel_clusters']:,} kernels, "
              f"{row['speedup']:.2f}x latency", flush=True)
        return row

    def remeasure(self) -> None:
        """Latency of every row again, all networks timed round-robin in one pass: a fair
        comparison even while the machine does other work (the first pass timed each
        network when it was made)."""
        times = interleaved_latency_ms(self.models, self.x256, self.repeats)
        for row, ms in zip(self.rows, times, strict=True):
            row["latency_ms"] = ms
        one_time_per_shape(self.rows)

    def finetune(self, model: nn.Module, step: int, name: str) -> None:
        """The offspring's training recipe, distillation included: a peer learns from the
        ancestor's soft targets whenever evosynth's offspring learn from a teacher, so that
        a difference between methods is not a difference of recipes."""
        train(model, self.data.train, self.cfg.train, {}, generator(self.cfg.seed, name, step),
              self.device, progress=False, teacher=self.teacher)

    @property
    def teacher(self) -> Teacher | None:
        if not self.cfg.train.distill:
            return None
        if self._teacher is None:
            self._teacher = teacher_scores(copy.deepcopy(self.ancestor), self.data.train,
                                           self.device)
        return self._teacher


def one_time_per_shape(rows: list[dict]) -> None:
    """A method's steps with one dense shape (same MACs and filters: evosynth's synapse
    phase, a peer that removed nothing) share the median of their times. Each timing is
    noisy; the best speed-up over many steps of one shape would flatter the method that
    has many."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["macs"], row["filters"]), []).append(row)
    for group in groups.values():
        ms = statistics.median(r["latency_ms"] for r in group)
        for row in group:
            row["latency_ms"] = ms
    for row in rows:
        row["speedup"] = rows[0]["latency_ms"] / row["latency_ms"]


def unstructured(bench: Bench, steps: int, keep: float, method: str, random: bool) -> None:
    """Global iterative pruning with ``torch.nn.utils.prune``: magnitude (IMP) or random."""
    model = copy.deepcopy(bench.ancestor)
    targets = [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(bench.cfg.seed)  # RandomUnstructured draws from the global RNG
        for step in range(1, steps + 1):
            t0 = time.perf_counter()
            prune.global_unstructured(
                targets, amount=1 - keep,
                pruning_method=prune.RandomUnstructured if random else prune.L1Unstructured)
            masks = {n: m.weight_mask.bool() for n, m in model.named_modules()
                     if hasattr(m, "weight_mask")}
            bench.finetune(model, step, method)  # prune's own hooks keep the masks
            plain = copy.deepcopy(bench.ancestor)
            sd = model.state_dict()
            plain.load_state_dict({k.removesuffix("_orig"): v * sd[k.replace("_orig", "_mask")]
                                   if k.endswith("_orig") else v
                                   for k, v in sd.items() if not k.endswith("_mask")})
            row = bench.measure(method, step, plain, time.perf_counter() - t0, masks)
            if row["val_accuracy"] < bench.floor:
                break


IMPORTANCES = {
    "L1 magnitude": lambda: tp.importance.MagnitudeImportance(p=1),
    "L2 group norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "Taylor": lambda: tp.importance.TaylorImportance(),
}


def structured(bench: Bench, steps: int, ratio: float, criterion: str) -> None:
    """Torch-Pruning: global pruning by ``criterion``, iterative steps, fine-tuned, shrunk,
    until validation falls below the floor."""
    model = copy.deepcopy(bench.ancestor)
    out_layer = list(prunable_layers(model).values())[-1].name
    pruner = tp.pruner.MetaPruner(
        model, bench.x256[:2], importance=IMPORTANCES[criterion](), global_pruning=True,
        pruning_ratio=ratio, max_pruning_ratio=ratio, iterative_steps=steps,
        ignored_layers=[model.get_submodule(out_layer)])
    method = f"torch-pruning ({criterion})"
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        if criterion == "Taylor":  # first-order Taylor reads the gradients of a few batches
            model.zero_grad()
            for i in range(0, 1024, 256):
                x = bench.data.train.inputs(slice(i, i + 256))
                nn.functional.cross_entropy(model(x), bench.data.train.y[i:i + 256]).backward()
        pruner.step()
        bench.finetune(model, step, method)
        row = bench.measure(method, step, model, time.perf_counter() - t0)
        if row["val_accuracy"] < bench.floor:
            break


KEEP = 0.7  # IMP removes 30% of what lives per step: 0.7^16 ~ 300x after 16 steps
PEERS = [*IMPORTANCES, "magnitude (torch prune)", "random (control)"]


def run_peer(bench: Bench, peer: str, steps: int, quick: bool) -> None:
    if peer in IMPORTANCES:
        structured(bench, steps, ratio=0.97 if not quick else 0.3, criterion=peer)
    else:
        unstructured(bench, steps, KEEP, peer, random=peer.startswith("random"))


def make_bench(over: dict, ancestor: Path, quick: bool) -> Bench:
    """The data (split by the seed in ``over``) and the ancestor of the run in
    ``ancestor``: the same in the main process and in every peer's."""
    cfg = load_config(None, over)
    model, data = evosynth.build(cfg)
    RunDir(ancestor).load_generation(0, model, prunable_layers(model))
    return Bench(data, model, cfg, torch.device("cpu"), repeats=3 if quick else 30)


def peer_process(over: dict, ancestor: Path, base: dict, floor: float, peer: str, steps: int,
                 quick: bool, threads: int) -> tuple[list[dict], list[nn.Module]]:
    """One peer in a worker process: the same data, ancestor and floor as the main
    process's bench, its rows and compact networks sent back."""
    torch.set_num_threads(threads)
    bench = make_bench(over, ancestor, quick)
    bench.base, bench.floor = base, floor
    run_peer(bench, peer, steps, quick)
    return bench.rows, bench.models


def peers(bench: Bench, over: dict, ancestor: Path, steps: int, quick: bool, jobs: int
          ) -> None:
    """Every peer, ``jobs`` at a time; rows in PEERS order whatever finishes first."""
    if jobs <= 1:
        for peer in PEERS:
            run_peer(bench, peer, steps, quick)
        return
    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        # the longest first (Taylor reads gradients at every step), so that no core idles
        # at the end while one peer runs on alone
        futures = {peer: pool.submit(peer_process, over, ancestor, bench.base, bench.floor,
                                     peer, steps, quick, threads)
                   for peer in sorted(PEERS, key=lambda p: p != "Taylor")}
        for future in (futures[peer] for peer in PEERS):
            rows, models = future.result()
            bench.rows += rows
            bench.models += models


def evolve(over: dict, weights: Path, out: Path, max_drop: float, draw: int,
           threads: int | None = None) -> tuple[list[dict], Path]:
    """One evosynth run with its defaults plus the floor: draw 0 is the run seed's own
    draw, draw d > 0 sets ``evolution.draw_seed: d`` (same split, ancestor and floor)."""
    if threads:
        torch.set_num_threads(threads)
    cfg = load_config(None, {**over, "ancestor_weights": str(weights), "measure.costs": False,
                             "evolution.max_drop": max_drop,
                             "evolution.draw_seed": draw or None})
    res = evosynth.run(cfg, out, force=True, progress=False, log=lambda s: None)
    return res.history, res.run_dir.path


def draw_name(draw: int, draws: int) -> str:
    return "evosynth (defaults)" if draws == 1 else f"evosynth (defaults, draw {draw})"


def evolutionary(bench: Bench, weights: Path, out: Path, over: dict, max_drop: float,
                 draws: int, jobs: int) -> int:
    """evosynth with its defaults plus the floor, ``draws`` times (``jobs`` at a time);
    returns the most epochs a draw trained: every peer's budget, so that no draw trained
    more than a peer."""
    dirs = [out / ("evosynth" if draws == 1 else f"evosynth-draw{d}") for d in range(draws)]
    if draws == 1 or jobs <= 1:
        results = [evolve(over, weights, dirs[d], max_drop, d) for d in range(draws)]
    else:
        threads = max(1, torch.get_num_threads() // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(evolve, over, weights, dirs[d], max_drop, d, threads)
                       for d in range(draws)]
            results = [future.result() for future in futures]
    model = copy.deepcopy(bench.ancestor)
    layers = prunable_layers(model)
    for d, (history, root) in enumerate(results):
        rd = RunDir(root)
        for rec in history[1:]:
            genome = rd.load_generation(rec["generation"], model, layers)
            bench.measure(draw_name(d, draws), rec["generation"], model, rec["wall_seconds"],
                          genome.masks)
    return max(epochs_trained(history, bench.cfg) for history, _ in results)


def epochs_trained(history: list[dict], cfg) -> int:
    """evosynth's training budget: offspring x epochs, failed tries included."""
    return cfg.train.epochs * sum(
        len(r["offspring_val_accuracy"]) * r.get("environment", {}).get("tries", 1)
        for r in history[1:])


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        rs = [r for r in rows if r["method"] in (method, "ancestor")]
        for ax, key in zip(axes, ("synapses", "kernel_clusters"), strict=True):
            ax.plot([r[key] for r in rs], [100 * r["test_accuracy"] for r in rs], "o-",
                    label=method, ms=3)
    for ax, label in zip(axes, ("synapses (log)", "kernel clusters (log)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy %")
        top = 100 * rows[0]["test_accuracy"]  # the ancestor: the region that matters
        ax.set_ylim(max(100 * min(r["test_accuracy"] for r in rows) - 0.3, top - 3), top + 0.4)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("LeNet-5 on MNIST: accuracy against size")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def floors(rows: list[dict], levels=(0.990, 0.985), floor: float | None = None) -> str:
    """Each method's best step at each test accuracy level. Every step counts, the first
    one below the validation floor included (each method stops there); with ``floor``,
    only the steps that held it: what a user of the method would keep."""
    methods = [m for m in dict.fromkeys(r["method"] for r in rows) if m != "ancestor"]
    held = "" if floor is None else f", validation >= {floor:.2%} (floor held)"
    lines = []
    for level in levels:
        best = {}
        for m in methods:
            ok = [r for r in rows if r["method"] == m and r["test_accuracy"] >= level
                  and (floor is None or r["val_accuracy"] >= floor)]
            best[m] = {k: max((r[k] for r in ok), default=None)
                       for k in ("synaptic_efficiency", "cluster_efficiency", "speedup")}
        lines += [f"\n#### test accuracy >= {level:.1%}{held}", "",
                  "| method | synaptic eff. | cluster eff. | measured speed-up |",
                  "|---|---:|---:|---:|"]
        for m, b in best.items():
            cells = [f"{b[k]:.2f}x" if b[k] else "none"
                     for k in ("synaptic_efficiency", "cluster_efficiency", "speedup")]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        draws = [b for m, b in best.items() if m.startswith("evosynth")]
        for k in ("synaptic_efficiency", "cluster_efficiency", "speedup"):
            peers = [b[k] for m, b in best.items() if not m.startswith("evosynth") and b[k]]
            ours = [b[k] or 0.0 for b in draws]  # a draw with no step at the level: 0
            if peers and any(ours):
                each = ", ".join(f"{x / max(peers):.2f}" for x in ours)
                median = statistics.median(ours) / max(peers)
                lines.append(f"- evosynth / best peer, {k}: {median:.2f}" if len(ours) == 1
                             else f"- evosynth / best peer, {k}: median {median:.2f} "
                                  f"(draws: {each})")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "compare"))
    ap.add_argument("--max-drop", type=float, default=0.002,
                    help="the floor: validation accuracy >= ancestor's minus this")
    ap.add_argument("--quick", action="store_true", help="digits, a few short steps")
    ap.add_argument("--seed", type=int, default=0,
                    help="the run seed (validation split, ancestor, every draw)")
    ap.add_argument("--ancestor-weights", default=None,
                    help="a trained ancestor (safetensors, trained on the same split) "
                         "instead of training one here")
    ap.add_argument("--jobs", type=int, default=1,
                    help="peers (and draws) run at once, each in a process with 1/jobs of "
                         "the threads")
    ap.add_argument("--draws", type=int, default=1,
                    help="evosynth runs on the same ancestor, each its own draw "
                         "(evolution.draw_seed 0..K-1); the summary gives their median")
    args = ap.parse_args()
    out = Path(args.out)
    over = {"model": "lenet5", "dataset": "mnist", "data_dir": args.data_dir, "seed": args.seed}
    if args.quick:
        over = {"model": "lenet5", "dataset": "digits", "evolution.generations": 2,
                "train.epochs": 1, "ancestor_train.epochs": 2, "seed": args.seed}
    t_start = time.perf_counter()
    cfg = load_config(None, {**over, "evolution.generations": 0,
                             "ancestor_weights": args.ancestor_weights})
    anc_run = evosynth.run(cfg, out / "ancestor", force=True, progress=False,
                           log=lambda s: None)
    weights = RunDir(out / "ancestor").weights_path(0)
    bench = make_bench(over, out / "ancestor", args.quick)
    cfg = bench.cfg
    bench.measure("ancestor", 0, copy.deepcopy(bench.ancestor),
                  anc_run.history[0]["wall_seconds"])
    bench.floor = anc_run.history[0]["val_accuracy"] - args.max_drop
    print(f"machine: {machine()}\nfloor: validation >= {bench.floor:.2%}", flush=True)
    epochs = evolutionary(bench, weights, out, over, args.max_drop, args.draws, args.jobs)
    steps = max(1, epochs // cfg.train.epochs)
    print(f"budget: {epochs} epochs = {steps} steps x {cfg.train.epochs} epochs per method",
          flush=True)  # with draws: the most that one draw trained
    peers(bench, over, out / "ancestor", steps, args.quick, args.jobs)
    bench.remeasure()
    total = time.perf_counter() - t_start
    table = markdown_table(bench.rows, COLUMNS)
    text = (f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}\n"
            f"floor: validation accuracy >= {bench.floor:.2%} (ancestor - {args.max_drop:.1%})\n"
            f"budget: {epochs} training epochs per method ({steps} steps of "
            f"{cfg.train.epochs}){' (the most one draw trained)' if args.draws > 1 else ''}\n"
            f"evosynth: the defaults plus the floor, {args.draws} draw(s)\n"
            f"total wall time: {total / 60:.1f} min\n\n{table}\n"
            f"{floors(bench.rows)}\n{floors(bench.rows, (0.990,), bench.floor)}\n")
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(text)
    (out / "compare.json").write_text(json.dumps(bench.rows, indent=1))
    plot(bench.rows, out / "compare.png")
    write_html(bench, out / "compare.html", text)
    print("\n" + text + f"\nwrote {out / 'compare.md'}, compare.png and compare.html")


def write_html(bench: Bench, path: Path, text: str) -> None:
    """The run report's page, one series per method (each with the ancestor first)."""
    from evosynth.report_html import Series, render

    series = []
    for method in dict.fromkeys(r["method"] for r in bench.rows[1:]):
        rows = [{**r, "generation": r["step"]} for r in bench.rows
                if r["method"] in (method, "ancestor")]
        holding = [r for r in rows[1:] if r["val_accuracy"] >= bench.floor] or rows[:1]
        best = min(holding, key=lambda r: r["kernel_clusters"])
        series.append(Series(method, rows, {"best_generation": best["generation"],
                                            "floor": bench.floor, "stopped": "floor"},
                             extra={"machine": machine(), "config": text.split("\n\n")[0]}))
    write_text(path, render(series, "evosynth compare: LeNet-5"))


if __name__ == "__main__":
    main()
