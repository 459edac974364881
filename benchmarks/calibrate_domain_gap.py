"""Calibration of the ``market-b`` world's ``domain_gap`` knob: how much of its same-domain mAP the cpu
profile's baseline keeps across the two built-in domains, in both directions, for several gaps.

The target (issue: cross-domain tables must not sit on the floor) is a quarter to two thirds kept in both
directions; the papers' Market -> Duke transfer keeps about a third. For each gap the baseline is trained
(cpu profile, first seed) on ``market`` and on ``market-b`` at that gap, and each is tested on both; the
learning-free proxy (:func:`reidbook.data.synthetic.domain_gap_proxy`) is printed beside it. Runs go
through ``reidbook.experiment.train``, so the book reuses the ones at the default gap.

    python benchmarks/calibrate_domain_gap.py [--gaps 0.5 0.75 1.0] [--method baseline]
"""

from __future__ import annotations

import argparse

import pandas as pd

from reidbook import experiment
from reidbook.data.synthetic import domain_gap_proxy
from reidbook.profiles import get_profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gaps", nargs="+", type=float, default=[0.5, 0.75, 1.0])
    parser.add_argument("--method", default="baseline")
    parser.add_argument("--data-root", default="data")
    args = parser.parse_args()
    cpu = get_profile("cpu")
    seed = cpu.seeds[0]
    source = experiment.open_dataset("synthetic-market", args.data_root, world=cpu.world, world_seed=0)
    source_run = experiment.train(args.method, source, cpu, seed=seed)
    source_same = experiment.evaluate(source_run, source).metrics["mAP"]
    rows = []
    for gap in args.gaps:
        target = experiment.open_dataset("synthetic-market-b", args.data_root,
                                         world={**cpu.world, "domain_gap": gap}, world_seed=0)
        target_run = experiment.train(args.method, target, cpu, seed=seed)
        target_same = experiment.evaluate(target_run, target).metrics["mAP"]
        a_to_b = experiment.evaluate(source_run, target).metrics["mAP"]
        b_to_a = experiment.evaluate(target_run, source).metrics["mAP"]
        proxy = domain_gap_proxy(source, target, images=150, seed=0)
        rows.append({"domain_gap": gap, "proxy gap": proxy.gap,
                     "market mAP": 100 * source_same, "market -> market-b mAP": 100 * a_to_b,
                     "kept A->B (%)": 100 * a_to_b / source_same,
                     "market-b mAP": 100 * target_same, "market-b -> market mAP": 100 * b_to_a,
                     "kept B->A (%)": 100 * b_to_a / target_same})
        print(pd.DataFrame(rows).round(2).to_string(index=False), flush=True)


if __name__ == "__main__":
    main()
