"""Records: the one shape in which every dataset enters the package.

A reader turns a dataset folder into a :class:`ReIDDataset` of :class:`Record` lists, following the
community's conventions (torchreid): camera ids are 0-based, training person ids are relabelled to
``0..N-1``, query/gallery person ids are kept as written in the file names (distractors keep pid 0,
junk images are dropped).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

VISIBLE = "visible"
INFRARED = "infrared"


class DatasetLayoutError(ValueError):
    """A dataset folder or file does not have the layout its reader expects.

    The message names the path that was looked at and the layout that was expected.
    """


@dataclass(frozen=True)
class Record:
    """One image of one person (or vehicle) seen by one camera."""

    path: str
    pid: int
    camid: int  # 0-based
    modality: str = VISIBLE  # VISIBLE or INFRARED
    time: float | None = None  # seconds on a clock shared by all cameras, where the dataset allows it


@dataclass
class ReIDDataset:
    """Train / query / gallery records of one dataset (one trial or split of it)."""

    name: str
    root: str
    train: list[Record]
    query: list[Record]
    gallery: list[Record]
    meta: dict = field(default_factory=dict)

    @property
    def num_train_pids(self) -> int:
        return len({r.pid for r in self.train})

    @property
    def num_cams(self) -> int:
        return len({r.camid for r in self.train + self.query + self.gallery})

    def split(self, name: str) -> list[Record]:
        if name not in ("train", "query", "gallery"):
            raise ValueError(f"split must be 'train', 'query' or 'gallery', got {name!r}")
        return getattr(self, name)

    def summary(self) -> pd.DataFrame:
        """Images, identities and cameras per split, as a table."""
        rows = []
        for split in ("train", "query", "gallery"):
            recs = self.split(split)
            rows.append(
                {
                    "split": split,
                    "images": len(recs),
                    "identities": len({r.pid for r in recs}),
                    "cameras": len({r.camid for r in recs}),
                    "modalities": ", ".join(sorted({r.modality for r in recs})),
                    "timestamps": all(r.time is not None for r in recs) if recs else False,
                }
            )
        return pd.DataFrame(rows).set_index("split")

    def __repr__(self) -> str:
        return (
            f"ReIDDataset({self.name!r}, train={len(self.train)} imgs/{self.num_train_pids} ids, "
            f"query={len(self.query)}, gallery={len(self.gallery)}, folder={Path(self.root).name!r})"
        )


def relabel(records: Sequence[Record]) -> list[Record]:
    """Relabel person ids to ``0..N-1`` in sorted order of the original ids (for training splits)."""
    mapping = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [Record(r.path, mapping[r.pid], r.camid, r.modality, r.time) for r in records]


def require_dir(path: Path, layout: str) -> Path:
    """Return ``path`` if it is a folder, else raise :class:`DatasetLayoutError` describing ``layout``."""
    if not path.is_dir():
        raise DatasetLayoutError(f"Expected a folder at {path} but found none.\nExpected layout:\n{layout}")
    return path
