"""Reporting results honestly: mean ± spread over seeds, the book's one tie rule, labels that say where a
number comes from, and tables built from the results store.

**The tie rule** (every chapter uses it, through :func:`verdict`): each method's spread is the half-range
of its seeds, ``(max - min) / 2``, so that mean ± spread covers every seed; a difference of means no larger
than the larger of the two spreads is a *tie*, not a win. With a single seed on either side there is no
spread and no verdict.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from .results import Run

SPREADS = ("half-range", "std")
METRIC_LABELS = {"rank1": "rank-1", "rank5": "rank-5", "rank10": "rank-10", "rank20": "rank-20",
                 "mAP": "mAP", "mINP": "mINP"}


def _values(values: Sequence[float] | np.ndarray | pd.Series) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    if array.size == 0:
        raise ValueError("need at least one value")
    return array


def spread(values: Sequence[float] | np.ndarray | pd.Series, kind: str = "half-range") -> float:
    """Half-range ``(max - min) / 2`` (mean ± it covers every value) or sample standard deviation; 0 for
    a single value."""
    if kind not in SPREADS:
        raise ValueError(f"spread must be one of {SPREADS}, got {kind!r}")
    array = _values(values)
    if array.size < 2:
        return 0.0
    return float(np.std(array, ddof=1)) if kind == "std" else float(np.ptp(array) / 2)


def mean_spread(values: Sequence[float] | np.ndarray | pd.Series, kind: str = "half-range", *,
                decimals: int = 1, percent: bool = True) -> str:
    """``"mean ± spread"`` of a multi-seed result, e.g. ``"87.3 ± 1.2"``; metrics stored as fractions are
    shown in percent (``percent=True``); a single value is shown alone."""
    array = _values(values) * (100.0 if percent else 1.0)
    if array.size == 1:
        return f"{array[0]:.{decimals}f}"
    return f"{array.mean():.{decimals}f} ± {spread(array, kind):.{decimals}f}"


@dataclass(frozen=True)
class Verdict:
    """The outcome of comparing a method with a reference over seeds (see the module's tie rule).

    ``kind``: ``"better"``, ``"worse"``, ``"tie"`` or ``"no verdict"`` (one seed on a side); ``gap``: mean of
    the method minus mean of the reference (in the metric's unit); ``spread``: the larger half-range."""

    kind: str
    gap: float
    spread: float
    text: str


def verdict(reference: Sequence[float], method: Sequence[float], *, reference_name: str = "baseline",
            method_name: str = "method", percent: bool = True) -> Verdict:
    """Compare ``method`` with ``reference`` (one value per seed, higher is better) by the tie rule."""
    a, b = _values(reference), _values(method)
    scale = 100.0 if percent else 1.0
    gap, half = float(b.mean() - a.mean()), max(spread(a), spread(b))
    unit = " points" if percent else ""
    if min(a.size, b.size) < 2:
        return Verdict("no verdict", gap, 0.0,
                       f"{gap * scale:+.1f}{unit}, one seed: no spread, no verdict")
    if abs(gap) <= half:
        return Verdict("tie", gap, half, f"tie ({gap * scale:+.1f}{unit}, spread {half * scale:.1f})")
    kind = "better" if gap > 0 else "worse"
    winner = method_name if gap > 0 else reference_name
    return Verdict(kind, gap, half,
                   f"{winner} better by {abs(gap) * scale:.1f}{unit} (spread {half * scale:.1f})")


# ------------------------------------------------------------------------------------------------- labels
def run_label(run: Run, *, seeds: Sequence[int] | None = None) -> str:
    """Where a run's numbers come from, e.g. ``"ours: synthetic-market, cpu profile, resnet18 64×32,
    world-pretrained, trained on cpu"``: read from the run's config and the device it actually used."""
    config, profile = run.config, run.config["profile"]
    data = config["data"].get("built_in", {}).get("dataset", config["data"]["name"])
    start = {"random": "from random init", "imagenet": "ImageNet weights", "world": "world-pretrained"}
    device = run.read_json("training.json").get("device") or run.load_environment().get("device", "?")
    seed_text = f", seeds {list(seeds)}" if seeds is not None else f", seed {config['seed']}"
    return (f"ours: {data}, {profile['name']} profile, {profile['backbone']} {profile['height']}×"
            f"{profile['width']}, {start.get(config['start']['init'], config['start']['init'])}, "
            f"trained on {device}{seed_text}")


# ------------------------------------------------------------------------------------------------- tables
def runs_frame(runs: Mapping[str, Sequence[Run]], metrics: Sequence[str] = ("rank1", "mAP", "mINP"),
               evaluations: Mapping[str, Sequence[Mapping[str, Any]]] | None = None) -> pd.DataFrame:
    """One row per run: ``label`` (the key of ``runs``), ``seed`` and ``metrics`` (fractions), read from the
    runs' stored metrics, or from ``evaluations`` (the same labels, one metrics dict per run) when given."""
    rows = []
    for label, group in runs.items():
        stored = evaluations[label] if evaluations is not None else [r.load_metrics() for r in group]
        for run, values in zip(group, stored):
            rows.append({"label": label, "seed": run.config["seed"], **{m: values[m] for m in metrics}})
    return pd.DataFrame(rows)


def summary_table(frame: pd.DataFrame, *, reference: str | None = None, by: str = "label",
                  metrics: Sequence[str] = ("rank1", "mAP", "mINP"),
                  verdict_metric: str = "mAP") -> pd.DataFrame:
    """Mean ± spread (percent) of ``metrics`` per group ``by`` (groups in order of appearance), and, with a
    ``reference`` group, each other group's :func:`verdict` on ``verdict_metric`` against it."""
    groups = list(dict.fromkeys(frame[by]))
    table = pd.DataFrame({group: {METRIC_LABELS.get(m, m): mean_spread(frame.loc[frame[by] == group, m])
                                  for m in metrics} for group in groups}).T
    table["seeds"] = [int((frame[by] == group).sum()) for group in groups]
    if reference is not None:
        base = frame.loc[frame[by] == reference, verdict_metric]
        table[f"{METRIC_LABELS.get(verdict_metric, verdict_metric)} vs {reference}"] = [
            "" if group == reference else
            verdict(base, frame.loc[frame[by] == group, verdict_metric], reference_name=reference,
                    method_name=group).text
            for group in groups]
    return table.rename_axis(by)


def paper_beside_ours(ours: Mapping[str, Mapping[str, float]], paper: Mapping[str, Mapping[str, float]], *,
                      ours_label: str, paper_label: str,
                      metrics: Sequence[str] = ("rank1", "mAP")) -> pd.DataFrame:
    """The paper's numbers (every column it reports, percent, as published) beside ours (``metrics``,
    stored as fractions, shown in percent), one row per key of either, under a two-level header
    ``(source, metric)``. The labels must say what each side is."""
    if ours_label == paper_label:
        raise ValueError(f"ours_label and paper_label must differ, both are {ours_label!r}")
    rows = list(dict.fromkeys([*paper, *ours]))
    paper_frame = pd.DataFrame.from_dict({r: dict(paper.get(r, {})) for r in rows}, orient="index")
    ours_frame = pd.DataFrame({METRIC_LABELS.get(m, m): [
        round(100 * ours[r][m], 1) if r in ours and ours[r].get(m) is not None else np.nan for r in rows]
        for m in metrics}, index=rows)
    parts = {paper_label: paper_frame, ours_label: ours_frame}
    table = pd.concat({k: v for k, v in parts.items() if not v.columns.empty}, axis=1)
    table.columns.names = ["source", "metric"]
    return table


def stress_table(curve: pd.DataFrame, metric: str = "mAP") -> pd.DataFrame:
    """A stress curve (rows of method, seed, strength, metrics; see
    :func:`reidbook.experiment.stress_curve`) as mean ± spread per method and strength, plus the points
    lost from the weakest to the strongest world."""
    strengths = sorted(curve["strength"].unique())
    table = curve.pivot_table(index="method", columns="strength", values=metric,
                              aggfunc=lambda values: mean_spread(values), sort=False)
    means = curve.groupby(["method", "strength"], sort=False)[metric].mean().unstack()
    table[f"points lost {strengths[0]:g} → {strengths[-1]:g}"] = (
        100 * (means[strengths[0]] - means[strengths[-1]])).round(1)
    return table


OUTCOMES = {"better": "reproduced", "tie": "tie", "worse": "not reproduced", "no verdict": "no verdict"}


def reproduction_table(headlines: Mapping[str, pd.DataFrame], claims: Mapping[str, str],
                       metric: str = "mAP") -> pd.DataFrame:
    """One row per method: the paper's claim, our method and reference (mean ± spread over seeds), the
    tie-rule verdict and its outcome (reproduced / tie / not reproduced). ``headlines`` holds the frames of
    :func:`reidbook.experiment.headline` by method, ``claims`` the claims' text."""
    rows = {}
    for method, frame in headlines.items():
        ours, reference = frame[frame["role"] == "method"], frame[frame["role"] == "reference"]
        result = verdict(reference[metric], ours[metric], reference_name=reference["label"].iloc[0],
                         method_name=method)
        rows[method] = {"the paper's claim": claims[method], "tested on": ours["test"].iloc[0],
                        f"ours: method {metric}": f"{ours['label'].iloc[0]} {mean_spread(ours[metric])}",
                        f"ours: reference {metric}":
                            f"{reference['label'].iloc[0]} {mean_spread(reference[metric])}",
                        "verdict": result.text, "outcome": OUTCOMES[result.kind]}
    return pd.DataFrame(rows).T.rename_axis("method")


def fingerprint(stress: pd.DataFrame, metric: str = "mAP") -> pd.DataFrame:
    """Methods x nuisances: the points of ``metric`` lost from the weakest to the strongest stress world
    (mean over seeds), from rows of method, nuisance, strength and metrics."""
    means = stress.groupby(["method", "nuisance", "strength"], sort=False)[metric].mean().reset_index()
    keys = ["method", "nuisance"]
    weakest = means.loc[means.groupby(keys, sort=False)["strength"].idxmin()].set_index(keys)[metric]
    strongest = means.loc[means.groupby(keys, sort=False)["strength"].idxmax()].set_index(keys)[metric]
    lost = weakest - strongest
    return (100 * lost).unstack("nuisance").reindex(index=list(dict.fromkeys(stress["method"])),
                                                    columns=list(dict.fromkeys(stress["nuisance"])))


def cost_table(runs: Mapping[str, Run]) -> pd.DataFrame:
    """Parameters, training minutes and training images/s of one run per label (``training.json``)."""
    rows = {}
    for label, run in runs.items():
        info = run.read_json("training.json")
        rows[label] = {"parameters (M)": info["parameters"] / 1e6, "training minutes": info["seconds"] / 60,
                       "training img/s": info["images_per_second"], "trained on": info["device"]}
    return pd.DataFrame(rows).T.rename_axis("method")
