"""A small Vision Transformer on real MNIST, evolved with attention heads and feed-forward
neurons as clusters.

    python benchmarks/vit_mnist.py [--data-dir ../shared/data/mnist] [--device auto]

The ViT (``evosynth.models.vit``: 7x7 patches, width 64, 4 pre-norm blocks of 4 heads and
128 feed-forward neurons) trains as the ancestor with AdamW; evosynth evolves it with its
defaults plus a floor (``--max-drop``, default 1 point below the ancestor's validation
accuracy) and AdamW for the offspring. Per generation: test accuracy, heads and
feed-forward neurons alive, parameters and MACs of the compact network, and its latency at
batch 256, timed at the end round-robin with the dense ancestor (which runs PyTorch's fused
transformer path, its fastest) so that both see the same machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import evosynth
from evosynth.api import load_run
from evosynth.compact import compact
from evosynth.config import validate
from evosynth.costs import count_macs, count_params, interleaved_latency_ms, machine
from evosynth.report import markdown_table

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "vit-mnist"))
    ap.add_argument("--max-drop", type=float, default=0.01)
    ap.add_argument("--ancestor-epochs", type=int, default=8)
    ap.add_argument("--generations", type=int, default=10)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    t_start = time.perf_counter()
    adamw = {"optimizer": "adamw", "weight_decay": 0.05, "lr_schedule": "cosine"}
    cfg = validate({
        "model": "vit", "dataset": "mnist", "data_dir": args.data_dir, "seed": 0,
        "device": args.device,
        "ancestor_train": {**adamw, "epochs": args.ancestor_epochs, "lr": 0.002,
                           "warmup_steps": 200},
        "train": {**adamw, "epochs": 2, "lr": 0.0005},
        "evolution": {"max_drop": args.max_drop, "generations": args.generations}})
    res = evosynth.run(cfg, args.out, force=True, progress=False)
    print(f"evolution: {(time.perf_counter() - t_start) / 60:.1f} min", flush=True)

    nets, rows = [], []
    x = None
    for rec in res.history:
        run = load_run(args.out, rec["generation"])
        x = evosynth.build(cfg)[1].test.x[:256] if x is None else x
        net = (run.model if rec["generation"] == 0 else
               compact(run.model, x[:2], run.genome.masks).model).eval()
        nets.append(net)
        layers = rec["layers"]
        rows.append({
            "generation": rec["generation"], "test": rec["test_accuracy"],
            "val": rec["val_accuracy"], "heads": rec.get("heads"),
            "neurons": sum(v["filters"] for k, v in layers.items() if k.endswith("linear1")),
            "params": count_params(net), "macs": count_macs(net, x[:8]),
            "floor": rec["meets_floor"], "wall": rec["wall_seconds"]})
    times = interleaved_latency_ms(nets, x, repeats=20)
    for row, ms in zip(rows, times, strict=True):
        row["ms"] = ms
        row["speed-up"] = times[0] / ms
        row["mac ratio"] = rows[0]["macs"] / row["macs"]
    anc = rows[0]
    within = [r for r in rows[1:] if r["test"] >= anc["test"] - 0.01]
    best = max(within, key=lambda r: r["speed-up"]) if within else None
    cols = [("gen", "generation", "{}"), ("val %", "val", "{:.2%}"), ("test %", "test", "{:.2%}"),
            ("heads", "heads", "{}"), ("ffn neurons", "neurons", "{}"),
            ("params", "params", "{:,}"), ("MACs", "macs", "{:,}"),
            ("MACs /", "mac ratio", "{:.2f}x"), ("ms @256", "ms", "{:.2f}"),
            ("speed-up", "speed-up", "{:.2f}x"), ("floor", "floor", "{}"),
            ("wall s", "wall", "{:.0f}")]
    text = (f"machine: {machine()}\ndate: {time.strftime('%Y-%m-%d')}\n"
            f"ViT: 7x7 patches, width 64, 4 blocks x 4 heads, 128 feed-forward neurons; "
            f"floor: ancestor val - {args.max_drop:.1%}; heads {anc['heads']}, "
            f"neurons {anc['neurons']} in the ancestor\n"
            f"total wall time: {(time.perf_counter() - t_start) / 60:.1f} min\n\n"
            + markdown_table(rows, cols))
    if best:
        text += (f"\n\nwithin 1 point of the ancestor's test accuracy: generation "
                 f"{best['generation']}, {best['mac ratio']:.2f}x fewer MACs, "
                 f"{best['speed-up']:.2f}x measured speed-up at batch 256")
    print("\n" + text)
    Path(args.out, "vit.md").write_text(text + "\n")
    Path(args.out, "vit.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
