"""The training engine: one loop (:func:`fit`) every chapter reuses, plus feature extraction and evaluation.

Contract (shared with the models/data engineer):

- a train batch is a dict ``{"img": (B,3,H,W), "pid": (B,), "camid": (B,), "index": (B,), ...}``;
- ``feed(model, batch)`` runs the model on a batch; the default, :func:`feed_images`, is
  ``model(batch["img"])``, and a method that needs more of the batch (an image's modality) passes its own.
  The model returns a dict of outputs in train mode and its test features in eval mode: an embedding
  (B, ...) or a dict of tensors (B, ...) that the method's evaluator understands;
- ``criterion(outputs, batch)`` returns a dict of NAMED scalar loss terms; the loop minimises
  ``sum(loss_weights.get(name, 1.0) * term)``.

Reproducibility: at the start of every epoch the python, numpy and torch (CPU and CUDA) generators are
reseeded from ``(seed, epoch)`` and ``sampler.set_epoch(epoch)`` is called on the train loader's sampler and
batch sampler, so the data order and the augmentation of an epoch (drawn from torch's global generator when
``num_workers=0``, or from worker seeds that the DataLoader derives from it) depend on the seed and the epoch
only. With ``checkpoint_dir`` set, :func:`fit` writes an atomic checkpoint at the end of every epoch (and,
optionally, every ``checkpoint_every_steps`` steps), with its SHA-256 recorded in the folder's manifest, and
resumes from the newest one that matches its checksum and loads (a truncated or corrupted one is skipped
with a warning): a resumed run ends with the same weights and history as an uninterrupted one.

Several processes (``torchrun``; :mod:`reidbook.distributed` says what they compute and where the
equivalence with one process stops): when ``torch.distributed`` is initialised with more than one process,
:func:`fit` trains the model with DistributedDataParallel on the single process's global batches, each rank
loading its share; the criterion, the hooks (``state.outputs``, ``state.batch``, ``state.losses``) and the
history see the whole global batch; BatchNorm uses the global batch's statistics (``sync_batchnorm``); only
rank 0 writes checkpoints and every rank resumes from the one rank 0 picks; :func:`extract_features` splits
the images between the ranks and gathers their features in order.
"""

from __future__ import annotations

import bisect
import io
import itertools
import math
import random
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from . import distributed
from .atomic import CorruptFileError, Manifest, atomic_write_text, checked_torch_save, read_verified
from .progress import tqdm

Batch = dict[str, Any]
Criterion = Callable[[Any, Batch], Mapping[str, torch.Tensor]]
Feed = Callable[[nn.Module, Batch], Any]
Evaluator = Callable[[nn.Module], Mapping[str, Any]]

HOOK_EVENTS = ("on_train_start", "on_epoch_start", "on_step_start", "on_step_end", "on_epoch_end")
RESERVED_COLUMNS = {"epoch", "step", "global_step", "steps", "total", "lr", "time", "eval_time"}
CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    """A loss term became NaN or infinite; carries the term's name, the epoch and the step."""

    def __init__(self, term: str, value: float, epoch: int, step: int, global_step: int):
        super().__init__(
            f"loss term {term!r} is {value} at epoch {epoch}, step {step} (global step {global_step}); "
            "training stopped. Lower the learning rate, check the inputs, or clip gradients (grad_clip=...)."
        )
        self.term, self.value, self.epoch, self.step, self.global_step = term, value, epoch, step, global_step


# ------------------------------------------------------------------------------------------------ seeding
def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and every CUDA device) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def epoch_seed(seed: int, epoch: int) -> int:
    """A well-mixed 63-bit seed derived from ``(seed, epoch)``."""
    high, low = np.random.SeedSequence([seed, epoch]).generate_state(2)
    return (int(high) << 32 | int(low)) & (2**63 - 1)


def _rng_state() -> dict[str, Any]:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class _DataRandomness:
    """Under several processes: the CPU generators (python, numpy, torch) that this rank's data loading
    draws from, kept apart from the model's (which stay alike in every rank). Seeded per epoch from
    ``(seed, epoch, rank)``; a mid-epoch resume replays the epoch's batches, which replays this stream."""

    def __init__(self, seed: int, rank: int) -> None:
        self.seed, self.rank = seed, rank
        self.state: tuple[Any, Any, torch.Tensor] | None = None

    def start_epoch(self, epoch: int) -> None:
        saved = self._get()
        seed = distributed.rank_epoch_seed(self.seed, epoch, self.rank)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.default_generator.manual_seed(seed)  # the CPU generator only: CUDA's belongs to the model
        self.state = self._get()
        self._set(saved)

    @staticmethod
    def _get() -> tuple[Any, Any, torch.Tensor]:
        return random.getstate(), np.random.get_state(), torch.get_rng_state()

    @staticmethod
    def _set(state: tuple[Any, Any, torch.Tensor]) -> None:
        random.setstate(state[0])
        np.random.set_state(state[1])
        torch.set_rng_state(state[2])

    def draw(self, make: Callable[[], Any]) -> Any:
        """``make()`` (create a loader's iterator, fetch a batch) with the data stream's generators."""
        if self.state is None:
            raise RuntimeError("start_epoch must be called before drawing data")
        saved = self._get()
        self._set(self.state)
        try:
            return make()
        finally:
            self.state = self._get()
            self._set(saved)


def _set_sampler_epoch(loader: Any, epoch: int) -> None:
    """Call ``set_epoch`` on the loader's sampler and batch sampler (each object once)."""
    seen: list[Any] = []
    for owner in (loader, getattr(loader, "batch_sampler", None)):
        for name in ("sampler", "batch_sampler"):
            candidate = getattr(owner, name, None)
            if (
                candidate is not None
                and hasattr(candidate, "set_epoch")
                and not any(candidate is s for s in seen)
            ):
                candidate.set_epoch(epoch)
                seen.append(candidate)


# ------------------------------------------------------------------------------------------ devices, AMP
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` picks CUDA, then Apple MPS, then the CPU; anything else is passed to ``torch.device``."""
    if str(device) != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _resolve_flag(flag: bool | str, device: torch.device, name: str) -> bool:
    """``"auto"`` means on for CUDA, off elsewhere."""
    if flag == "auto":
        return device.type == "cuda"
    if isinstance(flag, bool):
        return flag
    raise ValueError(f"{name} must be True, False or 'auto', got {flag!r}")


def _amp_dtype(device: torch.device) -> torch.dtype:
    """float16 (with loss scaling) on CUDA, bfloat16 elsewhere."""
    return torch.float16 if device.type == "cuda" else torch.bfloat16


def _to_device(batch: Any, device: torch.device, channels_last: bool) -> Batch:
    if not isinstance(batch, Mapping):
        raise TypeError(f"a batch must be a dict like {{'img': ..., 'pid': ...}}, got {type(batch).__name__}")
    moved = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            value = value.to(device, non_blocking=True)
            if channels_last and value.dim() == 4:
                value = value.contiguous(memory_format=torch.channels_last)
        moved[key] = value
    return moved


def feed_images(model: nn.Module, batch: Batch) -> Any:
    """The default feed: the model sees the images alone."""
    return model(batch["img"])


# ------------------------------------------------------------------------------ optimizer and LR schedule
def build_param_groups(
    model: nn.Module, lr: float, groups: Sequence[Mapping[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Optimizer parameter groups with their own learning rates.

    Each group is a dict with ``params`` and either ``lr`` (absolute) or ``lr_mult`` (times ``lr``; default
    1); other keys (``weight_decay``, ``name``, ...) are kept. Trainable parameters that no group lists go
    into a last group named ``"default"`` at ``lr``.

    Raises:
        ValueError: if a group has no ``params`` or a parameter appears in two groups.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    if groups is None:
        return [{"params": trainable, "lr": lr, "name": "default"}]
    seen: set[int] = set()
    built = []
    for index, group in enumerate(groups):
        if "params" not in group:
            raise ValueError(f"param_groups[{index}] has no 'params' entry; got keys {sorted(group)}")
        params = [p for p in group["params"] if p.requires_grad]
        if any(id(p) in seen for p in params):
            raise ValueError(f"param_groups[{index}] repeats a parameter already listed in an earlier group")
        seen.update(id(p) for p in params)
        extra = {k: v for k, v in group.items() if k not in {"params", "lr", "lr_mult"}}
        built.append(
            {
                "name": f"group{index}",
                **extra,
                "params": params,
                "lr": group["lr"] if "lr" in group else lr * group.get("lr_mult", 1.0),
            }
        )
    rest = [p for p in trainable if id(p) not in seen]
    if rest:
        built.append({"params": rest, "lr": lr, "name": "default"})
    return built


def build_optimizer(
    model: nn.Module,
    optimizer: str | torch.optim.Optimizer = "adam",
    *,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    param_groups: Sequence[Mapping[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """An Adam, AdamW or SGD (with momentum) optimizer by name; a ready optimizer is returned as is."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    groups = build_param_groups(model, lr, param_groups)
    name = optimizer.lower()
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(
        f"unknown optimizer {optimizer!r}; use 'adam', 'adamw', 'sgd' or a torch.optim.Optimizer"
    )


def warmup_multistep_factor(
    epoch: float,
    *,
    warmup_epochs: float,
    milestones: Sequence[float],
    gamma: float,
    warmup_factor: float = 0.1,
) -> float:
    """The LR multiplier at (possibly fractional) ``epoch``: a linear warm-up from ``warmup_factor`` to 1 over
    ``warmup_epochs``, times ``gamma`` for every milestone already reached (Luo et al.'s strong baseline:
    3.5e-5 -> 3.5e-4 over 10 epochs, x0.1 at epochs 40 and 70)."""
    decay = gamma ** bisect.bisect_right(sorted(milestones), epoch)
    if epoch < warmup_epochs:
        return (warmup_factor + (1.0 - warmup_factor) * epoch / warmup_epochs) * decay
    return decay


def _lr_columns(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """``lr`` of the first group, plus ``lr_<name>`` for every group when there are several."""
    groups = optimizer.param_groups
    columns = {"lr": groups[0]["lr"]}
    if len(groups) > 1:
        columns.update({f"lr_{g.get('name', f'group{i}')}": g["lr"] for i, g in enumerate(groups)})
    return columns


# --------------------------------------------------------------------------------------------- history
@dataclass
class History:
    """Every loss term per step and per epoch. ``steps`` / ``epochs`` are pandas DataFrames.

    Step columns: epoch, step (within the epoch), global_step, each term (unweighted), ``<term>_weight``,
    total (weighted sum), lr (and ``lr_<group>`` when there are several groups), time (seconds, data loading
    included). Epoch columns: epoch, steps, the mean of each term and of total, the weights and lr of the last
    step, time (sum of step times) and, on evaluated epochs, eval_time and the evaluator's scalar metrics.
    """

    step_rows: list[dict[str, Any]] = field(default_factory=list)
    epoch_rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def steps(self) -> pd.DataFrame:
        return pd.DataFrame(self.step_rows)

    @property
    def epochs(self) -> pd.DataFrame:
        return pd.DataFrame(self.epoch_rows)

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_rows": [dict(r) for r in self.step_rows],
            "epoch_rows": [dict(r) for r in self.epoch_rows],
        }

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> History:
        return cls([dict(r) for r in state["step_rows"]], [dict(r) for r in state["epoch_rows"]])

    @classmethod
    def from_frames(cls, steps: pd.DataFrame, epochs: pd.DataFrame) -> History:
        """Rebuild from the two DataFrames (e.g. read back from CSV)."""
        return cls(steps.to_dict("records"), epochs.to_dict("records"))


# ------------------------------------------------------------------------------------------ train state
@dataclass
class TrainState:
    """What hooks see and may change: ``loss_weights`` (mutable dict) and ``train_loader`` (read at the start
    of every epoch, so a hook's ``on_epoch_start`` may swap it) steer the training."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    train_loader: Iterable[Batch]
    device: torch.device
    epochs: int
    loss_weights: dict[str, float]
    history: History
    epoch: int = 0
    step: int = 0
    global_step: int = 0
    batch: Batch | None = None
    outputs: Any = None
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)


def _call_hooks(hooks: Sequence[Any], event: str, state: TrainState) -> None:
    for hook in hooks:
        method = getattr(hook, event, None)
        if method is not None:
            method(state)


# ------------------------------------------------------------------------------------------ checkpoints
class CheckpointDir:
    """Numbered checkpoints ``checkpoint-<global step>.pt`` in one folder, written atomically, each one's
    SHA-256 recorded in the folder's ``MANIFEST.json`` after it; the ``keep`` newest are kept (older ones are
    deleted only once the new one is recorded). Temporary files (``.*.tmp``) are never read; a checkpoint
    that does not match its record (truncated, corrupted, or never recorded) is never loaded. ``COMPLETE``
    marks a finished run."""

    _NAME = re.compile(r"^checkpoint-(\d+)\.pt$")

    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory)
        self.keep = keep

    def paths(self) -> list[Path]:
        """Checkpoint files, newest first."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := self._NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, payload: Mapping[str, Any]) -> Path:
        name = f"checkpoint-{payload['global_step']:09d}.pt"
        path = checked_torch_save(dict(payload), self.directory / name)
        old = self.paths()[self.keep :]
        for stale in old:
            stale.unlink(missing_ok=True)
        Manifest(self.directory).forget(*(stale.name for stale in old))
        return path

    @staticmethod
    def load(path: Path) -> dict[str, Any]:
        """One checkpoint, verified against its recorded checksum.

        Raises:
            CorruptFileError: when it does not match its record.
        """
        # Our own files: they hold RNG states and history, which need full unpickling.
        return torch.load(io.BytesIO(read_verified(path)), map_location="cpu", weights_only=False)

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that matches its checksum and loads, with its path; the others are skipped
        with a warning that says why."""
        for path in self.paths():
            try:
                return path, self.load(path)
            except CorruptFileError as error:
                warnings.warn(f"skipping checkpoint {path}: {error.reason}; resuming from an older one, "
                              "if any", stacklevel=2)
            except Exception as error:  # noqa: BLE001 - any unloadable file is skipped the same way
                warnings.warn(f"skipping unreadable checkpoint {path}: {error}", stacklevel=2)
        return None

    def load_latest(self) -> dict[str, Any] | None:
        """The newest checkpoint that matches its checksum and loads (see :meth:`latest`), or ``None``."""
        found = self.latest()
        return None if found is None else found[1]

    @property
    def complete(self) -> bool:
        return (self.directory / "COMPLETE").is_file()

    def mark_complete(self) -> None:
        atomic_write_text(self.directory / "COMPLETE", "training finished\n")

    def mark_incomplete(self) -> None:
        """Remove the marker: a finished run is being trained for more epochs."""
        (self.directory / "COMPLETE").unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------- fit
@dataclass
class _LoopConfig:
    epochs: int
    seed: int
    eval_every: int
    lr_schedule: str
    steps_per_epoch: int | None
    max_steps_per_epoch: int | None
    checkpoint_every_steps: int
    grad_clip: float | None
    amp_dtype: torch.dtype | None
    channels_last: bool
    progress: bool
    sync_batchnorm: bool


class _Processes:
    """What one rank of a multi-process run keeps: its rank and the world size, its shares of train loaders
    (by the loader they shard), its data stream, and the DDP module of the model and criterion."""

    def __init__(self, seed: int) -> None:
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.data = _DataRandomness(seed, self.rank)
        self.shards: dict[int, tuple[Any, Any]] = {}
        self.step: nn.Module | None = None

    def loader(self, loader: Any) -> Any:
        """This rank's share of ``loader`` (made once per loader object)."""
        if id(loader) not in self.shards:
            self.shards[id(loader)] = (loader, distributed.shard_loader(loader, self.rank, self.world_size))
        return self.shards[id(loader)][1]

    def wrap(self, model: nn.Module, criterion: Criterion, feed: Feed, device: torch.device) -> None:
        step = distributed.TrainStep(model, criterion, feed).to(device)
        ids = [device.index if device.index is not None else torch.cuda.current_device()] \
            if device.type == "cuda" else None
        self.step = nn.parallel.DistributedDataParallel(step, device_ids=ids, find_unused_parameters=True)


class _TrainingLoop:
    """The body of :func:`fit`, split into one method per phase."""

    def __init__(
        self,
        state: TrainState,
        criterion: Criterion,
        feed: Feed,
        hooks: Sequence[Any],
        evaluator: Evaluator | None,
        checkpoints: CheckpointDir | None,
        config: _LoopConfig,
    ):
        self.state, self.criterion, self.feed, self.hooks = state, criterion, feed, list(hooks)
        self.evaluator, self.checkpoints, self.config = evaluator, checkpoints, config
        self.resume_rng: dict[str, Any] | None = None
        self.processes = _Processes(config.seed) if distributed.is_distributed() else None
        self.main = distributed.is_main_process()

    # -- checkpoints
    def payload(self) -> dict[str, Any]:
        s = self.state
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": s.epoch,
            "step": s.step,
            "global_step": s.global_step,
            "model": s.model.state_dict(),
            "optimizer": s.optimizer.state_dict(),
            "scheduler": s.scheduler.state_dict(),
            "scaler": s.scaler.state_dict(),
            "loss_weights": dict(s.loss_weights),
            "history": s.history.state_dict(),
            "rng": _rng_state(),
            "hooks": [h.state_dict() if hasattr(h, "state_dict") else None for h in self.hooks],
            "world_size": distributed.world_size(),
        }

    def save_checkpoint(self) -> None:
        if self.checkpoints is not None and self.main:
            self.checkpoints.save(self.payload())

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The newest good checkpoint; under several processes, the one rank 0 picks, read by every rank."""
        if self.checkpoints is None:
            return None
        if self.processes is None:
            return self.checkpoints.load_latest()
        found = self.checkpoints.latest() if self.main else None
        path = distributed.broadcast_object(None if found is None else str(found[0]))
        if path is None:
            return None
        return found[1] if found is not None else self.checkpoints.load(Path(path))

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        s = self.state
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {checkpoint.get('format')!r} is not {CHECKPOINT_FORMAT}")
        if checkpoint["epoch"] > self.config.epochs:
            raise ValueError(
                f"the checkpoint in {self.checkpoints.directory} has trained {checkpoint['epoch']} "
                f"epochs, more than the requested epochs={self.config.epochs}"
            )
        s.model.load_state_dict(checkpoint["model"])
        s.optimizer.load_state_dict(checkpoint["optimizer"])
        s.scheduler.load_state_dict(checkpoint["scheduler"])
        s.scaler.load_state_dict(checkpoint["scaler"])
        s.loss_weights.clear()
        s.loss_weights.update(checkpoint["loss_weights"])
        s.history = History.from_state_dict(checkpoint["history"])
        s.epoch, s.step, s.global_step = checkpoint["epoch"], checkpoint["step"], checkpoint["global_step"]
        for hook, hook_state in zip(self.hooks, checkpoint["hooks"]):
            if hook_state is not None:
                hook.load_state_dict(hook_state)
        self.resume_rng = checkpoint["rng"] if checkpoint["step"] > 0 else None
        saved_size = checkpoint.get("world_size", 1)
        if checkpoint["step"] > 0 and saved_size != distributed.world_size() and self.main:
            warnings.warn(
                f"resuming mid-epoch with {distributed.world_size()} processes a run checkpointed with "
                f"{saved_size}: the rest of epoch {s.epoch + 1} draws other augmentations than the "
                "uninterrupted run would (same batches)", stacklevel=2,
            )

    # -- the loop
    def run(self) -> History:
        s, cfg = self.state, self.config
        if (checkpoint := self.load_checkpoint()) is not None:
            self.restore(checkpoint)
            if s.epoch < cfg.epochs and self.main:
                print(
                    f"Resuming from the checkpoint in {self.checkpoints.directory}: "
                    f"epoch {s.epoch + 1}/{cfg.epochs}, step {s.step} (global step {s.global_step})",
                    flush=True,
                )
        if self.checkpoints is not None and s.epoch < cfg.epochs and self.main:
            self.checkpoints.mark_incomplete()
        revert = None
        if self.processes is not None and s.epoch < cfg.epochs:
            if cfg.sync_batchnorm:
                revert = distributed.convert_batchnorm(s.model, s.device)
            self.processes.wrap(s.model, self.criterion, self.feed, s.device)
        total = cfg.epochs * cfg.steps_per_epoch if cfg.steps_per_epoch is not None else None
        hidden = not (cfg.progress and self.main)
        try:
            with tqdm(total=total, initial=s.global_step, disable=hidden, desc="train",
                      dynamic_ncols=True) as bar:
                if s.epoch < cfg.epochs:
                    _call_hooks(self.hooks, "on_train_start", s)
                while s.epoch < cfg.epochs:
                    self.run_epoch(bar)
        finally:
            if revert is not None:
                revert()
        if self.checkpoints is not None and self.main:
            self.checkpoints.mark_complete()
        return s.history

    def run_epoch(self, bar: Any) -> None:
        s, cfg = self.state, self.config
        resume_step = s.step
        seed_everything(epoch_seed(cfg.seed, s.epoch))
        if resume_step == 0:
            _call_hooks(self.hooks, "on_epoch_start", s)
        _set_sampler_epoch(s.train_loader, s.epoch)
        s.model.train()
        if self.processes is None:
            draw: Callable[[Callable[[], Any]], Any] = _call
            loader = s.train_loader
        else:  # this rank's share of the global batches, loaded with this rank's data stream
            self.processes.data.start_epoch(s.epoch)
            draw, loader = self.processes.data.draw, self.processes.loader(s.train_loader)
        batches = draw(lambda: iter(loader))
        if resume_step > 0:  # mid-epoch resume: replay the data order, then restore the saved generators
            draw(lambda: _skip(batches, resume_step))
            _set_rng_state(self.resume_rng)
        remaining = None if cfg.max_steps_per_epoch is None else max(cfg.max_steps_per_epoch - resume_step, 0)
        tick = time.perf_counter()
        for _ in itertools.repeat(None) if remaining is None else range(remaining):
            batch = draw(lambda: next(batches, None))
            if batch is None:
                break
            self.train_step(batch, tick)
            bar.update(1)
            bar.set_postfix(self.postfix(), refresh=False)
            if cfg.checkpoint_every_steps and s.global_step % cfg.checkpoint_every_steps == 0:
                self.save_checkpoint()
            tick = time.perf_counter()
        if s.step == 0:
            raise ValueError(f"the train loader yielded no batch in epoch {s.epoch}")
        self.end_epoch(bar)

    def forward(self) -> dict[str, torch.Tensor]:
        """The outputs and loss terms of the current batch (of the global batch under several processes,
        whose ``state.batch`` then becomes the global batch's labels)."""
        s = self.state
        if self.processes is None:
            s.outputs = self.feed(s.model, s.batch)
            return dict(self.criterion(s.outputs, s.batch))
        s.outputs, s.batch, terms = self.processes.step(s.batch)
        return terms

    def train_step(self, batch: Any, tick: float) -> None:
        s, cfg = self.state, self.config
        s.batch = _to_device(batch, s.device, cfg.channels_last)
        _call_hooks(self.hooks, "on_step_start", s)
        lrs = _lr_columns(s.optimizer)
        autocast = torch.autocast(s.device.type, dtype=cfg.amp_dtype) if cfg.amp_dtype else nullcontext()
        with autocast:
            terms = self.forward()
        values = self.check_terms(terms)
        weights = {name: float(s.loss_weights.get(name, 1.0)) for name in terms}
        total = sum(weights[name] * term.float() for name, term in terms.items())
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(total).backward()
        if cfg.grad_clip is not None:
            s.scaler.unscale_(s.optimizer)
            nn.utils.clip_grad_norm_(s.model.parameters(), cfg.grad_clip)
        s.scaler.step(s.optimizer)
        s.scaler.update()
        if cfg.lr_schedule == "step":
            s.scheduler.step()
        s.losses = values
        s.history.step_rows.append(
            {
                "epoch": s.epoch,
                "step": s.step,
                "global_step": s.global_step,
                **values,
                **{f"{name}_weight": w for name, w in weights.items()},
                "total": sum(weights[name] * v for name, v in values.items()),
                **lrs,
                "time": time.perf_counter() - tick,
            }
        )
        s.step += 1
        s.global_step += 1
        _call_hooks(self.hooks, "on_step_end", s)

    def check_terms(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Scalar values of the loss terms (one device sync); raises on a NaN/inf term or a bad name."""
        s = self.state
        if not terms:
            raise ValueError("the criterion returned no loss term; it must return a dict of named scalars")
        for name, term in terms.items():
            if (
                name in RESERVED_COLUMNS
                or name.endswith("_weight")
                or not isinstance(term, torch.Tensor)
                or term.dim() != 0
            ):
                raise ValueError(
                    f"loss term {name!r} must be a scalar tensor whose name is not one of "
                    f"{sorted(RESERVED_COLUMNS)} and does not end in '_weight'"
                )
        stacked = torch.stack([term.detach().float() for term in terms.values()]).cpu()
        values = dict(zip(terms, stacked.tolist()))
        for name, value in values.items():
            if not math.isfinite(value):
                raise NonFiniteLossError(name, value, s.epoch, s.step, s.global_step)
        return values

    def end_epoch(self, bar: Any) -> None:
        s, cfg = self.state, self.config
        rows = pd.DataFrame([r for r in s.history.step_rows if r["epoch"] == s.epoch])
        last = rows.iloc[-1]
        terms = [c for c in rows.columns if f"{c}_weight" in rows.columns]
        row = {
            "epoch": s.epoch,
            "steps": len(rows),
            **{t: rows[t].mean() for t in terms},
            **{f"{t}_weight": last[f"{t}_weight"] for t in terms},
            "total": rows["total"].mean(),
            **{c: last[c] for c in rows.columns if c == "lr" or c.startswith("lr_")},
            "time": rows["time"].sum(),
        }
        if self.processes is not None:  # identical running statistics in every rank (without SyncBN too)
            distributed.broadcast_buffers(s.model)
        if (
            self.evaluator is not None
            and cfg.eval_every > 0
            and ((s.epoch + 1) % cfg.eval_every == 0 or s.epoch + 1 == cfg.epochs)
        ):
            row.update(self.evaluate(bar))
        s.history.epoch_rows.append(row)
        if cfg.lr_schedule == "epoch":
            s.scheduler.step()
        _call_hooks(self.hooks, "on_epoch_end", s)
        s.epoch += 1
        s.step = 0
        self.save_checkpoint()

    def evaluate(self, bar: Any) -> dict[str, Any]:
        s = self.state
        start = time.perf_counter()
        s.model.eval()
        metrics = dict(self.evaluator(s.model))
        s.model.train()
        s.metrics = metrics
        scalars = {k: float(v) for k, v in metrics.items() if _is_scalar(v)}
        if self.main:
            bar.write(
                f"epoch {s.epoch + 1}/{self.config.epochs}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in scalars.items())
            )
        return {"eval_time": time.perf_counter() - start, **scalars}

    def postfix(self) -> dict[str, str]:
        s = self.state
        return {
            "epoch": f"{s.epoch + 1}/{self.config.epochs}",
            **{name: f"{value:.3f}" for name, value in s.losses.items()},
            "lr": f"{s.optimizer.param_groups[0]['lr']:.2e}",
        }


def _call(make: Callable[[], Any]) -> Any:
    return make()


def _skip(iterator: Iterator[Any], count: int) -> None:
    for _ in itertools.islice(iterator, count):
        pass


def _is_scalar(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    if isinstance(value, np.ndarray):
        return value.size == 1
    return isinstance(value, (bool, int, float, np.number))


def _steps_per_epoch(loader: Any, max_steps: int | None) -> int | None:
    try:
        length = len(loader)
    except TypeError:
        return max_steps
    return length if max_steps is None else min(length, max_steps)


def fit(
    model: nn.Module,
    criterion: Criterion,
    train_loader: Iterable[Batch],
    *,
    epochs: int,
    optimizer: str | torch.optim.Optimizer = "adam",
    lr: float = 3.5e-4,
    weight_decay: float = 5e-4,
    momentum: float = 0.9,
    param_groups: Sequence[Mapping[str, Any]] | None = None,
    warmup_epochs: float = 0,
    warmup_factor: float = 0.1,
    milestones: Sequence[float] = (),
    gamma: float = 0.1,
    lr_schedule: str = "epoch",
    loss_weights: Mapping[str, float] | None = None,
    hooks: Sequence[Any] = (),
    eval_every: int = 0,
    evaluator: Evaluator | None = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every_steps: int = 0,
    max_steps_per_epoch: int | None = None,
    grad_clip: float | None = None,
    feed: Feed = feed_images,
    device: str | torch.device = "auto",
    amp: bool | str = "auto",
    channels_last: bool | str = "auto",
    seed: int = 0,
    progress: bool = True,
    sync_batchnorm: bool = True,
) -> History:
    """Train ``model`` in place and return its :class:`History`.

    Args:
        criterion: ``criterion(outputs, batch) -> {name: scalar}``; the loss is the ``loss_weights``-weighted
            sum (missing names weigh 1).
        optimizer: ``"adam"``, ``"adamw"``, ``"sgd"`` (with ``momentum``) or a ready optimizer (then ``lr``,
            ``weight_decay`` and ``param_groups`` are ignored and its groups' lr are the base rates).
        param_groups: dicts with ``params`` and ``lr_mult`` or ``lr`` (see :func:`build_param_groups`).
        warmup_epochs, warmup_factor, milestones, gamma: the LR multiplier of :func:`warmup_multistep_factor`,
            applied per epoch (``lr_schedule="epoch"``) or per step with fractional epochs (``"step"``).
        hooks: objects with any of ``on_train_start``, ``on_epoch_start``, ``on_step_start``, ``on_step_end``,
            ``on_epoch_end`` (each receives the :class:`TrainState`), and optionally ``state_dict`` /
            ``load_state_dict`` (saved in checkpoints). ``on_train_start`` runs on every call, also after a
            resume (with ``state.epoch`` at the resume point): re-apply there anything not kept in a
            state_dict, e.g. a swapped train loader. After a mid-epoch resume ``on_epoch_start`` is not run
            again for that epoch.
        eval_every, evaluator: call ``evaluator(model)`` (model in eval mode) every ``eval_every`` epochs and
            after the last one; scalar metrics join ``History.epochs``.
        checkpoint_dir: write checkpoints there each epoch (and every ``checkpoint_every_steps`` steps) and
            resume from the newest one that matches its recorded checksum and loads (others are skipped with
            a warning); a run that already finished returns at once with the final weights loaded. A
            mid-epoch resume replays the epoch's data order up to the saved step. Under several processes
            rank 0 writes and picks the checkpoint every rank resumes from.
        max_steps_per_epoch: cap the steps of each epoch (``None``: the whole loader).
        feed: ``feed(model, batch) -> outputs``; default :func:`feed_images`, ``model(batch["img"])``.
        device, amp, channels_last: ``"auto"`` = CUDA if present (then AMP float16 with loss scaling and
            channels_last on), else MPS, else CPU (AMP off; ``amp=True`` off CUDA means bfloat16 autocast).
        seed: seeds the run; each epoch reseeds all generators from ``(seed, epoch)``.
        sync_batchnorm: under several processes, BatchNorm layers normalise with the statistics of the whole
            global batch (their original layers are put back when ``fit`` returns); ``False`` leaves each
            process with its own share's statistics. Ignored in one process.

    Raises:
        NonFiniteLossError: when a loss term is NaN or infinite.
    """
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, got {epochs}")
    if lr_schedule not in ("epoch", "step"):
        raise ValueError(f"lr_schedule must be 'epoch' or 'step', got {lr_schedule!r}")
    if warmup_epochs < 0 or not 0 < warmup_factor <= 1:
        raise ValueError(
            f"need warmup_epochs >= 0 and 0 < warmup_factor <= 1, got {warmup_epochs}, {warmup_factor}"
        )
    seed_everything(seed)
    torch_device = resolve_device(device)
    use_channels_last = _resolve_flag(channels_last, torch_device, "channels_last")
    use_amp = _resolve_flag(amp, torch_device, "amp")
    model.to(torch_device)
    if use_channels_last:
        model.to(memory_format=torch.channels_last)
    opt = build_optimizer(
        model, optimizer, lr=lr, weight_decay=weight_decay, momentum=momentum, param_groups=param_groups
    )
    steps_per_epoch = _steps_per_epoch(train_loader, max_steps_per_epoch)
    if lr_schedule == "step" and steps_per_epoch is None:
        raise ValueError("lr_schedule='step' needs a train loader with a length or max_steps_per_epoch")
    per_unit = 1 if lr_schedule == "epoch" else steps_per_epoch

    def lr_factor(count: int) -> float:
        return warmup_multistep_factor(
            count / per_unit,
            warmup_epochs=warmup_epochs,
            milestones=milestones,
            gamma=gamma,
            warmup_factor=warmup_factor,
        )

    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    amp_dtype = _amp_dtype(torch_device) if use_amp else None
    scaler = torch.amp.GradScaler(torch_device.type, enabled=amp_dtype == torch.float16)
    state = TrainState(
        model=model,
        optimizer=opt,
        scheduler=scheduler,
        scaler=scaler,
        train_loader=train_loader,
        device=torch_device,
        epochs=epochs,
        loss_weights=dict(loss_weights or {}),
        history=History(),
    )
    config = _LoopConfig(
        epochs=epochs,
        seed=seed,
        eval_every=eval_every,
        lr_schedule=lr_schedule,
        steps_per_epoch=steps_per_epoch,
        max_steps_per_epoch=max_steps_per_epoch,
        checkpoint_every_steps=checkpoint_every_steps,
        grad_clip=grad_clip,
        amp_dtype=amp_dtype,
        channels_last=use_channels_last,
        progress=progress,
        sync_batchnorm=sync_batchnorm,
    )
    checkpoints = CheckpointDir(checkpoint_dir) if checkpoint_dir is not None else None
    loop = _TrainingLoop(state, criterion, feed, hooks, evaluator, checkpoints, config)
    return loop.run()


# ------------------------------------------------------------------------------------- test features
def _mean_of(a: Any, b: Any) -> Any:
    if isinstance(a, Mapping):
        return {name: 0.5 * (a[name] + b[name]) for name in a}
    return 0.5 * (a + b)


def _to_cpu_float(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return {name: value.float().cpu().contiguous() for name, value in outputs.items()}
    return outputs.float().cpu().contiguous()


def _concatenate(chunks: list[Any]) -> Any:
    if isinstance(chunks[0], Mapping):
        return {name: torch.cat([chunk[name] for chunk in chunks]) for name in chunks[0]}
    return torch.cat(chunks)


@torch.no_grad()
def extract_features(
    model: nn.Module,
    loader: Iterable[Batch],
    *,
    feed: Feed = feed_images,
    device: str | torch.device = "auto",
    flip: bool = False,
    progress: bool = True,
    channels_last: bool | str = "auto",
    shard: bool | None = None,
) -> tuple[Any, torch.Tensor, torch.Tensor]:
    """Run ``feed(model, batch)`` in eval mode over ``loader``: ``(features, pids (N,), camids (N,))``,
    where features are the model's eval outputs concatenated in loader order, float32 on the CPU (one
    tensor (N, ...) or a dict of them). ``flip=True`` averages every output with the output for the
    mirrored images. The model's train/eval mode is restored afterwards.

    ``shard`` (default: under several processes) splits the images between the processes, every W-th to
    each, and gathers the features back in loader order, so every process returns what one process would;
    a loader that does not read its dataset in order (or is not a DataLoader) is read whole by every
    process instead. Every process must call it."""
    if distributed.is_distributed() if shard is None else shard:
        share = distributed.shard_eval_loader(loader, distributed.rank(), distributed.world_size())
        if share is not None:
            total = len(loader.dataset)  # type: ignore[attr-defined]
            shown = progress and distributed.is_main_process()
            parts = _extract(model, share, feed, device, flip, shown, channels_last)
            features, pids, camids = (distributed.gather_rows(part, total) for part in parts)
            return features, pids, camids
    return _extract(model, loader, feed, device, flip, progress, channels_last)


def _extract(model: nn.Module, loader: Iterable[Batch], feed: Feed, device: str | torch.device, flip: bool,
             progress: bool, channels_last: bool | str) -> tuple[Any, torch.Tensor, torch.Tensor]:
    torch_device = resolve_device(device)
    use_channels_last = _resolve_flag(channels_last, torch_device, "channels_last")
    was_training = model.training
    model.to(torch_device).eval()
    if use_channels_last:  # the weights too, or every convolution converts its input back
        model.to(memory_format=torch.channels_last)
    features, pids, camids = [], [], []
    try:
        for batch in tqdm(loader, desc="features", disable=not progress, leave=False, dynamic_ncols=True):
            batch = _to_device(batch, torch_device, use_channels_last)
            outputs = feed(model, batch)
            if flip:
                outputs = _mean_of(outputs, feed(model, {**batch, "img": batch["img"].flip(-1)}))
            features.append(_to_cpu_float(outputs))
            pids.append(batch["pid"].cpu())
            camids.append(batch["camid"].cpu())
    finally:
        model.train(was_training)
    if not features:
        raise ValueError("the loader yielded no batch: nothing to extract features from")
    return _concatenate(features), torch.cat(pids), torch.cat(camids)
