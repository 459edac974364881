"""Several processes, one training run: ``torchrun`` + DistributedDataParallel, on CUDA (nccl) or CPU (gloo).

    torchrun --nproc_per_node 2 -m reidbook train --method baseline --dataset synthetic-market --profile cpu

:func:`init_from_env` (the command line calls it) joins the process group that ``torchrun`` describes in
the environment; :func:`reidbook.engine.fit` then trains with every process whenever ``torch.distributed``
is initialised with more than one (:func:`is_distributed`). What a run of W processes computes:

* The single process's global batches, in its order. Every rank iterates the train loader's own batch
  sampler (same seed, same epoch, same choices of a switching hook) and keeps the positions ``rank, rank + W,
  rank + 2W, ...`` of each global batch (:class:`ShardedBatchSampler`, for any batch sampler: P x K,
  shuffled, cross-modality, Pyramid's switching one). The shards are strided rather than contiguous, so
  that each rank's share samples the whole batch (both modalities of a cross-modality batch; every
  identity of a P x K batch when K >= W).
* The single process's loss. The model's per-sample outputs and the batch's labels are gathered with
  autograd (:func:`gather_outputs`, :func:`gather_batch`) and put back in the global batch's order, so every
  rank's criterion sees the whole global batch (batch-hard triplets, class memories, pair losses) and
  computes the same loss L. The gather's backward sums the W ranks' gradients of their (equal) L for each
  rank's slice, W x dL/d(slice), and DDP averages over the W ranks, so every parameter's gradient is dL/dθ,
  the single process's. Parameters the criterion uses directly (QAConv's matcher) get dL/dθ in full in
  every rank, which DDP's average leaves as it is. Model and criterion run inside one DDP module
  (:class:`TrainStep`), so that DDP sees every parameter the loss uses; a stateful criterion (QAConv's
  class memory) updates identically in every rank from the global batch.
* Batch statistics of the global batch: with ``sync_batchnorm`` (``fit``'s default) every BatchNorm layer
  normalises with the mean and variance of the whole global batch and updates its running statistics from
  them, as one process does (:func:`convert_batchnorm`: torch's ``SyncBatchNorm`` on CUDA,
  :class:`GlobalBatchNorm`, the same arithmetic with collectives every backend has, elsewhere).
* Randomness: the model, the criterion and the hooks draw from generators seeded alike in every rank (a
  criterion that samples draws the same sample everywhere); each rank's data loading (augmentations) draws
  from its own stream, seeded by ``(seed, epoch, rank)``, rank 0's being the single process's seed.
* Evaluation: :func:`reidbook.engine.extract_features` gives each rank every W-th test image
  (:func:`shard_eval_loader`) and gathers the features back in order (:func:`gather_rows`), so every rank
  holds the single process's features and computes the same metrics.

Where the equivalence stops (a W-process run is the chapter's run in distribution, not bit for bit; the
process count does not enter the run's key, and ``training.json`` records it as ``world_size``):

* augmentations are drawn by W streams instead of one, so the augmented images differ from a single
  process's (the images drawn and their order do not); randomness inside the forward (dropout) draws the
  same numbers in every rank, for different images;
* sums run in another order (gathers, all-reduces): floats differ in their last bits;
* without ``sync_batchnorm`` each rank normalises with its own share's statistics (DDP copies rank 0's
  running statistics to the others before each forward);
* a batch-level structure that a model builds inside its forward sees only the rank's share: DDAG's graph
  joins the images of one identity within each rank's share (which, strided, still holds both
  modalities). An output of shape (b, b) over the local batch (pair distances) cannot be gathered and is
  refused with a message: such a method must compute it in its criterion from gathered per-sample outputs.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Sampler, SequentialSampler


# ---------------------------------------------------------------------------------------- process group
def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """Rank 0, the one that writes checkpoints and results and prints."""
    return rank() == 0


def init_from_env(device: str = "auto", timeout_s: float = 1800) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``, ``RANK``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); return whether there are several processes.

    The backend is nccl when the processes train on CUDA (``device`` ``"auto"`` with CUDA present, or
    ``"cuda..."``), each on the GPU of its ``LOCAL_RANK``, and gloo otherwise (the CPU). Without torchrun's
    variables, or with ``WORLD_SIZE=1``, nothing happens.

    Raises:
        ValueError: when ``WORLD_SIZE`` or ``LOCAL_RANK`` is not an integer, ``device`` names one GPU
            (``"cuda:1"``: each process takes its own), or this machine has fewer GPUs than processes.
    """
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError as error:
        raise ValueError(f"WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them): {error}") \
            from error
    if size <= 1 or is_distributed():
        return is_distributed()
    on_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device.startswith("cuda:"):
        raise ValueError(f"device {device!r} names one GPU, but each of the {size} processes trains on the "
                         "GPU of its LOCAL_RANK: pass 'cuda' or 'auto' (CUDA_VISIBLE_DEVICES picks the GPUs)")
    if on_cuda:
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"process {local_rank} of this machine has no GPU: {torch.cuda.device_count()} "
                             "GPUs are visible; start at most that many processes per machine")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if on_cuda else "gloo", timeout=dt.timedelta(seconds=timeout_s))
    return True


def close() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def comm_device() -> torch.device:
    """Where tensors must be for the collectives: the current GPU with nccl, the CPU otherwise."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait for every process (nothing without a process group)."""
    if is_distributed():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (picklable) in every process."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (running statistics, memories) into every process's ``module``."""
    if not is_distributed():
        return
    device = comm_device()
    for buffer in module.buffers():
        staged = buffer.to(device)
        dist.broadcast(staged, src=src)
        if staged is not buffer:
            buffer.copy_(staged)


def rank_epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of a rank's data stream in an epoch: rank 0 gets the single process's
    (:func:`reidbook.engine.epoch_seed` of ``(seed, epoch)``), the others one mixed from ``(seed, epoch,
    rank)``."""
    words = [seed, epoch] if rank == 0 else [seed, epoch, rank]
    high, low = np.random.SeedSequence(words).generate_state(2)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


# ------------------------------------------------------------------------------------------- sharding
class ShardedBatchSampler(Sampler[list[int]]):
    """One rank's share of the global batches of any batch sampler: positions ``rank, rank + W, ...`` of
    each global batch (W = ``world_size``), so that the W shares are disjoint and, interleaved
    (:func:`interleave`), are the global batch in its order. Iterates ``batch_sampler`` lazily, one global
    batch per share, so a sampler whose next batch depends on the training (a hook's choice) works.

    Raises (while iterating):
        ValueError: when a global batch's size is not a multiple of W.
    """

    def __init__(self, batch_sampler: Iterable[Sequence[int]], rank: int, world_size: int) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.batch_sampler = batch_sampler
        self.rank = rank
        self.world_size = world_size

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[list[int]]:
        for index, batch in enumerate(self.batch_sampler):
            batch = list(batch)
            if len(batch) % self.world_size:
                raise ValueError(
                    f"global batch {index} holds {len(batch)} images, not a multiple of the "
                    f"{self.world_size} processes: choose a batch size divisible by the number of processes"
                )
            yield batch[self.rank :: self.world_size]


def _loader_settings(loader: DataLoader) -> dict[str, Any]:
    workers = loader.num_workers
    return dict(num_workers=workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
                multiprocessing_context=loader.multiprocessing_context, generator=loader.generator,
                prefetch_factor=loader.prefetch_factor if workers else None,
                persistent_workers=loader.persistent_workers)


def shard_loader(loader: DataLoader, rank: int, world_size: int) -> DataLoader:
    """A DataLoader over the same dataset (same workers, collate, ...) whose batches are this rank's shares
    of ``loader``'s global batches (:class:`ShardedBatchSampler` around ``loader.batch_sampler``, which stays
    shared: ``set_epoch`` and a hook's choices on ``loader`` reach it).

    Raises:
        TypeError: when ``loader`` is not a DataLoader that draws batches (``batch_size=None``).
    """
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        raise TypeError(f"several processes need a DataLoader that draws batches (a batch size or a batch "
                        f"sampler) to shard; got {type(loader).__name__}")
    shards = ShardedBatchSampler(loader.batch_sampler, rank, world_size)
    return DataLoader(loader.dataset, batch_sampler=shards, **_loader_settings(loader))


def shard_eval_loader(loader: Any, rank: int, world_size: int) -> DataLoader | None:
    """This rank's images of a test loader that reads its dataset in order: the positions ``rank, rank + W,
    ...``, in batches of the loader's size; ``None`` when ``loader`` cannot be split so (not a DataLoader,
    not in order, or fewer images than processes)."""
    if (not isinstance(loader, DataLoader) or not isinstance(loader.sampler, SequentialSampler)
            or loader.batch_size is None or len(loader.dataset) < world_size):  # type: ignore[arg-type]
        return None
    positions = list(range(rank, len(loader.dataset), world_size))  # type: ignore[arg-type]
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=positions,
                      drop_last=loader.drop_last, **_loader_settings(loader))


def interleave(shards: Sequence[Tensor]) -> Tensor:
    """The inverse of strided sharding: row ``j`` of shard ``r`` goes to position ``r + j * W``
    (differentiable). Shards may differ in length by one (an evaluation's last images)."""
    count = len(shards)
    positions = torch.cat([torch.arange(len(s)) * count + r for r, s in enumerate(shards)])
    order = torch.argsort(positions).to(shards[0].device)
    return torch.cat(list(shards))[order]


# ------------------------------------------------------------------------------- collectives with autograd
class _GatherRows(torch.autograd.Function):
    """Every rank's (b, ...) tensor (equal shapes), with the adjoint backward: each rank's slice receives the
    sum over ranks of their gradients for it."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> tuple[Tensor, ...]:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return tuple(parts)

    @staticmethod
    def backward(ctx: Any, *grads: Tensor) -> Tensor:  # type: ignore[override]
        summed = torch.stack(grads).contiguous()  # (W, b, ...)
        dist.all_reduce(summed)
        return summed[dist.get_rank()]


class _AllReduceSum(torch.autograd.Function):
    """The sum over ranks, with its adjoint (the sum over ranks of the gradients) as backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        total = x.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        total = grad.clone()
        dist.all_reduce(total)
        return total


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over the processes, differentiable."""
    return _AllReduceSum.apply(x)


def gather_outputs(outputs: Any, local_size: int, name: str = "outputs") -> Any:
    """The global batch's outputs: every per-sample tensor (first dimension ``local_size``) of ``outputs``
    (a tensor, or dicts / lists / tuples of them) gathered from every rank, with autograd, in the global
    batch's order; other values (``None``, numbers) are kept.

    Raises:
        ValueError: for a tensor that is not per-sample, or of shape (b, b, ...) over the local batch (a
            batch-level structure such as pair distances, which cannot be gathered).
    """
    if isinstance(outputs, Tensor):
        if outputs.dim() == 0 or outputs.shape[0] != local_size:
            raise ValueError(
                f"{name} has shape {tuple(outputs.shape)}: under several processes the model's training "
                f"outputs must be per-sample tensors (first dimension = the process's {local_size} images), "
                "so that they can be gathered into the global batch"
            )
        if outputs.dim() >= 2 and local_size > 1 and outputs.shape[1] == local_size:
            raise ValueError(
                f"{name} has shape {tuple(outputs.shape)}, (b, b) over the process's {local_size} images: a "
                "batch-level structure (e.g. pair distances) computed inside the forward sees only this "
                "process's share of the batch and cannot be gathered. Compute it in the criterion from "
                "gathered per-sample outputs (or, if it is per-sample and its second dimension only happens "
                "to equal the local batch size, change the batch size or the number of processes)"
            )
        return interleave(_GatherRows.apply(outputs))
    if isinstance(outputs, Mapping):
        return {k: gather_outputs(v, local_size, f"{name}[{k!r}]") for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(gather_outputs(v, local_size, f"{name}[{i}]") for i, v in enumerate(outputs))
    return outputs


def gather_batch(batch: Mapping[str, Any], local_size: int) -> dict[str, Tensor]:
    """The global batch's labels: every per-sample tensor of ``batch`` with at most one dimension (``pid``,
    ``camid``, ``index``, ``modality``) gathered in the global batch's order. Images are left out: they
    stay with the process that loaded them."""
    return {key: interleave(_GatherRows.apply(value)) for key, value in batch.items()
            if isinstance(value, Tensor) and value.dim() == 1 and value.shape[0] == local_size}


def gather_rows(values: Tensor | Mapping[str, Tensor], total: int) -> Tensor | dict[str, Tensor]:
    """Every rank's rows of a strided split of ``total`` rows (:func:`shard_eval_loader`), gathered in
    order (no autograd): a tensor or a dict of tensors, on their own device."""
    if isinstance(values, Mapping):
        return {k: gather_rows(v, total) for k, v in values.items()}  # type: ignore[misc]
    count = world_size()
    longest = len(range(0, total, count))
    device = comm_device()
    padded = torch.zeros((longest, *values.shape[1:]), dtype=values.dtype, device=device)
    padded[: len(values)] = values.to(device)
    parts = [torch.empty_like(padded) for _ in range(count)]
    dist.all_gather(parts, padded)
    shards = [part[: len(range(r, total, count))] for r, part in enumerate(parts)]
    return interleave(shards).to(values.device)


# -------------------------------------------------------------------------------------------- batch norm
class GlobalBatchNorm(_BatchNorm):
    """BatchNorm over the global batch of every process (Ioffe & Szegedy's normalisation with the whole
    batch's statistics), for any backend: the per-channel sum and count, then the sum of squared deviations
    from the global mean, are summed over the processes (two differentiable all-reduces), the input is
    normalised by the biased variance and the running statistics are updated with the unbiased one, as
    ``BatchNorm`` does over one process's batch. Statistics are computed in float32 at least (float64 for
    float64 inputs). In eval mode, or with one process, it is a plain BatchNorm. Holds the same parameters
    and buffers as the layer it replaces (:func:`convert_batchnorm`), so state dicts are interchangeable."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input (N, C, ...) of at least 2 dimensions, got {input.dim()}")

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        count = torch.tensor([input.numel() / input.shape[1]], dtype=x.dtype, device=input.device)
        totals = all_reduce_sum(torch.cat([x.sum(dims), count]))  # (C + 1,): global sums and count
        n = totals[-1]
        mean = totals[:-1] / n  # (C,)
        centered = x - mean.view(shape)
        var = all_reduce_sum(centered.pow(2).sum(dims)) / n  # (C,) biased
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * n / (n - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased.detach(), alpha=factor)
        out = centered * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


def _replacement(layer: _BatchNorm, device: torch.device) -> _BatchNorm:
    kind = nn.SyncBatchNorm if device.type == "cuda" else GlobalBatchNorm
    new = kind(layer.num_features, layer.eps, layer.momentum, layer.affine, layer.track_running_stats)
    new.weight, new.bias = layer.weight, layer.bias  # the same Parameters: the optimizer keeps them
    new.running_mean, new.running_var = layer.running_mean, layer.running_var
    new.num_batches_tracked = layer.num_batches_tracked
    new.train(layer.training)
    return new


def _plain_batchnorm(module: nn.Module) -> bool:
    """A BatchNorm1d/2d/3d, or a subclass that keeps their forward (e.g. one that only fixes its bias)."""
    return (isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d))
            and type(module).forward is _BatchNorm.forward)


def convert_batchnorm(model: nn.Module, device: torch.device) -> Callable[[], None]:
    """Replace every BatchNorm layer of ``model`` (``BatchNorm1d/2d/3d`` and subclasses that keep their
    forward; a subclass with its own forward is left as it is) by a layer normalising over the global batch
    (torch's ``SyncBatchNorm`` on CUDA, :class:`GlobalBatchNorm` elsewhere) that shares its parameters and
    buffers; return the function that puts the original layers back (their parameters and statistics are
    the trained ones, being the same tensors)."""
    swaps: list[tuple[nn.Module, str, nn.Module, nn.Module]] = []
    made: dict[int, _BatchNorm] = {}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if _plain_batchnorm(child):
                if id(child) not in made:
                    made[id(child)] = _replacement(child, device)  # type: ignore[arg-type]
                swaps.append((parent, name, child, made[id(child)]))
    for parent, name, _, new in swaps:
        setattr(parent, name, new)

    def revert() -> None:
        for parent, name, original, new in swaps:
            original.train(new.training)
            setattr(parent, name, original)

    return revert


# ------------------------------------------------------------------------------------------ a train step
class TrainStep(nn.Module):
    """One training step's forward as one module, for DDP: ``feed(model, batch)`` on this process's share,
    the per-sample outputs and the labels gathered into the global batch, then ``criterion(outputs,
    batch)``. Returns ``(outputs, batch, terms)``, all of the global batch (the batch without images).
    Holding the criterion (when it is a module) lets DDP see the parameters it uses.

    Wrap it in DDP with ``find_unused_parameters=True``: a criterion may leave some parameters out of a step
    (QAConv's matcher, before its class memory holds a class), which DDP must then be told. ``unused`` is a
    parameter no loss ever uses, so that DDP's search always finds one and does not warn, once per
    process, that it found none."""

    def __init__(self, model: nn.Module, criterion: Callable[[Any, Any], Mapping[str, Tensor]],
                 feed: Callable[[nn.Module, Any], Any]) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.feed = feed
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, batch: Mapping[str, Any]) -> tuple[Any, dict[str, Tensor], dict[str, Tensor]]:
        local_size = int(batch["pid"].shape[0])
        outputs = gather_outputs(self.feed(self.model, batch), local_size)
        full = gather_batch(batch, local_size)
        return outputs, full, dict(self.criterion(outputs, full))
