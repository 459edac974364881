"""Vehicle re-identification: VeRi-776 and VehicleID, read into the same records as people."""

from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path

from ..records import Record, ReIDDataset, relabel, require_dir
from ..registry import register_dataset
from .bbox_folders import NameFormat, build_dataset, list_split
from .layout import locate_dataset_dir, read_list_file, require_file, require_listed_files

VERI_NAMES = NameFormat(
    re.compile(r"(?P<pid>\d+)_c(?P<cam>\d+)_(?P<frame>\d+)_\d+"),
    "VVVV_cCCC_TTTTTTTT_N.jpg (e.g. 0001_c001_00016450_0.jpg)",
    has_frame=True,
)
VERI_FOLDERS = {"train": "image_train", "query": "image_query", "gallery": "image_test"}
VERI_LAYOUT = f"""  VeRi/
    image_train/   {VERI_NAMES.example}
    image_query/
    image_test/"""


@register_dataset("veri776", "veri")
def read_veri776(root: Path) -> ReIDDataset:
    """VeRi-776 (Liu et al., ICME 2016 / ECCV 2016): 776 vehicles, 20 cameras.

    No ``time``: the names' third field is a per-camera time stamp whose unit and origin the dataset's
    files do not state.
    """
    usual_names = ("VeRi", "veri", "VeRi-776", "veri776")
    dataset_dir = locate_dataset_dir(root, usual_names, VERI_FOLDERS["train"], VERI_LAYOUT)
    splits = {
        split: list_split(dataset_dir / f, VERI_NAMES, VERI_LAYOUT) for split, f in VERI_FOLDERS.items()
    }
    return build_dataset("veri776", dataset_dir, splits, {})


VEHICLEID_TEST_SIZES = (800, 1600, 2400)
VEHICLEID_LINE = "'0000001 1' (image name without .jpg, vehicle id)"
VEHICLEID_LAYOUT = f"""  VehicleID_V1.0/
    image/<image name>.jpg
    train_test_split/train_list.txt  test_list_800.txt  test_list_1600.txt  test_list_2400.txt
        (lines like {VEHICLEID_LINE})"""
QUERY_CAM, GALLERY_CAM = 0, 1


def read_vehicleid_list(dataset_dir: Path, list_name: str) -> list[tuple[Path, int]]:
    list_file = require_file(dataset_dir / "train_test_split" / list_name, VEHICLEID_LAYOUT)
    entries = read_list_file(list_file, VEHICLEID_LINE)
    paths = [dataset_dir / "image" / f"{name}.jpg" for name, _ in entries]
    require_listed_files(paths, list_file, VEHICLEID_LAYOUT)
    return [(path, vid) for path, (_, vid) in zip(paths, entries)]


def split_query_gallery(images: list[tuple[Path, int]], seed: int) -> tuple[list[Record], list[Record]]:
    """The random-gallery protocol of VehicleID (Liu et al., CVPR 2016): for each vehicle one image drawn
    at random goes to the gallery, its other images are queries. Vehicles are visited in sorted order with
    one seeded generator, so a ``seed`` fixes the split. Queries get camera 0 and the gallery camera 1, so
    that the usual same-camera filter of the evaluation removes nothing.
    """
    by_vehicle: dict[int, list[Path]] = defaultdict(list)
    for path, vid in images:
        by_vehicle[vid].append(path)
    rng = random.Random(seed)
    query, gallery = [], []
    for vid in sorted(by_vehicle):
        paths = sorted(by_vehicle[vid])
        chosen = rng.randrange(len(paths))
        gallery.append(Record(str(paths[chosen]), vid, GALLERY_CAM))
        query += [Record(str(p), vid, QUERY_CAM) for i, p in enumerate(paths) if i != chosen]
    return query, gallery


@register_dataset("vehicleid", "pkuvehicleid")
def read_vehicleid(root: Path, test_size: int = 800, seed: int = 0) -> ReIDDataset:
    """VehicleID (Liu et al., CVPR 2016) with the small (800), medium (1600) or large (2400) test list.

    The dataset has no camera ids; see :func:`split_query_gallery` for the query/gallery split drawn with
    ``seed`` (papers average several draws: read with seeds 0..9 and average the scores).
    """
    if test_size not in VEHICLEID_TEST_SIZES:
        raise ValueError(f"test_size must be one of {VEHICLEID_TEST_SIZES}, got {test_size!r}")
    dataset_dir = locate_dataset_dir(
        root, ("VehicleID_V1.0", "VehicleID", "vehicleid"), "train_test_split", VEHICLEID_LAYOUT
    )
    require_dir(dataset_dir / "image", VEHICLEID_LAYOUT)
    train = [Record(str(path), vid, 0) for path, vid in read_vehicleid_list(dataset_dir, "train_list.txt")]
    test = read_vehicleid_list(dataset_dir, f"test_list_{test_size}.txt")
    query, gallery = split_query_gallery(test, seed)
    meta = {
        "test_size": test_size,
        "seed": seed,
        "protocol": "one random gallery image per vehicle (seeded), the others are queries; "
        "query camera 0, gallery camera 1 (the dataset has no cameras)",
    }
    return ReIDDataset(f"vehicleid-{test_size}", str(dataset_dir), relabel(train), query, gallery, meta)
