"""Reporting (reidbook.report): spreads, the tie rule, run labels and tables, on hand-checked cases.

Values are chosen exactly representable in binary (0.125, 0.625, ...) so that boundaries are exact."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from reidbook.report import (
    mean_spread,
    paper_beside_ours,
    run_label,
    runs_frame,
    spread,
    stress_table,
    summary_table,
    verdict,
)
from reidbook.results import ResultsStore


# ---------------------------------------------------------------------------------------------- spreads
def test_spread_is_the_half_range_or_the_sample_std():
    values = [0.81, 0.86, 0.84]
    assert spread(values) == pytest.approx((0.86 - 0.81) / 2)
    mean = sum(values) / 3
    assert spread(values, "std") == pytest.approx(math.sqrt(sum((v - mean) ** 2 for v in values) / 2))
    assert spread(np.array([0.3])) == 0.0 and spread([0.3], "std") == 0.0
    assert spread(pd.Series([1.0, 4.0])) == 1.5


def test_spread_rejects_an_unknown_kind_and_no_values():
    with pytest.raises(ValueError, match=r"spread must be one of .*'iqr'"):
        spread([0.1, 0.2], "iqr")
    with pytest.raises(ValueError, match="at least one value"):
        spread([])


def test_mean_spread_in_percent_by_default():
    assert mean_spread([0.81, 0.86, 0.84]) == "83.7 ± 2.5"
    assert mean_spread([0.81, 0.86, 0.84], "std") == f"83.7 ± {np.std([81, 86, 84], ddof=1):.1f}"
    assert mean_spread([72.0, 75.0], decimals=2, percent=False) == "73.50 ± 1.50"
    assert mean_spread([72.0, 75.0]) == "7350.0 ± 150.0"  # percent is a bool: no guessing from the values
    assert mean_spread([0.5]) == "50.0"
    with pytest.raises(ValueError, match="'iqr'"):
        mean_spread([0.1, 0.2], "iqr")
    with pytest.raises(ValueError, match="at least one value"):
        mean_spread([])


# ------------------------------------------------------------------------------------------- the tie rule
def test_a_gap_equal_to_the_larger_half_range_is_a_tie():
    result = verdict([0.5, 0.75], [0.625, 0.875])  # means 0.625 and 0.75; half-ranges 0.125 and 0.125
    assert (result.kind, result.gap, result.spread) == ("tie", 0.125, 0.125)
    assert result.text == "tie (+12.5 points, spread 12.5)"


def test_the_larger_of_the_two_half_ranges_decides():
    # the reference has no spread; the method's half-range 0.25 covers the gap 0.25
    assert verdict([0.5, 0.5], [0.5, 1.0]).kind == "tie"
    assert verdict([0.5, 1.0], [0.5, 0.5]).kind == "tie"
    assert verdict([0.5, 0.5], [0.625, 0.875]).kind == "better"  # gap 0.25 > half-range 0.125


def test_a_gap_beyond_the_spread_is_better_or_worse_and_names_the_winner():
    better = verdict([0.5, 0.75], [0.75, 0.875], reference_name="ref", method_name="new")
    assert (better.kind, better.gap, better.spread) == ("better", 0.1875, 0.125)
    assert better.text == "new better by 18.8 points (spread 12.5)"
    worse = verdict([0.5, 0.75], [0.25, 0.375], reference_name="ref", method_name="new")
    assert (worse.kind, worse.gap) == ("worse", -0.3125)
    assert worse.text == "ref better by 31.2 points (spread 12.5)"


def test_one_seed_on_either_side_gives_no_verdict():
    for reference, method in (([0.5], [0.75, 0.875]), ([0.5, 0.75], [0.9])):
        result = verdict(reference, method)
        assert result.kind == "no verdict" and result.spread == 0.0
        assert "no verdict" in result.text
    assert verdict([0.5], [0.75]).gap == 0.25


def test_verdict_in_the_metrics_own_unit():
    result = verdict([70.0, 80.0], [90.0, 100.0], percent=False)
    assert (result.kind, result.gap, result.spread) == ("better", 20.0, 5.0)
    assert result.text == "method better by 20.0 (spread 5.0)"


# ------------------------------------------------------------------------------------------------ tables
def seeds_frame() -> pd.DataFrame:
    """Method B (listed first) and the reference A, two seeds each."""
    return pd.DataFrame([
        {"label": "B", "seed": 0, "rank1": 0.75, "mAP": 0.75, "mINP": 0.5},
        {"label": "B", "seed": 1, "rank1": 0.875, "mAP": 0.875, "mINP": 0.5},
        {"label": "A", "seed": 0, "rank1": 0.5, "mAP": 0.5, "mINP": 0.25},
        {"label": "A", "seed": 1, "rank1": 0.75, "mAP": 0.75, "mINP": 0.375},
    ])


def test_summary_table_gives_mean_spread_seeds_and_verdicts_in_order_of_appearance():
    table = summary_table(seeds_frame(), reference="A")
    assert list(table.index) == ["B", "A"] and table.index.name == "label"
    assert list(table.columns) == ["rank-1", "mAP", "mINP", "seeds", "mAP vs A"]
    assert table.loc["B", "rank-1"] == "81.2 ± 6.2" and table.loc["A", "rank-1"] == "62.5 ± 12.5"
    assert table.loc["A", "mINP"] == "31.2 ± 6.2" and table.loc["B", "mINP"] == "50.0 ± 0.0"
    assert table["seeds"].tolist() == [2, 2]
    assert table.loc["B", "mAP vs A"] == "B better by 18.8 points (spread 12.5)"
    assert table.loc["A", "mAP vs A"] == ""


def test_summary_table_without_reference_and_with_another_verdict_metric():
    frame = seeds_frame()
    assert "mAP vs A" not in summary_table(frame).columns
    table = summary_table(frame, reference="A", metrics=("mINP",), verdict_metric="mINP")
    assert list(table.columns) == ["mINP", "seeds", "mINP vs A"]
    assert table.loc["B", "mINP vs A"] == "B better by 18.8 points (spread 6.2)"


def test_stress_table_gives_mean_spread_per_strength_and_the_points_lost():
    rows = []
    for method, by_strength in (("baseline", {1.0: [0.5, 0.75], 2.0: [0.25, 0.5]}),
                                ("ianet", {1.0: [0.75, 0.75], 2.0: [0.5, 0.75]})):
        for strength, values in by_strength.items():
            rows += [{"method": method, "seed": s, "strength": strength, "mAP": v, "rank1": 1.0}
                     for s, v in enumerate(values)]
    table = stress_table(pd.DataFrame(rows))
    assert list(table.index) == ["baseline", "ianet"]
    assert table.loc["baseline", 1.0] == "62.5 ± 12.5" and table.loc["baseline", 2.0] == "37.5 ± 12.5"
    assert table.loc["ianet", 1.0] == "75.0 ± 0.0" and table.loc["ianet", 2.0] == "62.5 ± 12.5"
    lost = table["points lost 1 → 2"]
    assert lost["baseline"] == 25.0 and lost["ianet"] == 12.5
    assert stress_table(pd.DataFrame(rows), metric="rank1")["points lost 1 → 2"].tolist() == [0.0, 0.0]


def test_paper_beside_ours_keeps_paper_numbers_as_published_and_shows_ours_in_percent():
    ours = {"market": {"rank1": 0.5, "mAP": 0.25}, "ours only": {"rank1": 0.125, "mAP": None}}
    paper = {"market": {"rank-1": 94.4, "mAP": 85.9}, "duke": {"rank-1": 86.4, "mAP": 76.4, "rank-5": 93.0}}
    table = paper_beside_ours(ours, paper, ours_label="ours: synthetic", paper_label="paper: ResNet-50")
    assert list(table.index) == ["market", "duke", "ours only"]
    assert table.columns.names == ["source", "metric"]
    assert table.columns.tolist() == [("paper: ResNet-50", "rank-1"), ("paper: ResNet-50", "mAP"),
                                      ("paper: ResNet-50", "rank-5"), ("ours: synthetic", "rank-1"),
                                      ("ours: synthetic", "mAP")]
    assert table.loc["market", ("paper: ResNet-50", "rank-1")] == 94.4
    assert table.loc["duke", ("paper: ResNet-50", "rank-5")] == 93.0
    assert np.isnan(table.loc["market", ("paper: ResNet-50", "rank-5")])
    assert table.loc["market", ("ours: synthetic", "rank-1")] == 50.0
    assert table.loc["market", ("ours: synthetic", "mAP")] == 25.0
    assert table.loc["ours only", ("ours: synthetic", "rank-1")] == 12.5
    assert np.isnan(table.loc["duke", ("ours: synthetic", "mAP")])
    assert np.isnan(table.loc["ours only", ("ours: synthetic", "mAP")])
    assert np.isnan(table.loc["ours only", ("paper: ResNet-50", "rank-1")])
    only_ours = paper_beside_ours(ours, {}, ours_label="ours", paper_label="paper")
    assert only_ours.columns.tolist() == [("ours", "rank-1"), ("ours", "mAP")]


def test_paper_beside_ours_needs_two_different_labels():
    with pytest.raises(ValueError, match="must differ.*'results'"):
        paper_beside_ours({}, {}, ours_label="results", paper_label="results")


# ------------------------------------------------------------------------------------- stored runs
def stored_run(store: ResultsStore, seed: int, metrics: dict, built_in: bool = True):
    data = {"name": "market1501", "sizes": [1, 2, 3]}
    if built_in:
        data["built_in"] = {"dataset": "synthetic-market", "world_seed": 0, "world": {}}
    config = {"method": "baseline", "data": data, "seed": seed, "start": {"init": "world", "run": "b/k"},
              "profile": {"name": "cpu", "backbone": "resnet18", "height": 64, "width": 32}}
    return store.get_or_train("baseline", config, lambda run: metrics)


def test_run_label_says_data_profile_start_and_the_device_used(tmp_path):
    store = ResultsStore(tmp_path, code="c")
    run = stored_run(store, 1, {"mAP": 0.5})
    environment_device = run.load_environment()["device"]
    assert run_label(run) == (f"ours: synthetic-market, cpu profile, resnet18 64×32, world-pretrained, "
                              f"trained on {environment_device}, seed 1")
    run.write_json("training.json", {"device": "cuda", "seconds": 3.0})
    assert run_label(run) == ("ours: synthetic-market, cpu profile, resnet18 64×32, world-pretrained, "
                              "trained on cuda, seed 1")
    assert run_label(run, seeds=[0, 1]).endswith("trained on cuda, seeds [0, 1]")
    real = stored_run(store, 0, {"mAP": 0.5}, built_in=False)
    assert run_label(real).startswith("ours: market1501, cpu profile")


def test_runs_frame_reads_stored_metrics_or_given_evaluations(tmp_path):
    store = ResultsStore(tmp_path, code="c")
    runs = [stored_run(store, seed, {"rank1": 0.5 + seed / 4, "mAP": 0.25, "mINP": 0.125, "cmc": [1.0]})
            for seed in (0, 1)]
    frame = runs_frame({"A": runs})
    assert frame.to_dict("records") == [
        {"label": "A", "seed": 0, "rank1": 0.5, "mAP": 0.25, "mINP": 0.125},
        {"label": "A", "seed": 1, "rank1": 0.75, "mAP": 0.25, "mINP": 0.125},
    ]
    other = runs_frame({"A on B": runs}, metrics=("mAP",),
                       evaluations={"A on B": [{"mAP": 0.0625}, {"mAP": 0.125}]})
    assert other.to_dict("records") == [{"label": "A on B", "seed": 0, "mAP": 0.0625},
                                        {"label": "A on B", "seed": 1, "mAP": 0.125}]
