"""The rows of IPAD's tables as runs beside the paper's numbers, and the settings of the vehicle runs.

* Table III (DukeMTMC-reID): the baseline, IPAD V1 (global + mutual), IPAD V2 (global + self), IPAD (all
  three), and Section IV-C's attention version as one more row.
* Table IV (VeRi-776 mAP / CMC, VehicleID small / medium / large): the baseline against IPAD on the vehicle
  world; :func:`table4_ours` lays our evaluations out in the paper's columns.
* The "consistency with various backbones" group (the corrupt Table II, no numbers quoted): the baseline
  against IPAD on each backbone of the registry that the paper used (SE-ResNet-50 is not in it).

Where each paper number was read, and how the extraction was read back, is said in
:mod:`reidbook.paper_numbers`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ...paper_numbers import IPAD_TABLES
from ...profiles import Profile

T = IPAD_TABLES
#: VehicleID's three test lists, by the paper's column names.
VEHICLEID_SIZES = {"small": 800, "medium": 1600, "large": 2400}
#: The backbones of the paper's second group of experiments that the registry has.
PAPER_BACKBONES = ("vgg19_bn", "resnet34", "resnet50", "mobilenet_v2")
#: Table IV's column names and our metric keys (VehicleID: the first two).
VERI_COLUMNS = (("mAP", "mAP"), ("rank-1", "rank1"), ("rank-5", "rank5"))
#: Section III-D: the mutual branch is 256 channels wide for vehicles (128 for persons).
VEHICLE_MUTUAL_CHANNELS = 256


@dataclass(frozen=True)
class Row:
    """One row: its label, the method and options that train it, the paper's numbers and the profile
    changes it needs (another backbone)."""

    label: str
    method: str
    options: dict[str, Any]
    paper: dict[str, float]
    profile: dict[str, Any] = field(default_factory=dict)


BASELINE = Row("Baseline", "baseline", {}, T["III"]["Baseline"])
FULL = Row("IPAD", "ipad", {}, T["III"]["IPAD"])


def table3_rows() -> list[Row]:
    """Table III's four rows and the attention version of Section IV-C, in the paper's order."""
    return [BASELINE,
            Row("IPAD V1", "ipad", {"variant": "v1"}, T["III"]["IPAD V1"]),
            Row("IPAD V2", "ipad", {"variant": "v2"}, T["III"]["IPAD V2"]),
            FULL,
            Row("attention version", "ipad", {"variant": "attention"}, T["III"]["attention version"])]


def budget_rows(rows: list[Row]) -> list[Row]:
    """The rows a 2-core CPU affords: Table III's four (the attention version is the ``paper`` profile's)."""
    return [row for row in rows if row.options.get("variant") != "attention"]


def headline_rows(rows: list[Row]) -> list[Row]:
    """The rows whose runs the headline comparison trains anyway (the baseline and the full IPAD)."""
    return [row for row in rows if row in (BASELINE, FULL)]


def backbone_rows(backbones: tuple[str, ...] = PAPER_BACKBONES) -> list[Row]:
    """The baseline and IPAD on each of ``backbones`` (no paper numbers: the paper's Table II is corrupt)."""
    return [Row(f"{row.label} ({arch})", row.method, row.options, {}, {"backbone": arch})
            for arch in backbones for row in (BASELINE, FULL)]


def backbone_summary(rows: Sequence[Row], metrics: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """Per backbone of :func:`backbone_rows`: the baseline's and IPAD's rank-1 and mAP (percent, from
    ``metrics[row.label]``) and IPAD's gain in each."""
    table: dict[str, dict[str, float]] = {}
    for row in rows:
        arch = row.profile["backbone"]
        for name, key in (("rank-1", "rank1"), ("mAP", "mAP")):
            table.setdefault(arch, {})[f"{row.method} {name}"] = 100 * metrics[row.label][key]
    frame = pd.DataFrame(table).T
    for name in ("rank-1", "mAP"):
        frame[f"gain in {name}"] = frame[f"ipad {name}"] - frame[f"baseline {name}"]
    return frame.round(1).rename_axis("backbone")


def vehicle_profile(profile: Profile) -> Profile:
    """``profile`` for vehicle crops: square inputs of the profile's height (the paper: 256 x 256), except
    when backbones start from the world-pretrained one (``init="world"``): that backbone is pretrained at
    the profile's own input size and a run at another size would pretrain one more, so vehicle crops keep
    the profile's (person-shaped) input."""
    return profile if profile.init == "world" else profile.replace(width=profile.height)


def vehicle_options(profile: Profile) -> dict[str, Any]:
    """IPAD's options for vehicles: the paper's 256-channel mutual branch in the ``paper`` profile; the
    person width elsewhere (a ResNet-18 has 512 channels to compress, a ResNet-50 2048)."""
    return {"mutual_channels": VEHICLE_MUTUAL_CHANNELS} if profile.name == "paper" else {}


def table4_ours(veri: Mapping[str, Mapping[str, Any]],
                vehicleid: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, float]]:
    """Our evaluations in Table IV's columns: ``veri[label]`` holds a run's metrics on the VeRi-like test
    split, ``vehicleid[label][size]`` (``"small"``, ``"medium"``, ``"large"``) on each VehicleID-like list.
    Missing evaluations are left out (a row may have VeRi columns only)."""
    unknown = {size for sizes in vehicleid.values() for size in sizes} - set(VEHICLEID_SIZES)
    if unknown:
        raise ValueError(f"VehicleID sizes must be among {sorted(VEHICLEID_SIZES)}, got {sorted(unknown)}")
    table: dict[str, dict[str, float]] = {}
    for label in dict.fromkeys([*veri, *vehicleid]):
        row = {}
        if label in veri:
            row.update({f"VeRi {name}": veri[label][key] for name, key in VERI_COLUMNS})
        for size, metrics in vehicleid.get(label, {}).items():
            row.update({f"VehicleID {size} {name}": metrics[key] for name, key in VERI_COLUMNS[:2]})
        table[label] = row
    return table


def table4_columns(ours: Mapping[str, Mapping[str, float]]) -> list[str]:
    """The paper's Table IV columns that ``ours`` fills, in the paper's order."""
    filled = {name for row in ours.values() for name in row}
    return [name for name in T["IV"]["IPAD"] if name in filled]
