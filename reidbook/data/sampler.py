"""P x K identity sampling (Hermans et al. 2017): every batch holds P identities with K images each,
so that each image in the batch has positives and negatives for the batch-hard triplet loss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol

import numpy as np
from torch.utils.data import Sampler


class RandomIdentitySampler(Sampler[int]):
    """Yields dataset indices in batches of ``P = batch_size // num_instances`` identities x
    ``K = num_instances`` images; the batches of one epoch are concatenated.

    Per epoch:

    - identities are visited in a shuffled order, P distinct ones per batch; when the order runs out it
      is reshuffled, so every identity appears about equally often;
    - each identity keeps a shuffled pool of its images and hands out K at a time, refilling the pool
      when fewer than K are left, so every image is used about once per epoch; an identity with fewer
      than K images gives all of them plus random repeats (sampling with replacement);
    - the epoch holds ``(sum over identities of max(n_images, K) // K) // P`` batches, as torchreid's
      sampler does (about one pass over the images).

    Randomness comes from a generator seeded by ``(seed, epoch)``: the same seed and epoch give the same
    indices, so a resumed run draws the batches of an uninterrupted one. ``set_epoch`` picks the epoch;
    without it, each new iteration moves on to the next epoch.
    """

    def __init__(self, pids: Sequence[int], batch_size: int, num_instances: int, seed: int = 0) -> None:
        if num_instances < 1:
            raise ValueError(f"num_instances must be >= 1, got {num_instances}")
        if batch_size % num_instances != 0:
            raise ValueError(
                f"batch_size ({batch_size}) must be a multiple of num_instances ({num_instances})"
            )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.seed = seed
        self.epoch = 0
        indices_of: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            indices_of[int(pid)].append(index)
        self.pids = sorted(indices_of)
        self.indices_of = {pid: np.asarray(indices_of[pid]) for pid in self.pids}
        if len(self.pids) < self.num_pids_per_batch:
            raise ValueError(
                f"a batch needs {self.num_pids_per_batch} identities (batch_size {batch_size} / "
                f"num_instances {num_instances}) but the data hold only {len(self.pids)}"
            )
        chunks = sum(max(len(idx), num_instances) // num_instances for idx in self.indices_of.values())
        self.num_batches = chunks // self.num_pids_per_batch

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration from epoch ``epoch``'s random stream."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        pools = {pid: _InstancePool(idx, self.num_instances, rng) for pid, idx in self.indices_of.items()}
        order = _IdentityOrder(self.pids, rng)
        for _ in range(self.num_batches):
            for pid in order.take(self.num_pids_per_batch):
                yield from pools[pid].take().tolist()


class ShuffleSampler(Sampler[int]):
    """Every index once per epoch, in an order drawn from ``(seed, epoch)``: the plain shuffled batches
    some methods train with (QAConv's authors do), reproducible and resumable like the P x K sampler."""

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration from epoch ``epoch``'s random stream."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        yield from rng.permutation(self.num_samples).tolist()


class _IdentityOrder:
    """Identities in a shuffled order, reshuffled when exhausted (leftovers first, not repeated), so
    ``take(P)`` returns P distinct ones."""

    def __init__(self, pids: Sequence[int], rng: np.random.Generator) -> None:
        self.pids = list(pids)
        self.rng = rng
        self.queue: list[int] = []

    def take(self, count: int) -> list[int]:
        if len(self.queue) < count:
            leftover = self.queue
            fresh = [p for p in self.rng.permutation(self.pids).tolist() if p not in leftover]
            self.queue = leftover + fresh
        taken, self.queue = self.queue[:count], self.queue[count:]
        return taken


class _InstancePool:
    """The images of one identity in a shuffled pool; ``take()`` returns K of them."""

    def __init__(self, indices: np.ndarray, k: int, rng: np.random.Generator) -> None:
        self.indices = indices
        self.k = k
        self.rng = rng
        self.pool = np.empty(0, dtype=indices.dtype)

    def take(self) -> np.ndarray:
        if len(self.indices) < self.k:  # all images plus random repeats
            extra = self.rng.choice(self.indices, self.k - len(self.indices), replace=True)
            return self.rng.permutation(np.concatenate([self.indices, extra]))
        if len(self.pool) < self.k:  # refill; the leftovers go first and are not repeated
            fresh = self.rng.permutation(self.indices)
            self.pool = np.concatenate([self.pool, fresh[~np.isin(fresh, self.pool)]])
        taken, self.pool = self.pool[: self.k], self.pool[self.k :]
        return taken


# ---------------------------------------------------------------------------- streams switched per batch
class BatchStream(Protocol):
    """An endless source of batches of dataset indices drawn from the generator it is given."""

    def batches(self, rng: np.random.Generator) -> Iterator[list[int]]: ...


class RandomBatches:
    """Uniformly random mini-batches of ``batch_size`` distinct indices out of ``0..num_samples-1``: the
    indices in a shuffled order cut into batches; the last incomplete batch is dropped and a new shuffle
    starts, so the stream never ends."""

    def __init__(self, num_samples: int, batch_size: int) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_samples < batch_size:
            raise ValueError(f"a batch of {batch_size} needs as many samples, the data hold {num_samples}")
        self.num_samples = num_samples
        self.batch_size = batch_size

    def batches(self, rng: np.random.Generator) -> Iterator[list[int]]:
        while True:
            order = rng.permutation(self.num_samples)
            for start in range(0, self.num_samples - self.batch_size + 1, self.batch_size):
                yield order[start : start + self.batch_size].tolist()


class IdentityBalancedBatches:
    """Batches of ``num_identities`` distinct identities x ``num_instances`` distinct images of each.

    Identities with fewer than ``num_instances`` images are skipped: they are never drawn (no sampling
    with replacement); a printed message, ``skipped_pids`` / ``num_skipped`` and the ``repr`` say which
    and how many.
    Identities are visited in shuffled rounds and each hands out its images from a shuffled pool, as in
    :class:`RandomIdentitySampler`.
    """

    def __init__(self, pids: Sequence[int], num_identities: int, num_instances: int) -> None:
        if num_identities < 1 or num_instances < 1:
            raise ValueError(
                f"num_identities and num_instances must be >= 1, got {num_identities} and {num_instances}"
            )
        indices_of: dict[int, list[int]] = defaultdict(list)
        for index, pid in enumerate(pids):
            indices_of[int(pid)].append(index)
        self.num_identities = num_identities
        self.num_instances = num_instances
        self.skipped_pids = sorted(p for p, idx in indices_of.items() if len(idx) < num_instances)
        self.num_skipped = len(self.skipped_pids)
        self.pids = sorted(p for p, idx in indices_of.items() if len(idx) >= num_instances)
        self.indices_of = {pid: np.asarray(indices_of[pid]) for pid in self.pids}
        if self.skipped_pids:
            print(f"{self!r}; first skipped ones: {self.skipped_pids[:5]}", flush=True)
        if len(self.pids) < num_identities:
            raise ValueError(
                f"a batch needs {num_identities} identities with at least {num_instances} images each, but "
                f"only {len(self.pids)} of the {len(indices_of)} identities have that many"
            )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.num_identities} identities x {self.num_instances} images; "
            f"{self.num_skipped} of {self.num_skipped + len(self.pids)} identities skipped: fewer than "
            f"{self.num_instances} images)"
        )

    def batches(self, rng: np.random.Generator) -> Iterator[list[int]]:
        pools = {pid: _InstancePool(idx, self.num_instances, rng) for pid, idx in self.indices_of.items()}
        order = _IdentityOrder(self.pids, rng)
        while True:
            yield [i for pid in order.take(self.num_identities) for i in pools[pid].take().tolist()]


class SwitchingBatchSampler(Sampler[list[int]]):
    """A batch sampler (``DataLoader(batch_sampler=...)``) whose every batch comes from one of several
    named :class:`BatchStream` s: batch ``index`` of epoch ``epoch`` comes from the stream that
    ``chooser(epoch, index)`` names at the moment the batch is drawn (``default`` without a chooser).

    A training hook can thus pick the stream of the next batch, provided the DataLoader asks for batches
    one at a time, as it does with ``num_workers=0``. Each stream draws from its own generator seeded by
    ``(seed, epoch, position of the stream in streams)`` and advances only when it is chosen: the same
    choices give the same batches, so replaying an epoch's choices replays its batches. ``drawn`` lists
    the streams of the batches drawn so far in the current iteration. ``set_epoch`` picks the epoch;
    without it, each new iteration moves on to the next epoch.
    """

    def __init__(
        self, streams: Mapping[str, BatchStream], num_batches: int, *, default: str, seed: int = 0
    ) -> None:
        if not streams:
            raise ValueError("streams must name at least one batch stream")
        if default not in streams:
            raise ValueError(f"default must be one of the streams {sorted(streams)}, got {default!r}")
        if num_batches < 1:
            raise ValueError(f"num_batches must be >= 1, got {num_batches}")
        self.streams = dict(streams)
        self.num_batches = num_batches
        self.default = default
        self.seed = seed
        self.epoch = 0
        self.chooser: Callable[[int, int], str] | None = None
        self.drawn: list[str] = []

    def set_chooser(self, chooser: Callable[[int, int], str] | None) -> None:
        """``chooser(epoch, index) -> stream name``, asked before each batch; ``None``: the default."""
        self.chooser = chooser

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration from epoch ``epoch``'s random streams."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        self.epoch += 1
        self.drawn = []
        position = {name: i for i, name in enumerate(self.streams)}
        running: dict[str, Iterator[list[int]]] = {}
        for index in range(self.num_batches):
            name = self.default if self.chooser is None else self.chooser(epoch, index)
            if name not in self.streams:
                raise ValueError(
                    f"the chooser named stream {name!r} for batch {index} of epoch {epoch}; "
                    f"expected one of {sorted(self.streams)}"
                )
            if name not in running:
                rng = np.random.default_rng([self.seed, epoch, position[name]])
                running[name] = self.streams[name].batches(rng)
            self.drawn.append(name)
            yield next(running[name])


class CrossModalityIdentitySampler(Sampler[int]):
    """Identity-balanced cross-modality sampling (Ye et al., DDAG, ECCV 2020, Section 3.3): every batch
    holds ``n = num_pids`` identities with ``m = num_instances`` visible and ``m`` infrared images each,
    ``K = 2mn`` images in all. Use it as a DataLoader ``sampler`` with ``batch_size = sampler.batch_size``
    (``2mn``) and ``drop_last=True``; the batches of one epoch are concatenated.

    Within a batch the ``mn`` visible images come first (identity by identity, ``m`` each), then the
    ``mn`` infrared ones in the same identity order. Identities are visited as in
    :class:`RandomIdentitySampler` (shuffled, ``n`` distinct ones per batch, reshuffled when exhausted)
    and each (identity, modality) keeps its own shuffled pool of images (random repeats when it has
    fewer than ``m``). An epoch is about one pass over the larger modality:
    ``max over modalities of (sum over identities of max(n_images, m) // m) // n`` batches. Identities
    lacking one of the two modalities cannot be sampled and are skipped, with a printed message saying
    how many.

    Randomness comes from a generator seeded by ``(seed, epoch)``, so a resumed run draws the batches of
    an uninterrupted one; ``set_epoch`` picks the epoch, without it each new iteration moves to the next.

    Args:
        pids: the identity of every dataset index.
        modalities: the modality code of every dataset index, 0 (visible) or 1 (infrared), the codes of
            the batches' ``"modality"`` (``reidbook.data.loader.MODALITY_CODES`` maps records' names).
        num_pids: identities per batch, ``n``.
        num_instances: images per identity and modality, ``m``.
    """

    def __init__(
        self,
        pids: Sequence[int],
        modalities: Sequence[int],
        num_pids: int,
        num_instances: int,
        seed: int = 0,
    ) -> None:
        if len(pids) != len(modalities):
            raise ValueError(
                f"pids and modalities must have one entry per image, got {len(pids)} and {len(modalities)}"
            )
        if num_pids < 1 or num_instances < 1:
            raise ValueError(f"num_pids and num_instances must be >= 1, got {num_pids} and {num_instances}")
        codes = sorted({int(m) for m in modalities} - {0, 1})
        if codes:
            raise ValueError(f"modalities must be 0 (visible) or 1 (infrared), got the codes {codes}")
        self.num_pids = num_pids
        self.num_instances = num_instances
        self.batch_size = 2 * num_pids * num_instances
        self.seed = seed
        self.epoch = 0
        indices_of: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (pid, modality) in enumerate(zip(pids, modalities)):
            indices_of[int(pid), int(modality)].append(index)
        all_pids = {pid for pid, _ in indices_of}
        self.pids = sorted(p for p in all_pids if (p, 0) in indices_of and (p, 1) in indices_of)
        self.skipped_pids = sorted(all_pids - set(self.pids))
        if self.skipped_pids:
            print(
                f"CrossModalityIdentitySampler: skipping {len(self.skipped_pids)} of {len(all_pids)} "
                f"identities that lack visible or infrared images (first ones: {self.skipped_pids[:5]})",
                flush=True,
            )
        if len(self.pids) < num_pids:
            raise ValueError(
                f"a batch needs {num_pids} identities with both modalities but the data hold only "
                f"{len(self.pids)}"
            )
        self.indices_of = {(p, m): np.asarray(indices_of[p, m]) for p in self.pids for m in (0, 1)}
        chunks = [
            sum(max(len(self.indices_of[p, m]), num_instances) // num_instances for p in self.pids)
            for m in (0, 1)
        ]
        self.num_batches = max(chunks) // num_pids

    def set_epoch(self, epoch: int) -> None:
        """Draw the next iteration from epoch ``epoch``'s random stream."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        pools = {key: _InstancePool(idx, self.num_instances, rng) for key, idx in self.indices_of.items()}
        order = _IdentityOrder(self.pids, rng)
        for _ in range(self.num_batches):
            batch_pids = order.take(self.num_pids)
            for modality in (0, 1):
                for pid in batch_pids:
                    yield from pools[pid, modality].take().tolist()
