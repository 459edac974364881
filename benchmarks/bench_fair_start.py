"""Benchmark: what a fair start buys, at equal CPU time per run, on the default built-in world.

For each method (default: the baseline and IANet) and each seed of the cpu profile, four settings:

- (a) from random weights, the cpu profile's epochs;
- (b) fine-tuned from the world-pretrained backbone (the cpu profile itself), the same epochs;
- (c) from random weights with the stem's max-pooling dropped (every map twice as high and wide, about
  four times the cost per image), with a quarter of the steps so that a run costs about as much as (a);
- (d) (b) and (c) together.

The runs go through ``reidbook.experiment.train`` into the results store, so the chapters find the ones
they share. The one-off pretraining is reported on its own line: it is shared by every run of the book.
Prints mAP and rank-1 (mean ± half-range over seeds), and minutes per run (wall clock and CPU time).

    python benchmarks/bench_fair_start.py [--methods baseline ianet]
"""

from __future__ import annotations

import argparse

import pandas as pd

from reidbook import experiment, report
from reidbook.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["baseline", "ianet"])
    args = parser.parse_args()
    cpu = get_profile("cpu")
    # without the stem's max-pooling a step costs about four times as much: a quarter of the steps
    short = {"max_steps_per_epoch": cpu.max_steps_per_epoch // 4, "stem_pool": False}
    settings = {
        "(a) random init": cpu.replace(init="random"),
        "(b) world-pretrained": cpu,
        "(c) random init, no stem pool": cpu.replace(init="random", **short),
        "(d) world-pretrained, no stem pool": cpu.replace(**short),
    }
    data = experiment.open_dataset("synthetic-market", world=cpu.world)
    pretraining = experiment.pretraining(cpu)
    info = pretraining.read_json("training.json")
    print(f"pretraining (once, shared by every run): {info['seconds'] / 60:.1f} min wall, "
          f"{info['cpu_seconds'] / 60:.1f} min CPU, {info['epochs']} epochs", flush=True)
    rows = []
    for method in args.methods:
        for label, profile in settings.items():
            for seed in cpu.seeds:
                run = experiment.train(method, data, profile, seed=seed)
                metrics, info = run.load_metrics(), run.read_json("training.json")
                rows.append({"method": method, "setting": label, "seed": seed, "mAP": metrics["mAP"],
                             "rank1": metrics["rank1"], "minutes": info["seconds"] / 60,
                             "cpu minutes": info["cpu_seconds"] / 60, "epochs": info["epochs"]})
    frame = pd.DataFrame(rows)
    table = frame.groupby(["method", "setting"], sort=False).agg(
        mAP=("mAP", report.mean_spread), rank1=("rank1", report.mean_spread),
        minutes=("minutes", "mean"), cpu_minutes=("cpu minutes", "mean"), epochs=("epochs", "first"))
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(1).to_string())
    for method in args.methods:
        group = frame[frame["method"] == method]
        reference = group[group["setting"] == "(b) world-pretrained"]["mAP"]
        for label in settings:
            if label != "(b) world-pretrained":
                text = report.verdict(group[group["setting"] == label]["mAP"], reference,
                                      reference_name=label, method_name="(b)").text
                print(f"{method}: (b) vs {label}: {text}")


if __name__ == "__main__":
    main()
