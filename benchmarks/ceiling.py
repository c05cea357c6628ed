"""Is an evolved network short of training or of capacity? Fine-tune one generation of a
run under its masks with a few recipes and print validation and test accuracy.

    python benchmarks/ceiling.py RUN_DIR GENERATION [--recipes JSON]

If longer or different training does not lift it, the architecture is at its capacity and
only a better shape (which clusters survive where) can hold more accuracy at its size.
"""

from __future__ import annotations

import argparse
import copy
import json

import torch

from evosynth.api import build, load_run
from evosynth.breeding import Breeder, TrainHooks
from evosynth.config import TrainConfig
from evosynth.seeding import generator
from evosynth.tasks import accuracy

RECIPES = ('[{"epochs": 2}, {"epochs": 6}, {"epochs": 6, "lr": 0.05}, '
           '{"epochs": 6, "optimizer": "adam", "lr": 0.001}]')


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("generation", type=int)
    ap.add_argument("--recipes", default=RECIPES, help="TrainConfig settings, a JSON list")
    args = ap.parse_args()
    run = load_run(args.run_dir, args.generation)
    _, data = build(run.config)
    device = torch.device("cpu")
    breeder = Breeder(run.config, run.model, data, run.example)  # trains as offspring train
    print(f"as evolved: val {accuracy(run.model, data.val, device):.2%}, "
          f"test {accuracy(run.model, data.test, device):.2%}", flush=True)
    for recipe in json.loads(args.recipes):
        model = copy.deepcopy(run.model)
        fit = breeder.train_and_evaluate(model, run.genome, TrainConfig(**recipe),
                                         generator(0, "ceiling"), "ceiling", None,
                                         TrainHooks())
        print(f"{recipe}: val {fit.value:.2%}, "
              f"test {accuracy(model, data.test, device):.2%}", flush=True)


if __name__ == "__main__":
    main()
