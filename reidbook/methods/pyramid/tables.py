"""The rows of Pyramid's Table 4 (sub-models on Market-1501) as run options beside the paper's numbers.

Each of the paper's rows changes one setting of "Pyramid-ours" (all six levels, D = 128, ID + triplet
loss, dynamic training). The ``paper`` profile trains every row; a CPU budget trains the rows the
chapter's argument rests on. Rows that are not in the paper (another level code, the dynamic-training
variants) carry no paper numbers and say so in their label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...paper_numbers import PYRAMID_TABLE4

T = PYRAMID_TABLE4
NOT_IN_PAPER = " (not in the paper)"


@dataclass(frozen=True)
class Row:
    """One row: its label, the options of the ``pyramid`` recipe that train it (``None``: a row of the
    paper's alone, e.g. another method), and the paper's numbers (empty when the paper has no such row)."""

    label: str
    options: dict[str, Any] | None
    paper: dict[str, float] = field(default_factory=dict)


def levels(code: str) -> Row:
    """The sub-model using the pyramid levels of ``code`` (e.g. ``"100000"``: the six stripes alone)."""
    label = f"Pyramid-{code}"
    return Row(label if label in T else label + NOT_IN_PAPER, {"levels": code}, T.get(label, {}))


OURS = Row("Pyramid-ours", {}, T["Pyramid-ours"])
PCB_RPP = Row("PCB+RPP (another method, not trained here)", None, T["PCB+RPP"])
FIXED = Row("fixed weights: ID + triplet, weight 1 each, sampler still switching" + NOT_IN_PAPER,
            {"weighting": "fixed"})
NO_SWITCH = Row("no sampler switch: balanced 8×8 batches only (as the authors' code)" + NOT_IN_PAPER,
                {"sampling": "balanced"})
AUTHORS = Row("authors' code: balanced batches only, weights 1 in joint steps" + NOT_IN_PAPER,
              {"sampling": "balanced", "weighting": "sum"})


def paper_rows() -> dict[str, list[Row]]:
    """Every row of Table 4, in three groups, plus the dynamic-training variants."""
    return {
        "Table 4: pyramid levels": [*map(levels, ("000001", "100000", "001111", "110011", "111100")), OURS,
                                    PCB_RPP],
        "Table 4: feature size and losses": [
            Row("Feature-64", {"feature_dim": 64}, T["Feature-64"]),
            Row("Feature-256", {"feature_dim": 256}, T["Feature-256"]),
            Row("No triplet loss", {"triplet": False}, T["No triplet loss"]),
            OURS],
        "Dynamic training (Section 3.2.2)": [OURS, FIXED, NO_SWITCH, AUTHORS],
    }


def budget_rows() -> dict[str, list[Row]]:
    """The rows a 2-core CPU affords: four level codes, and Eq. 7's weights against fixed ones (no sampler
    switch, feature sizes and no triplet are the ``paper`` profile's)."""
    return {
        "Table 4: pyramid levels": [*map(levels, ("000001", "100000", "110000")), OURS, PCB_RPP],
        "Dynamic training (Section 3.2.2)": [OURS, FIXED],
    }


def rows_for(profile: str) -> dict[str, list[Row]]:
    """The rows a profile trains: every row in ``paper``, :func:`budget_rows` in ``cpu``, and in ``smoke``
    only those whose runs the chapter's headline trains anyway (Pyramid-ours and the stripes alone)."""
    if profile == "paper":
        return paper_rows()
    rows = budget_rows()
    if profile == "smoke":
        kept = (OURS, PCB_RPP, levels("100000"))
        rows = {title: [r for r in group if r in kept] for title, group in rows.items()}
    return rows
