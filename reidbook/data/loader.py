"""Datasets and loaders: records -> batches ``{"img", "pid", "camid", "index", "modality"}``.

Decoded images are cached in memory as uint8 tensors already resized to the network's input size, so
after the first epoch an epoch costs only the cheap tensor augmentations (the built-in world's ~10k
images of 128 x 64 take about 250 MB).

Reproducibility: the sampler draws from ``(seed, epoch)``, and the augmentations from torch's global
random generator, which the engine seeds at the start of every epoch. With ``num_workers=0`` (the
default) every epoch's batches and augmentations therefore follow ``(seed, epoch)`` exactly, and a run
resumed from a checkpoint draws what the uninterrupted run drew. Worker processes (``num_workers > 0``)
are persistent, to keep their image caches: they are seeded once, when the first epoch starts, so a run
is reproducible from its start but a resumed run's augmentations differ from the uninterrupted run's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms.v2 import functional as TF

from .readers import read_image
from .records import INFRARED, VISIBLE, Record
from .sampler import RandomIdentitySampler, ShuffleSampler
from .transforms import Transform, build_transforms

MODALITY_CODES = {VISIBLE: 0, INFRARED: 1}


def load_uint8(path: str, size: tuple[int, int] | None = None) -> Tensor:
    """Decode ``path`` into a uint8 tensor (3, H, W), resized (antialiased) to ``size = (H, W)`` if given."""
    array = np.array(read_image(path))  # (H, W, 3) uint8, RGB, writable copy
    image = torch.from_numpy(array).permute(2, 0, 1).contiguous()  # (3, H, W)
    if size is not None:
        image = TF.resize(image, list(size), antialias=True)
    return image


class ImageDataset(Dataset):
    """Records as samples ``{"img": transform(image), "pid", "camid", "index", "modality"}``.

    Args:
        records: the images, in the order that ``index`` refers to.
        transform: maps a uint8 image tensor (3, H, W) to the network's input.
        cache: keep decoded images in memory (decoded on first use).
        cache_size: ``(H, W)`` to which images are resized before caching (saves memory and time when the
            transform resizes to the same size first); ``None`` keeps the original size.
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Transform,
        cache: bool = True,
        cache_size: tuple[int, int] | None = None,
    ) -> None:
        unknown = {r.modality for r in records} - set(MODALITY_CODES)
        if unknown:
            raise ValueError(
                f"unknown modality {sorted(unknown)} in records; expected one of {sorted(MODALITY_CODES)}"
            )
        self.records = list(records)
        self.transform = transform
        self.cache_size = cache_size
        self._cache: list[Tensor | None] | None = [None] * len(self.records) if cache else None

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> Tensor:
        """The decoded uint8 image (3, H, W) of record ``index`` (from the cache when enabled)."""
        if self._cache is None:
            return load_uint8(self.records[index].path, self.cache_size)
        image = self._cache[index]
        if image is None:
            image = self._cache[index] = load_uint8(self.records[index].path, self.cache_size)
        return image

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        return {
            "img": self.transform(self.image(index)),
            "pid": record.pid,
            "camid": record.camid,
            "index": index,
            "modality": MODALITY_CODES[record.modality],
        }


def build_train_loader(
    records: Sequence[Record],
    *,
    height: int,
    width: int,
    batch_size: int,
    num_instances: int,
    seed: int,
    num_workers: int = 0,
    cache: bool = True,
    shuffle: bool = False,
    **augment,
) -> DataLoader:
    """Training loader: P x K identity batches (:class:`RandomIdentitySampler`, ``num_instances`` images
    per identity) or, with ``shuffle=True``, plain shuffled batches (:class:`ShuffleSampler`), either one
    reachable as ``loader.sampler`` with ``set_epoch``, of augmented images; ``augment`` goes to
    :func:`build_transforms` (``flip``, ``pad``, ``random_erasing``, ``random_block``, ``normalize``)."""
    transform = build_transforms(height, width, train=True, **augment)
    dataset = ImageDataset(records, transform, cache=cache, cache_size=(height, width))
    sampler = (ShuffleSampler(len(records), seed) if shuffle
               else RandomIdentitySampler([r.pid for r in records], batch_size, num_instances, seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,  # workers keep their image caches between epochs
    )


def build_test_loader(
    records: Sequence[Record],
    *,
    height: int,
    width: int,
    batch_size: int = 128,
    num_workers: int = 0,
    cache: bool = True,
) -> DataLoader:
    """Test loader: resized, normalised images in record order."""
    transform = build_transforms(height, width, train=False)
    dataset = ImageDataset(records, transform, cache=cache, cache_size=(height, width))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
