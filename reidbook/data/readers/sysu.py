"""SYSU-MM01 (Wu et al., ICCV 2017): visible cameras 1, 2, 4, 5 and infrared cameras 3, 6.

Images live at ``cam<C>/<PPPP>/<NNNN>.jpg``; the ``exp/`` files list the identities of each split as
comma-separated integers. The split follows the authors of AGW/DDAG (Ye et al.): train = train + val ids,
query = every infrared image of the test ids, gallery = every visible image of the test ids from the
cameras of the search mode. The random single-/multi-shot galleries of the protocol are drawn at
evaluation time from this full gallery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..records import INFRARED, VISIBLE, DatasetLayoutError, Record, ReIDDataset, relabel, require_dir
from ..registry import register_dataset
from .checks import queries_without_cross_camera_match
from .images import list_image_files
from .layout import locate_dataset_dir, require_file

INFRARED_CAMS = (3, 6)
GALLERY_CAMS = {"all": (1, 2, 4, 5), "indoor": (1, 2)}
ALL_CAMS = (1, 2, 3, 4, 5, 6)
LAYOUT = """  SYSU-MM01/
    cam1/0001/0001.jpg ... cam6/   (cameras 3 and 6 are infrared)
    exp/train_id.txt  exp/val_id.txt  exp/test_id.txt   (one line of comma-separated ids, e.g. 1,2,4,5)"""


def modality_of(cam: int) -> str:
    return INFRARED if cam in INFRARED_CAMS else VISIBLE


def read_id_file(path: Path) -> list[int]:
    """Identity numbers of an ``exp/*_id.txt`` file (commas and/or white space between them)."""
    tokens = [t for t in re.split(r"[,\s]+", require_file(path, LAYOUT).read_text(encoding="utf-8")) if t]
    bad = [t for t in tokens if not t.isdigit()]
    if bad or not tokens:
        raise DatasetLayoutError(
            f"Malformed id file {path}: expected comma-separated integers like '1,2,4,5', "
            f"found {bad[:5] or 'no ids'}"
        )
    return sorted({int(t) for t in tokens})


def read_images(dataset_dir: Path, pids: Iterable[int], cams: Iterable[int]) -> list[Record]:
    """Records of the given identities seen by the given cameras (not every person meets every camera)."""
    pids = sorted(pids)
    records = []
    for cam in cams:
        cam_dir = require_dir(dataset_dir / f"cam{cam}", LAYOUT)
        for pid in pids:
            person_dir = cam_dir / f"{pid:04d}"
            if person_dir.is_dir():
                paths = list_image_files(person_dir)
                records += [Record(str(path), pid, cam - 1, modality_of(cam)) for path in paths]
    return records


@register_dataset("sysumm01", "sysu")
def read_sysu_mm01(root: Path, mode: str = "all") -> ReIDDataset:
    """SYSU-MM01 with ``mode`` ``"all"`` (gallery cameras 1, 2, 4, 5) or ``"indoor"`` (cameras 1, 2).

    Camera ids are 0-based (SYSU ``cam3`` -> 2). In indoor mode some infrared queries have no visible
    match among the indoor cameras; like the authors' evaluation, the protocol skips them
    (``meta["queries_without_match"]`` counts them).
    """
    if mode not in GALLERY_CAMS:
        raise ValueError(f"mode must be one of {tuple(GALLERY_CAMS)}, got {mode!r}")
    dataset_dir = locate_dataset_dir(root, ("SYSU-MM01", "sysu-mm01", "SYSU_MM01"), "exp", LAYOUT)
    exp = dataset_dir / "exp"
    train_ids = read_id_file(exp / "train_id.txt") + read_id_file(exp / "val_id.txt")
    test_ids = read_id_file(exp / "test_id.txt")

    train = read_images(dataset_dir, train_ids, ALL_CAMS)
    query = read_images(dataset_dir, test_ids, INFRARED_CAMS)
    gallery = read_images(dataset_dir, test_ids, GALLERY_CAMS[mode])
    for split, records in (("train", train), ("query", query), ("gallery", gallery)):
        if not records:
            raise DatasetLayoutError(
                f"SYSU-MM01 at {dataset_dir}: no {split} images.\nExpected layout:\n{LAYOUT}"
            )
    meta = {
        "mode": mode,
        "gallery_cams": [c - 1 for c in GALLERY_CAMS[mode]],
        "queries_without_match": len(queries_without_cross_camera_match(query, gallery)),
    }
    return ReIDDataset(f"sysumm01-{mode}", str(dataset_dir), relabel(train), query, gallery, meta)
