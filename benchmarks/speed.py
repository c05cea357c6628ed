"""Measured inference speed: ancestor vs an evolved offspring, dense-with-zeros vs compact
PyTorch vs compact onnxruntime, batch 1 and 256, CPU (and CUDA when present).

    python benchmarks/speed.py RUN_DIR [--generation G]     # a run of yours
    python benchmarks/speed.py --make-run [--data-dir DIR]   # evolves its own LeNet-5 first

Every ratio in the table is measured in this run, on this machine, with one timing routine
(median over repeats after warm-up). The MAC ratio is printed beside the measured speed-up
so the gap to the ideal is visible.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from evosynth.api import load_run
from evosynth.compact import compact
from evosynth.costs import count_macs, count_params, latency_ms, machine
from evosynth.export import export_onnx
from evosynth.report import markdown_table
from evosynth.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]


@torch.no_grad()
def peak_memory_mb(model: torch.nn.Module, x: torch.Tensor) -> float:
    """Peak bytes allocated during one forward pass above what was held before it."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model(x)
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        model(x)
    held = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        if not e.cpu_children:  # leaf allocations and frees, in order
            held += e.cpu_memory_usage
            peak = max(peak, held)
    return peak / 2**20


def measure(models, batch: int, device: torch.device, repeats: int, example: torch.Tensor,
            onnx_paths) -> list[dict]:
    rows = []
    x = example[:1].repeat(batch, *[1] * (example.dim() - 1)).to(device)
    for name, model in models.items():
        model = model.to(device).eval()
        ms = latency_ms(model, x, repeats)
        rows.append({"variant": f"{name} (PyTorch)", "batch": batch, "device": device.type,
                     "ms": ms, "throughput": batch / ms * 1e3,
                     "peak_mb": peak_memory_mb(model, x),
                     "macs": count_macs(model, x[:1])})
        if device.type == "cpu" and name in onnx_paths:
            import onnxruntime as ort

            sess = ort.InferenceSession(str(onnx_paths[name]),
                                        providers=["CPUExecutionProvider"])
            xn = x.cpu().numpy()
            ms = latency_ms(lambda a, s=sess: s.run(None, {"input": a}), xn, repeats)
            rows.append({"variant": f"{name} (onnxruntime)", "batch": batch, "device": "cpu",
                         "ms": ms, "throughput": batch / ms * 1e3, "peak_mb": None,
                         "macs": rows[-1]["macs"]})
    base = rows[0]["ms"]
    base_macs = rows[0]["macs"]
    for r in rows:
        r["speedup"] = base / r["ms"]
        r["mac_ratio"] = base_macs / r["macs"]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", help="an evosynth run directory")
    ap.add_argument("--generation", type=int, default=None, help="default: the run's best")
    ap.add_argument("--min-test", type=float, default=None,
                    help="instead: the generation with fewest MACs at this test accuracy "
                         "(a reporting choice; selection inside a run never sees test data)")
    ap.add_argument("--make-run", action="store_true", help="evolve a LeNet-5 run first")
    ap.add_argument("--data-dir", default=None,
                    help="where the run's data lies now (default: its config's; for "
                         "--make-run, ../shared/data/mnist)")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()
    if args.make_run:
        import evosynth
        from evosynth.config import load_config

        args.run_dir = str(ROOT / "runs" / "speed-lenet5")
        args.data_dir = args.data_dir or str(ROOT.parent / "shared" / "data" / "mnist")
        cfg = load_config(ROOT / "configs" / "lenet5_mnist.yaml", {"data_dir": args.data_dir})
        evosynth.run(cfg, args.run_dir, force=True, progress=False)
    if not args.run_dir:
        ap.error("give RUN_DIR or --make-run")

    hist = {r["generation"]: r for r in
            map(json.loads, (Path(args.run_dir) / "history.jsonl").open())}
    if args.min_test is not None:
        ok = [r for r in hist.values() if r["test_accuracy"] >= args.min_test]
        args.generation = min(ok, key=lambda r: (r.get("compact_macs", 0), r["synapses"])
                              )["generation"]
    anc = load_run(args.run_dir, 0, args.data_dir)
    ancestor, cfg, example = anc.model, anc.config, anc.example
    best = load_run(args.run_dir, args.generation, args.data_dir)
    child, genome = best.model, best.genome
    small = compact(child, example, genome.masks, tuple(cfg.encoding.exclude))
    with torch.no_grad():
        exact = float((small.model(example) - child(example)).abs().max())
    g = args.generation if args.generation is not None else RunDir(args.run_dir).best_generation()
    print(f"machine: {machine()}")
    print(f"run {args.run_dir}: ancestor vs generation {g} "
          f"(test accuracy {hist[0]['test_accuracy']:.2%} -> {hist[g]['test_accuracy']:.2%}); "
          f"compact vs masked max abs diff {exact:.1e}")
    models = {"ancestor": ancestor, "offspring dense-with-zeros": child,
              "offspring compact": small.model}
    print(f"parameters: ancestor {count_params(ancestor):,}, offspring compact "
          f"{count_params(small.model):,}")
    with tempfile.TemporaryDirectory() as tmp:
        onnx_paths = {}
        for name in ("ancestor", "offspring compact"):
            onnx_paths[name] = Path(tmp) / f"{name.replace(' ', '_')}.onnx"
            export_onnx(models[name], example, onnx_paths[name])
        devices = [torch.device("cpu")] + ([torch.device("cuda")]
                                           if torch.cuda.is_available() else [])
        cols = (("variant", "variant", "{}"), ("device", "device", "{}"),
                ("batch", "batch", "{}"), ("median ms", "ms", "{:.3f}"),
                ("samples/s", "throughput", "{:,.0f}"), ("peak MB", "peak_mb", "{:.2f}"),
                ("MACs/sample", "macs", "{:,}"), ("MAC ratio", "mac_ratio", "{:.1f}x"),
                ("measured speed-up", "speedup", "{:.2f}x"))
        for device in devices:
            for batch in (1, 256):
                rows = measure(models, batch, device, args.repeats, example, onnx_paths)
                print()
                print(markdown_table(rows, cols))


if __name__ == "__main__":
    main()
