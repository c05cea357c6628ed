"""ResNet-56 and AlexNet evolved on 32x32 RGB images: per-generation accuracy, synapses,
kernel clusters, residual-stream channels alive and wall time, with the machine.

    python benchmarks/resnet56.py [--data-dir ../shared/data/mnist]     # MNIST digits, ~15 min
    python benchmarks/resnet56.py --cifar-dir DIR                       # CIFAR-10, full length

CIFAR-10 cannot be downloaded on the project's machines, so by default the machinery runs on
real MNIST digits resized to 32x32 and repeated over 3 channels, a subset of them and a few
epochs, with the schedules of configs/resnet56_cifar10.yaml and configs/alexnet_cifar10.yaml.
With --cifar-dir those configs run unchanged on CIFAR-10 (hours on a GPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import evosynth
from evosynth.config import load_config
from evosynth.costs import machine
from evosynth.report import best_within, columns, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {"resnet56": ROOT / "configs" / "resnet56_cifar10.yaml",
           "alexnet-cifar": ROOT / "configs" / "alexnet_cifar10.yaml"}
ANCESTOR_EPOCHS = {"resnet56": 15, "alexnet-cifar": 30}
COLUMNS = columns("generation", "val_accuracy", "test_accuracy", "synapses",
                  "synaptic_efficiency", "kernel_clusters", "cluster_efficiency", "filters",
                  "coupled_channels", "compact_macs", "wall_seconds")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "mnist"),
                    help="MNIST IDX files (the default run)")
    ap.add_argument("--cifar-dir", default=None,
                    help="CIFAR-10 binary release: run the configs at full length on it")
    ap.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--train-limit", type=int, default=4000,
                    help="training images before a 10%% validation split (3,600 train)")
    ap.add_argument("--val-images", type=int, default=400,
                    help="validation images, held out at random from the first "
                         "0.9 x train-limit + this training images, so that as many train "
                         "(400: the plain 10%% split; more: a floor that can see 1 point)")
    ap.add_argument("--test-limit", type=int, default=2000)
    ap.add_argument("--ancestor-epochs", type=int, default=None,
                    help="default: 15 for resnet56, 30 for alexnet-cifar (no BatchNorm: slower)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs per generation")
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-resnet56"))
    ap.add_argument("--defaults", action="store_true",
                    help="evosynth's defaults plus a floor 1 point below the ancestor, "
                         "instead of the configs' schedules")
    ap.add_argument("--set", default="{}",
                    help="more settings as JSON of dotted keys, over the defaults or configs "
                         "(e.g. '{\"evolution.environment.synapse_share\": 0.5}')")
    ap.add_argument("--ancestor-weights", default=None,
                    help="a trained ancestor (safetensors, same data and seed) instead of "
                         "training one")
    args = ap.parse_args()
    out = Path(args.out)
    t_start = time.perf_counter()
    print(f"machine: {machine()}")

    results = {}
    for name in args.models:
        over = {"device": args.device}
        if args.cifar_dir:
            over.update({"data_dir": args.cifar_dir})
            what = "CIFAR-10, the config at full length"
        else:
            train = round(args.train_limit * 0.9)
            pool = train + args.val_images
            over.update({
                "dataset": "mnist", "data_dir": args.data_dir,
                "evolution.val_fraction": args.val_images / pool,
                "data": {"size": 32, "channels": 3, "train_limit": pool,
                         "test_limit": args.test_limit, "augment": "none"},
                "ancestor_train.epochs": args.ancestor_epochs or ANCESTOR_EPOCHS[name],
                "train.epochs": args.epochs, "evolution.generations": args.generations,
                "evolution.max_drop": 0.01 if args.defaults else 1.0})  # 1.0: no floor
            what = (f"MNIST digits as 32x32 RGB, first {pool} training images ({train} "
                    f"train, {args.val_images} validation), first {args.test_limit} test images")
        if args.defaults:  # the model and the data as above; everything else the defaults
            over.update({"model": name, "dataset": over.get("dataset", "cifar10")})
        over.update(json.loads(args.set))
        if args.ancestor_weights:
            over["ancestor_weights"] = args.ancestor_weights
        cfg = load_config(None if args.defaults else CONFIGS[name], over)
        print(f"\n== {name}: {what}; {cfg.ancestor_train.epochs} ancestor epochs, "
              f"{cfg.train.epochs} per generation, {cfg.evolution.generations} generations",
              flush=True)
        res = evosynth.run(cfg, out / name, force=True, progress=False)
        results[name] = res.history

    total = time.perf_counter() - t_start
    lines = [f"machine: {machine()}", f"total wall time: {total / 60:.1f} min", ""]
    for name, hist in results.items():
        anc = hist[0]
        lines += [f"### {name} ({anc['dense_synapses']:,} weights, {anc['dense_kernel_clusters']:,}"
                  f" kernels, {anc['dense_filters']:,} filters/neurons)", "",
                  markdown_table(hist, [c for c in COLUMNS
                                        if any(c[1] in r for r in hist)]), ""]
        lines += [best_within(hist, "test_accuracy", 0.01) or "", ""]
    text = "\n".join(lines)
    print("\n" + text)
    write_results(out, text, results, total, machine())

if __name__ == "__main__":
    main()
