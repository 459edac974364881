"""A registry of dataset readers: ``load_dataset(name, root)`` is the one way data enters the package.

Add your own dataset with a few lines::

    from reidbook.data import register_dataset, ReIDDataset, Record

    @register_dataset("my-cameras")
    def read_my_cameras(root, **kwargs) -> ReIDDataset:
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .records import ReIDDataset

Reader = Callable[..., ReIDDataset]
_READERS: dict[str, Reader] = {}


def _key(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


def register_dataset(name: str, *aliases: str) -> Callable[[Reader], Reader]:
    """Decorator registering ``reader(root, **kwargs) -> ReIDDataset`` under ``name`` (and aliases)."""

    def wrap(reader: Reader) -> Reader:
        for n in (name, *aliases):
            _READERS[_key(n)] = reader
        return reader

    return wrap


def available_datasets() -> list[str]:
    return sorted(_READERS)


def load_dataset(name: str, root: str | Path, **kwargs) -> ReIDDataset:
    """Read dataset ``name`` from folder ``root``; extra keyword arguments go to the reader
    (for example ``trial=3`` for RegDB, ``version="v2"`` for MSMT17, ``test_size=800`` for VehicleID)."""
    reader = _READERS.get(_key(name))
    if reader is None:
        raise KeyError(f"Unknown dataset {name!r}. Known datasets: {', '.join(available_datasets())}")
    return reader(Path(root), **kwargs)
