"""The rows of DDAG's ablation tables (Tables 1-3) as runs beside the paper's numbers.

Table 1 (components: B, B+P, B+G, B+P+G) on SYSU-MM01 all- and indoor-search, with RegDB beside it; Table
2 (part-attention designs, B + P); Table 3 (graph neighbourhoods of N_g images, B + G). Every row names
the recipe and options that train it; rows whose runs are the same configuration share one run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...paper_numbers import DDAG_TABLES
from ...results import Run, canonical_json
from ..registry import get as get_recipe

T = DDAG_TABLES


@dataclass(frozen=True)
class Row:
    """One row: its label (the paper's row name), the recipe and options that train it (``method=None``:
    a design the package does not offer) and the paper's numbers by table."""

    label: str
    method: str | None
    options: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, dict[str, float]] = field(default_factory=dict)

    def key(self) -> str:
        """The configuration this row trains: its recipe and resolved options (equal keys, one run)."""
        if self.method is None:
            raise ValueError(f"row {self.label!r} has no recipe: the package does not offer this design")
        return canonical_json([self.method, get_recipe(self.method).resolve_options(self.options)])


SINGLE_STREAM = Row("single-stream (chapter 1's baseline)", "baseline")


def table1_rows() -> list[Row]:
    """Table 1: the two-stream baseline B and DDAG's components, paper numbers for both search modes."""
    options = {"B": {}, "B+P": {"graph": False}, "B+G": {"parts": 0}, "B+P+G": {}}
    return [Row(label, "two-stream" if label == "B" else "ddag", options[label],
                {mode: T[f"1 {mode}"][label] for mode in ("all-search", "indoor-search")})
            for label in ("B", "B+P", "B+G", "B+P+G")]


def table2_rows() -> list[Row]:
    """Table 2: part-attention designs (B + P). "concat" (a p x C feature) is not offered by the model;
    "weight, no residual" has no number in the paper (its text: "the performance significantly drops")."""
    part = {"graph": False}
    return [
        Row("B (no parts)", "two-stream", {}, {"2": T["2"]["B (no parts)"]}),
        Row("avg, Res", "ddag", {**part, "part_weights": "average", "iwpa_residual": "identity"},
            {"2": T["2"]["avg, Res"]}),
        Row("concat, Res", None, {}, {"2": T["2"]["concat, Res"]}),
        Row("weight, Res", "ddag", {**part, "iwpa_residual": "identity"}, {"2": T["2"]["weight, Res"]}),
        Row("weight, RBN", "ddag", part, {"2": T["2"]["weight, RBN"]}),
        Row("weight, no residual", "ddag", {**part, "iwpa_residual": "none"}),
    ]


def table3_rows(batch_k: int) -> list[Row]:
    """Table 3: B + G with graph neighbourhoods of N_g images (N_g = 0: B). A batch holds ``batch_k`` images
    per identity; a paper N_g of at least ``batch_k`` is our neighbourhood of all of them (``None``)."""
    rows = [Row("N_g=0 (B)", "two-stream", {}, {"3": T["3"]["N_g=0 (B)"]})]
    for n in (1, 2, 4, 8):
        whole = n >= batch_k
        label = f"N_g={n}" if n <= batch_k else f"N_g={n} (ours: all {batch_k})"
        rows.append(Row(label, "ddag", {"parts": 0} if whole else {"parts": 0, "graph_images": n},
                        {"3": T["3"][f"N_g={n}"]}))
    return rows


def trainable(rows: Iterable[Row], within: Iterable[Row] | None = None) -> list[Row]:
    """The rows a package recipe can train, each configuration once; with ``within``, only those whose
    configuration is one of ``within``'s (the rows a small budget already trains)."""
    allowed = None if within is None else {r.key() for r in within if r.method is not None}
    chosen: dict[str, Row] = {}
    for row in rows:
        if row.method is not None and (allowed is None or row.key() in allowed):
            chosen.setdefault(row.key(), row)
    return list(chosen.values())


def run_key(run: Run) -> str:
    """The configuration a stored run trained: its recipe and resolved options (as :meth:`Row.key`)."""
    return canonical_json([run.config["method"], run.config["options"]])


def ours(rows: Sequence[Row], runs: Mapping[str, Sequence[Run]],
         metrics_of: Callable[[Run], Mapping[str, float]] | None = None,
         names: Sequence[str] = ("rank1", "rank10", "rank20", "mAP", "mINP")) -> dict[str, dict[str, float]]:
    """Our numbers per row label: the mean over the runs (seeds) of the row's configuration, found among
    ``runs`` by configuration (whatever their labels); ``metrics_of(run)`` gives a run's metrics (default:
    the evaluation stored when it was trained). Rows without runs are left out."""
    by_key: dict[str, list[Run]] = {}
    for group in runs.values():
        for run in group:
            by_key.setdefault(run_key(run), []).append(run)
    table = {}
    for row in rows:
        found = by_key.get(row.key(), []) if row.method is not None else []
        if found:
            values = [(metrics_of or Run.load_metrics)(run) for run in found]
            table[row.label] = {m: float(np.mean([v[m] for v in values])) for m in names}
    return table


def paper(rows: Sequence[Row], table: str) -> dict[str, dict[str, float]]:
    """The paper's numbers of ``table`` per row label (rows without any are left out)."""
    return {row.label: row.paper[table] for row in rows if table in row.paper}
