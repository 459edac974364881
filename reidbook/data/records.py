"""Records: the one shape in which every dataset enters the package.

A reader turns a dataset folder into a :class:`ReIDDataset` of :class:`Record` lists, following the
community's conventions (torchreid): camera ids are 0-based, training person ids are relabelled to
``0..N-1``, query/gallery person ids are kept as written in the file names (distractors keep pid 0,
junk images are dropped).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
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


def with_label_noise(dataset: ReIDDataset, share: float, seed: int = 0) -> ReIDDataset:
    """A copy of ``dataset`` whose training split has ``share`` of its images labelled as another identity.

    The wrong labels are drawn with a generator seeded by ``seed``: ``round(share * len(train))`` images,
    each given an identity drawn uniformly among the other training identities. One image of every
    (identity, modality) keeps its label, so every identity keeps images in every modality it had (the
    classifier's size and a cross-modality sampler's identities do not change). Query and gallery are
    untouched. The copy records ``meta["variant"] = {"label_noise": share, "seed": seed}``, which enters a
    run's key (:func:`reidbook.experiment.dataset_identity`). ``share = 0`` returns ``dataset`` itself.

    Raises:
        ValueError: if ``share`` is outside [0, 1), too large to leave one image per (identity, modality),
            if the training split has fewer than two identities, or if ``dataset`` already has label noise.
    """
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0.0 <= share < 1.0:
        raise ValueError(f"share must be a fraction in [0, 1), got {share!r}")
    if share == 0:
        return dataset
    if "label_noise" in dataset.meta.get("variant", {}):
        raise ValueError(f"{dataset.name} already has label noise {dataset.meta['variant']}")
    pids = sorted({r.pid for r in dataset.train})
    if len(pids) < 2:
        raise ValueError(
            f"label noise needs at least two training identities, {dataset.name} has {len(pids)}"
        )
    rng = np.random.default_rng([seed, 5051])
    kept: set[tuple[int, str]] = set()
    candidates = []
    for index in rng.permutation(len(dataset.train)):
        record = dataset.train[int(index)]
        if (record.pid, record.modality) in kept:
            candidates.append(int(index))
        kept.add((record.pid, record.modality))
    count = int(round(share * len(dataset.train)))
    if count > len(candidates):
        raise ValueError(
            f"share={share} asks for {count} wrong labels but only {len(candidates)} images can change while "
            "one image per (identity, modality) keeps its label"
        )
    position = {pid: i for i, pid in enumerate(pids)}
    train = list(dataset.train)
    for index in sorted(rng.choice(candidates, size=count, replace=False).tolist()):
        shift = int(rng.integers(1, len(pids)))  # another identity, uniformly
        train[index] = replace(train[index], pid=pids[(position[train[index].pid] + shift) % len(pids)])
    meta = copy.deepcopy(dataset.meta)
    meta["variant"] = {**meta.get("variant", {}), "label_noise": share, "seed": seed}
    return ReIDDataset(dataset.name, dataset.root, train, list(dataset.query), list(dataset.gallery), meta)


def require_dir(path: Path, layout: str) -> Path:
    """Return ``path`` if it is a folder, else raise :class:`DatasetLayoutError` describing ``layout``."""
    if not path.is_dir():
        raise DatasetLayoutError(f"Expected a folder at {path} but found none.\nExpected layout:\n{layout}")
    return path
