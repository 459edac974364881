"""Readers of the real datasets; importing this package registers them with :func:`load_dataset`.

Registered names (keyword arguments; folder looked for under ``root``):

- ``market1501`` (Market-1501-v15.09.15)
- ``dukemtmcreid`` (DukeMTMC-reID)
- ``cuhk03``: ``variant="detected"|"labeled"`` (cuhk03-np/<variant>)
- ``msmt17``: ``version=None|"v1"|"v2"`` (MSMT17_V1, MSMT17_V2)
- ``sysumm01``: ``mode="all"|"indoor"`` (SYSU-MM01)
- ``regdb``: ``trial=1..10``, ``mode="visible_to_thermal"|"thermal_to_visible"`` (RegDB)
- ``veri776`` (VeRi)
- ``vehicleid``: ``test_size=800|1600|2400``, ``seed=0`` (VehicleID_V1.0)

``root`` may be the dataset folder itself or a folder holding it under its usual unpacked name.
"""

from . import bbox_folders, msmt17, regdb, sysu, vehicles  # noqa: F401  (registration on import)
from .checks import check_cross_camera_matches, queries_without_cross_camera_match
from .images import IMAGE_SUFFIXES, ImageReadError, list_image_files, read_image
from .layout import locate_dataset_dir

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageReadError",
    "check_cross_camera_matches",
    "list_image_files",
    "locate_dataset_dir",
    "queries_without_cross_camera_match",
    "read_image",
]
