"""MSMT17 (Wei et al., CVPR 2018): 15 cameras, splits given by list files.

V1 and V2 hold the same images (V2 with faces blurred) and differ only in folder names; the list files
name images relative to the train or test folder, with the identity label after a space.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..records import DatasetLayoutError, Record, ReIDDataset, relabel, require_dir
from ..registry import register_dataset
from .checks import check_cross_camera_matches
from .layout import NameFormat, locate_dataset_dir, read_list_file, require_file, require_listed_files

# version -> (unpacked folder name, train folder, test folder)
VERSION_FOLDERS = {
    "v1": ("MSMT17_V1", "train", "test"),
    "v2": ("MSMT17_V2", "mask_train_v2", "mask_test_v2"),
}
IMAGE_NAMES = NameFormat(
    re.compile(r"(?P<pid>\d+)_\d+_(?P<cam>\d+)_.+"),
    "PPPP_NNN_CC_<date><time of day>_<frame>_<n>.jpg (e.g. 0000_000_01_0303morning_0015_0.jpg)",
)
LIST_LINE = "'0000/0000_000_01_0303morning_0015_0.jpg 0'"


def msmt17_layout(version: str) -> str:
    folder, train, test = VERSION_FOLDERS[version]
    return (
        f"  {folder}/\n"
        f"    {train}/0000/{IMAGE_NAMES.example}\n"
        f"    {test}/\n"
        "    list_train.txt  list_val.txt  list_query.txt  list_gallery.txt   (lines like "
        f"{LIST_LINE})"
    )


def detect_version(dataset_dir: Path) -> str:
    """The version whose train and test folders ``dataset_dir`` holds; an error if none or both."""
    present = [
        version
        for version, (_, train, test) in VERSION_FOLDERS.items()
        if (dataset_dir / train).is_dir() and (dataset_dir / test).is_dir()
    ]
    if len(present) != 1:
        found = "both" if present else "neither"
        raise DatasetLayoutError(
            f"Cannot tell the MSMT17 version of {dataset_dir}: it holds {found} of the V1 folders "
            "(train/, test/) and the V2 folders (mask_train_v2/, mask_test_v2/). Pass version='v1' or 'v2'."
        )
    return present[0]


def read_list(image_dir: Path, list_file: Path, layout: str) -> list[Record]:
    """Records of one list file; the camera comes from the image name (``CC`` field, 1-based)."""
    entries = read_list_file(require_file(list_file, layout), LIST_LINE)
    paths = [image_dir / relative for relative, _ in entries]
    require_listed_files(paths, list_file, layout)
    return [Record(str(path), pid, IMAGE_NAMES.parse(path).cam - 1) for path, (_, pid) in zip(paths, entries)]


@register_dataset("msmt17", "msmt")
def read_msmt17(root: Path, version: str | None = None) -> ReIDDataset:
    """MSMT17 ``version`` ``"v1"`` or ``"v2"`` (``None``: whichever the folder holds; V1 first when
    ``root`` is a parent holding both).

    Train = ``list_train.txt`` + ``list_val.txt`` (together the paper's 32,621 training images; torchreid
    keeps val apart unless ``combineall``), relabelled. Query/gallery ids as in the list files.
    No timestamps (names carry a date and time of day, not a clock).
    """
    if version not in (None, *VERSION_FOLDERS):
        raise ValueError(f"version must be 'v1', 'v2' or None, got {version!r}")
    versions = [version] if version else list(VERSION_FOLDERS)
    folders = [VERSION_FOLDERS[v][0] for v in versions]
    usual_names = [name for f in folders for name in (f, f"msmt17/{f}", f"MSMT17/{f}")]
    layouts = "\n".join(msmt17_layout(v) for v in versions)
    dataset_dir = locate_dataset_dir(root, usual_names, "list_query.txt", layouts)
    version = version or detect_version(dataset_dir)
    layout = msmt17_layout(version)
    _, train_name, test_name = VERSION_FOLDERS[version]
    train_dir = require_dir(dataset_dir / train_name, layout)
    test_dir = require_dir(dataset_dir / test_name, layout)

    train = read_list(train_dir, dataset_dir / "list_train.txt", layout)
    train += read_list(train_dir, dataset_dir / "list_val.txt", layout)
    dataset = ReIDDataset(
        name="msmt17",
        root=str(dataset_dir),
        train=relabel(train),
        query=read_list(test_dir, dataset_dir / "list_query.txt", layout),
        gallery=read_list(test_dir, dataset_dir / "list_gallery.txt", layout),
        meta={"version": version},
    )
    check_cross_camera_matches(dataset)
    return dataset
