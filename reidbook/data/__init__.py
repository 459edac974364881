"""Data: the built-in synthetic world, dataset readers and their registry, samplers and transforms."""

from . import readers  # noqa: F401  (registers the readers)
from .loader import ImageDataset, build_test_loader, build_train_loader
from .records import INFRARED, VISIBLE, DatasetLayoutError, Record, ReIDDataset, relabel, with_label_noise
from .registry import available_datasets, load_dataset, register_dataset
from .sampler import RandomIdentitySampler
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_transforms

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INFRARED",
    "VISIBLE",
    "DatasetLayoutError",
    "ImageDataset",
    "RandomIdentitySampler",
    "Record",
    "ReIDDataset",
    "available_datasets",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "load_dataset",
    "register_dataset",
    "relabel",
    "with_label_noise",
]
