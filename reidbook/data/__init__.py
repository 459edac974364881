"""Data: the built-in synthetic world, dataset readers and their registry, samplers and transforms."""

from . import readers  # noqa: F401  (registers the readers)
from .records import INFRARED, VISIBLE, DatasetLayoutError, Record, ReIDDataset, relabel
from .registry import available_datasets, load_dataset, register_dataset

__all__ = [
    "INFRARED",
    "VISIBLE",
    "DatasetLayoutError",
    "Record",
    "ReIDDataset",
    "available_datasets",
    "load_dataset",
    "register_dataset",
    "relabel",
]
