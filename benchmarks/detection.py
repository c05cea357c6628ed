"""DetectNet-small evolved on detection scenes of real MNIST digits, written in KITTI format:
ancestor mAP@0.5, then per generation mAP, synapses, kernel clusters and wall time.

    python benchmarks/detection.py [--mnist-dir ../shared/data/mnist]     # ~20 min, 2 cores
    python benchmarks/detection.py --kitti-dir DIR --model detectnet      # real KITTI

The scenes (128x128, 1-4 digits of 24-48 px each, plus DontCare distractors) are written
once to --scenes and read back by the KITTI reader, as a user's KITTI folder would be.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import evosynth
from evosynth.config import load_config
from evosynth.costs import machine
from evosynth.data.mnist import load_mnist_arrays
from evosynth.detection.scenes import write_scenes
from evosynth.report import best_within, columns, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = columns("generation", "val_map", "test_map", "synapses", "synaptic_efficiency",
                  "kernel_clusters", "cluster_efficiency", "filters", "compact_macs",
                  "wall_seconds")


def make_scenes(mnist: Path, out: Path, n_train: int, n_test: int) -> None:
    if (out / "testing" / "label_2").is_dir():
        return
    for split, prefix, n, seed in (("training", "train", n_train, 0),
                                   ("testing", "t10k", n_test, 1)):
        images, labels = load_mnist_arrays(str(mnist), prefix)
        write_scenes(out, images, labels, n, split=split, seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mnist-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"))
    ap.add_argument("--scenes", default=str(ROOT / "runs" / "digit-scenes"))
    ap.add_argument("--train-scenes", type=int, default=2000)
    ap.add_argument("--test-scenes", type=int, default=500)
    ap.add_argument("--kitti-dir", default=None, help="real KITTI: evolve on it instead")
    ap.add_argument("--model", default=None, help="detectnet-small (default) or detectnet")
    ap.add_argument("--config", default=str(ROOT / "configs" / "detectnet_scenes.yaml"))
    ap.add_argument("--generations", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-detection"))
    args = ap.parse_args()
    t0 = time.perf_counter()
    print(f"machine: {machine()}", flush=True)
    over = {"device": args.device, "model": args.model,
            "evolution.generations": args.generations,
            "evolution.max_drop": 1.0}  # no floor: the whole trajectory
    if args.kitti_dir:
        over.update({"data_dir": args.kitti_dir, "data": {"classes": None}})
    else:
        make_scenes(Path(args.mnist_dir), Path(args.scenes), args.train_scenes,
                    args.test_scenes)
        over["data_dir"] = args.scenes
    cfg = load_config(args.config, over)
    res = evosynth.run(cfg, Path(args.out), force=True, progress=False)
    hist = res.history
    total = time.perf_counter() - t0
    anc = hist[0]
    lines = [f"machine: {machine()}", f"total wall time: {total / 60:.1f} min", "",
             f"### {cfg.model} on {'KITTI' if args.kitti_dir else 'digit scenes'} "
             f"({anc['dense_synapses']:,} weights, {anc['dense_kernel_clusters']:,} kernels)",
             "", markdown_table(hist, COLUMNS), ""]
    lines.append(best_within(hist, "test_map", 0.02) or "- no generation within 2 points")
    lines.append("- test AP per class: " + "; ".join(
        f"gen {r['generation']}: " + ", ".join(f"{k} {v:.2%}" for k, v in r["test_ap"].items())
        for r in hist))
    text = "\n".join(lines)
    print("\n" + text)
    write_results(Path(args.out), text, {cfg.model: hist}, total, machine())

if __name__ == "__main__":
    main()
