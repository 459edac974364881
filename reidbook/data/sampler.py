"""P x K identity sampling (Hermans et al. 2017): every batch holds P identities with K images each,
so that each image in the batch has positives and negatives for the batch-hard triplet loss.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence

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
