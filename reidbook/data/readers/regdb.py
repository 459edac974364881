"""RegDB (Nguyen et al., Sensors 2017): one visible and one thermal camera, 412 people, 10 random trials.

Each trial splits the identities in half; ``idx/{train,test}_{visible,thermal}_{t}.txt`` list the images
as ``<path relative to the RegDB folder> <label>`` (the format read by the AGW/DDAG authors' code).
"""

from __future__ import annotations

from pathlib import Path

from ..records import INFRARED, VISIBLE, Record, ReIDDataset, relabel, require_dir
from ..registry import register_dataset
from .layout import locate_dataset_dir, read_list_file, require_file, require_listed_files

TRIALS = range(1, 11)
MODES = ("visible_to_thermal", "thermal_to_visible")
VISIBLE_CAM, THERMAL_CAM = 0, 1
LIST_LINE = "'Visible/100/male_back_v_06395_100.bmp 0'"
LAYOUT = f"""  RegDB/
    Visible/<id>/*.bmp
    Thermal/<id>/*.bmp
    idx/train_visible_<t>.txt  idx/train_thermal_<t>.txt  idx/test_visible_<t>.txt  idx/test_thermal_<t>.txt
        (t = 1..10, lines like {LIST_LINE})"""


def read_trial_list(dataset_dir: Path, split: str, modality: str, trial: int) -> list[Record]:
    """Records of ``idx/<split>_<modality>_<trial>.txt`` (modality ``visible`` or ``thermal``)."""
    list_file = require_file(dataset_dir / "idx" / f"{split}_{modality}_{trial}.txt", LAYOUT)
    entries = read_list_file(list_file, LIST_LINE)
    paths = [dataset_dir / relative for relative, _ in entries]
    require_listed_files(paths, list_file, LAYOUT)
    cam, record_modality = (VISIBLE_CAM, VISIBLE) if modality == "visible" else (THERMAL_CAM, INFRARED)
    return [Record(str(path), label, cam, record_modality) for path, (_, label) in zip(paths, entries)]


@register_dataset("regdb")
def read_regdb(root: Path, trial: int = 1, mode: str = "visible_to_thermal") -> ReIDDataset:
    """RegDB trial ``trial`` (1..10) searched in direction ``mode``.

    Camera 0 is the visible camera, camera 1 the thermal one (modality ``"infrared"``). Train = both
    modalities of the trial's training ids, relabelled; for ``"visible_to_thermal"`` the query is the test
    visible list and the gallery the test thermal list, the other way round for ``"thermal_to_visible"``.
    """
    if trial not in TRIALS:
        raise ValueError(f"trial must be an integer in 1..10, got {trial!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dataset_dir = locate_dataset_dir(root, ("RegDB", "regdb"), "idx", LAYOUT)
    require_dir(dataset_dir / "Visible", LAYOUT)
    require_dir(dataset_dir / "Thermal", LAYOUT)

    train = read_trial_list(dataset_dir, "train", "visible", trial)
    train += read_trial_list(dataset_dir, "train", "thermal", trial)
    test_visible = read_trial_list(dataset_dir, "test", "visible", trial)
    test_thermal = read_trial_list(dataset_dir, "test", "thermal", trial)
    query, gallery = (test_visible, test_thermal) if mode == MODES[0] else (test_thermal, test_visible)
    return ReIDDataset(
        f"regdb-trial{trial}-{mode}",
        str(dataset_dir),
        relabel(train),
        query,
        gallery,
        {"trial": trial, "mode": mode},
    )
