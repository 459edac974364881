"""The rows of IANet's ablation tables (Tables 4a-4f and 5) as run options beside the paper's numbers.

The paper ablates one IA block after stage 3 of a ResNet-50 trained with cross-entropy only; the ``paper``
profile repeats those rows. A CPU budget allows a few rows, each changing one thing from the full IANet
(blocks after stages 2 and 3) and naming the paper row it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...paper_numbers import IANET_BACKBONES, IANET_TABLES
from . import PAPER_IANET


@dataclass(frozen=True)
class Row:
    """One row: its label (with the paper row it is compared with), the method and options that train it,
    the paper's numbers, and the profile changes it needs (another backbone for Table 5)."""

    label: str
    method: str
    options: dict[str, Any]
    paper: dict[str, float]
    profile: dict[str, Any] = field(default_factory=dict)


T = IANET_TABLES
BASE = Row("base.", "baseline", {}, T["4a"]["base."])
ONE_BLOCK = {**PAPER_IANET, "stages": [3], "arrangement": "sia"}  # the paper's single SIA block after stage 3


def ianet(label: str, paper: dict[str, float], **changes: Any) -> Row:
    return Row(label, "ianet", {**PAPER_IANET, **changes}, paper)


def paper_rows() -> dict[str, list[Row]]:
    """Every row of Tables 4a-4f and 5 in the paper's settings (GoogLeNet is not in the registry)."""
    return {
        "Table 4a: single context K": [BASE] + [
            ianet(f"K={k}", T["4a"][f"K={k}"], **{**ONE_BLOCK, "relation": "appearance", "contexts": [k]})
            for k in (1, 2, 3, 5)],
        "Table 4b: fusion function": [BASE] + [
            ianet(row, T["4b"][row], **{**ONE_BLOCK, "relation": "appearance", "fusion": fusion})
            for row, fusion in (("MAX", "max"), ("SUM", "sum"), ("PROD", "product"))],
        "Table 4c: relation map": [BASE] + [
            ianet(row, T["4c"][row], **{**ONE_BLOCK, "relation": relation})
            for row, relation in (("Location", "location"), ("Appearance", "appearance"),
                                  ("Semantic", "semantic"))],
        "Table 4d: arrangement": [BASE] + [
            ianet(row, T["4d"][row], stages=[3], arrangement=arrangement)
            for row, arrangement in (("CIA", "cia"), ("SIA & CIA", "parallel"), ("CIA + SIA", "cia-sia"),
                                     ("SIA + CIA", "sia-cia"))],
        "Table 4e: stage": [BASE] + [ianet(f"stage{s}", T["4e"][f"stage{s}"], stages=[s])
                                     for s in (1, 2, 3, 4)],
        "Table 4f: placement": [BASE,
                                ianet("stage2", T["4f"]["stage2"], stages=[2]),
                                ianet("stage3", T["4f"]["stage3"], stages=[3]),
                                ianet("stage23-c", T["4f"]["stage23-c"], placement="every_block"),
                                ianet("stage23", T["4f"]["stage23"])],
        "Table 5: backbones (GoogLeNet not available)": [
            Row(f"{row} ({arch})", method, options, IANET_BACKBONES[row], {"backbone": arch})
            for name, arch in (("R32", "resnet34"), ("R101", "resnet101"))
            for row, method, options in ((name, "baseline", {}), (f"{name}-IA", "ianet", dict(PAPER_IANET)))],
    }


def budget_rows() -> dict[str, list[Row]]:
    """The one change from the full IANet that a 2-core CPU affords (SIA alone, no CIA), compared with the
    closest paper row; every other row is the ``paper`` profile's."""
    return {
        "Arrangement (Tables 4c, 4d)": [
            BASE,
            ianet("SIA only ↔ 4c 'Semantic'", T["4c"]["Semantic"], arrangement="sia"),
            ianet("SIA → CIA (IANet) ↔ 4d 'SIA + CIA'", T["4d"]["SIA + CIA"])],
    }
