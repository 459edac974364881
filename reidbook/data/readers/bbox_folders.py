"""Market-1501, DukeMTMC-reID and CUHK03-NP: the ``bounding_box_train / query / bounding_box_test`` layout.

All three keep one image per file, with identity and camera in the file name. Following torchreid, junk
images (pid ``-1``) are dropped, distractors (pid ``0``) stay in the gallery, training ids are relabelled
to ``0..N-1`` and cameras become 0-based.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path

from ..records import DatasetLayoutError, Record, ReIDDataset, relabel, require_dir
from ..registry import register_dataset
from .checks import check_cross_camera_matches
from .images import list_image_files
from .layout import NameFormat, ParsedImage, locate_dataset_dir

JUNK_PID = -1
SPLIT_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}

MARKET_FPS = 25.0
DUKE_FPS = 59.94
# DukeMTMC's camera synchronisation: the global frame of camera c's local frame f is f + start[c] - 1.
# Source: the DukeMTMC devkit (Ristani et al., ECCV 2016 workshops), ``startTimes`` in evaluateDukeMTMC.m,
# repeated as START_TIMES / start_frames in DukeMTMC tooling (e.g. DeepCC, dukeMTMC loaders).
DUKE_START_FRAMES = (5543, 3607, 27244, 31182, 1, 22402, 18968, 46766)


MARKET_NAMES = NameFormat(
    re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d+)s(?P<session>\d+)_(?P<frame>\d+)_\d+"),
    "PPPP_cCsS_FFFFFF_BB.jpg (e.g. 0002_c1s1_000451_03.jpg, junk -1_c1s1_000401_03.jpg)",
    has_session=True,
    has_frame=True,
)
DUKE_NAMES = NameFormat(
    re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d+)_f(?P<frame>\d+)"),
    "PPPP_cC_fFFFFFFF.jpg (e.g. 0001_c2_f0046182.jpg)",
    has_frame=True,
)
CUHK03_NAMES = NameFormat(
    re.compile(r"(?P<pid>-?\d+)_c(?P<cam>\d+)_\d+"),
    "PPPP_cC_N.png (e.g. 0001_c1_1.png)",
)


def bbox_layout(dataset_folder: str, example: str) -> str:
    return f"  {dataset_folder}/\n    bounding_box_train/   {example}\n    query/\n    bounding_box_test/"


def list_split(folder: Path, names: NameFormat, layout: str) -> list[ParsedImage]:
    """Parse every image of one split folder, in sorted order; an empty folder is an error."""
    require_dir(folder, layout)
    images = [names.parse(path) for path in list_image_files(folder)]
    if not images:
        raise DatasetLayoutError(f"No images in {folder}: expected files named {names.example}")
    return images


def read_splits(dataset_dir: Path, names: NameFormat, layout: str) -> dict[str, list[ParsedImage]]:
    return {split: list_split(dataset_dir / folder, names, layout) for split, folder in SPLIT_FOLDERS.items()}


def build_dataset(
    name: str,
    dataset_dir: Path,
    splits: dict[str, list[ParsedImage]],
    meta: dict,
    time_of: Callable[[ParsedImage], float] | None = None,
) -> ReIDDataset:
    """Records from parsed names: junk dropped, cameras 0-based, train relabelled, cross-camera checked.

    ``time_of`` gives an image's time in seconds; without it records have no time.
    """

    def records(split: str) -> list[Record]:
        return [
            Record(str(image.path), image.pid, image.cam - 1, time=time_of(image) if time_of else None)
            for image in splits[split]
            if image.pid != JUNK_PID
        ]

    dataset = ReIDDataset(
        name=name,
        root=str(dataset_dir),
        train=relabel(records("train")),
        query=records("query"),
        gallery=records("gallery"),
        meta=meta,
    )
    check_cross_camera_matches(dataset)
    return dataset


def market_session_offsets(images: Iterable[ParsedImage]) -> dict[int, dict[int, int]]:
    """Frame offset of each (camera, session) when a camera's sessions are laid end to end.

    TLift (Liao & Shao, ECCV 2020, README of their code) assumes Market-1501's sessions of one camera were
    recorded back to back. A session's length is the largest frame number seen in it (over all splits,
    junk included); a session's offset is the summed length of the camera's earlier sessions.
    Returns ``{cam (1-based): {session: offset in frames}}``.
    """
    lengths: dict[int, dict[int, int]] = {}
    for image in images:
        sessions = lengths.setdefault(image.cam, {})
        sessions[image.session] = max(sessions.get(image.session, 0), image.frame or 0)
    offsets: dict[int, dict[int, int]] = {}
    for cam, sessions in sorted(lengths.items()):
        elapsed = 0
        offsets[cam] = {}
        for session, length in sorted(sessions.items()):
            offsets[cam][session] = elapsed
            elapsed += length
    return offsets


@register_dataset("market1501", "market", "market-1501")
def read_market1501(root: Path) -> ReIDDataset:
    """Market-1501 (Zheng et al., ICCV 2015): 6 cameras, 25 fps, several video sessions per camera.

    ``time`` is ``(offset of the image's session + frame) / 25`` seconds with the session offsets of
    :func:`market_session_offsets`; ``meta["session_offsets"]`` holds them as
    ``{camid (0-based): {session: offset in frames}}``.
    """
    layout = bbox_layout("Market-1501-v15.09.15", MARKET_NAMES.example)
    dataset_dir = locate_dataset_dir(
        root,
        ("Market-1501-v15.09.15", "Market-1501", "market1501", "market1501/Market-1501-v15.09.15"),
        SPLIT_FOLDERS["train"],
        layout,
    )
    splits = read_splits(dataset_dir, MARKET_NAMES, layout)
    offsets = market_session_offsets(image for images in splits.values() for image in images)

    def time_of(image: ParsedImage) -> float:
        return (offsets[image.cam][image.session] + image.frame) / MARKET_FPS

    meta = {
        "fps": MARKET_FPS,
        "session_offsets": {cam - 1: sessions for cam, sessions in offsets.items()},
        "time_note": "TLift's assumption: the sessions of one camera were recorded back to back.",
    }
    return build_dataset("market1501", dataset_dir, splits, meta, time_of)


@register_dataset("dukemtmcreid", "duke", "dukemtmc")
def read_dukemtmc_reid(root: Path) -> ReIDDataset:
    """DukeMTMC-reID (Zheng et al., ICCV 2017): 8 synchronised cameras at 59.94 fps.

    ``time = (frame + DUKE_START_FRAMES[c] - 1) / 59.94`` seconds: the DukeMTMC global clock.
    """
    layout = bbox_layout("DukeMTMC-reID", DUKE_NAMES.example)
    dataset_dir = locate_dataset_dir(
        root,
        ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc-reid/DukeMTMC-reID", "dukemtmcreid/DukeMTMC-reID"),
        SPLIT_FOLDERS["train"],
        layout,
    )
    splits = read_splits(dataset_dir, DUKE_NAMES, layout)
    for image in (image for images in splits.values() for image in images):
        if image.cam > len(DUKE_START_FRAMES):
            raise DatasetLayoutError(
                f"Malformed file name {image.path}: DukeMTMC-reID has cameras c1..c{len(DUKE_START_FRAMES)}"
            )

    def time_of(image: ParsedImage) -> float:
        return (image.frame + DUKE_START_FRAMES[image.cam - 1] - 1) / DUKE_FPS

    meta = {
        "fps": DUKE_FPS,
        "sync_offsets": {cam: start - 1 for cam, start in enumerate(DUKE_START_FRAMES)},
        "time_note": "DukeMTMC devkit start times: global frame = local frame + start - 1.",
    }
    return build_dataset("dukemtmcreid", dataset_dir, splits, meta, time_of)


CUHK03_VARIANTS = ("labeled", "detected")


@register_dataset("cuhk03", "cuhk03np", "cuhk03-np")
def read_cuhk03_np(root: Path, variant: str = "detected") -> ReIDDataset:
    """CUHK03 in the new protocol (Zhong et al., CVPR 2017): 767 training / 700 test identities, 2 cameras.

    ``variant`` picks the hand-cropped (``"labeled"``) or DPM-detected (``"detected"``, torchreid's
    default) boxes. No timestamps.
    """
    if variant not in CUHK03_VARIANTS:
        raise ValueError(f"variant must be one of {CUHK03_VARIANTS}, got {variant!r}")
    layout = "  cuhk03-np/\n" + textwrap.indent(bbox_layout(variant, CUHK03_NAMES.example), "  ")
    dataset_dir = locate_dataset_dir(
        root,
        (variant, f"cuhk03-np/{variant}", f"CUHK03-NP/{variant}", f"cuhk03/cuhk03-np/{variant}"),
        SPLIT_FOLDERS["train"],
        layout,
    )
    other = next(v for v in CUHK03_VARIANTS if v != variant)
    if dataset_dir.name == other:
        raise DatasetLayoutError(f"Asked for CUHK03-NP variant {variant!r} but {dataset_dir} holds {other!r}")
    splits = read_splits(dataset_dir, CUHK03_NAMES, layout)
    return build_dataset(f"cuhk03-{variant}", dataset_dir, splits, {"variant": variant})
