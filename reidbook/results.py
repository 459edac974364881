"""The results store: every training run's config, metrics, history, weights, environment and evaluations.

Layout (``root`` defaults to ``<repo>/results``, or the ``REIDBOOK_RESULTS`` environment variable)::

    root/<name>/<key>/config.json        the run's config (canonical JSON)
                      run.json           name, key, code fingerprint, creation date
                      environment.json   package versions, python, git commit, device, CPU count, date
                      metrics.json       the metrics of the evaluation at the end of training
                      history_steps.csv  history_epochs.csv
                      model.pt           the trained weights (state_dict)
                      training.json      facts about the training (time, device, processes, losses)
                      checkpoints/       fit()'s checkpoints; an interrupted run resumes from them
                      evaluations/<evaluation key>/
                          description.json  evaluator, dataset and post-processing that define it
                          metrics.json      distances.npy (when a figure needs the matrix)  COMPLETE
                      MANIFEST.json      SHA-256 and size of every file above, recorded as it is written
                      COMPLETE           written last: the run finished
    root/<name>/.<key>.lock              the run's lock: pid, host and start of its writer

The key hashes the canonical JSON of the config together with a *code fingerprint*, which the caller
computes for the code the run uses (:func:`reidbook.fingerprint.code_fingerprint` of the run's recipe and
the training glue): an edit to that code retrains the run the next time it is requested (no stale number
can reach a table), while an edit elsewhere, or a new paper's module, leaves it alone. Stored evaluations
live under their run, so they follow its key. ``REIDBOOK_FORCE=1`` (``make book FORCE=1``) retrains anyway.

The store stays whole (:mod:`reidbook.atomic`):

* every file is written atomically, so a reader never sees half a file, and a failing write (disk full)
  leaves the previous state readable;
* every file's SHA-256 is recorded in its folder's ``MANIFEST.json`` when it is written, and checked when it
  is read: a truncated or corrupted weights, metrics or history file raises
  :class:`~reidbook.atomic.CorruptFileError` instead of being used, and :meth:`ResultsStore.get_or_train`
  says so and trains the run again (resuming from its last good checkpoint, whose checksum
  :class:`reidbook.engine.CheckpointDir` checks the same way); a damaged stored evaluation is computed
  again;
* one writer per run: :meth:`ResultsStore.get_or_train` holds the run's lock (``fcntl.flock``; none on
  Windows) while it trains, so a second writer of the same key (a notebook while ``make book`` runs, a
  second ``torchrun`` job) waits, told which process holds it, then finds the run complete and reuses it;
  ``lock_timeout`` bounds the wait (``REIDBOOK_LOCK_TIMEOUT`` seconds; ``0`` fails at once, naming the
  holder). Readers take no lock: they trust a run only once its ``COMPLETE`` marker is written;
* under several processes (:mod:`reidbook.distributed`) only rank 0 writes: rank 0 takes the lock and
  decides whether to train, every rank trains, rank 0 stores; a write from another rank is an error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from . import distributed
from .atomic import (
    MANIFEST_NAME,
    CorruptFileError,
    FileLock,
    LockTimeoutError,
    Manifest,
    atomic_write_text,
    checked_torch_save,
    checked_write,
    checked_write_text,
    describe_holder,
    read_verified,
)

if TYPE_CHECKING:
    from .engine import History

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
RESULTS_ENV_VAR = "REIDBOOK_RESULTS"
FORCE_ENV_VAR = "REIDBOOK_FORCE"
LOCK_TIMEOUT_ENV_VAR = "REIDBOOK_LOCK_TIMEOUT"
KEY_LENGTH = 16
COMPLETE_MARKER = "COMPLETE"
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


# ------------------------------------------------------------------------------------------------- keys
def canonical_json(config: Any) -> str:
    """Canonical JSON of a config: sorted keys, no spaces; dataclasses (e.g. a Profile) become dicts.

    Raises:
        TypeError: if the config holds something JSON cannot represent (a function, a tensor, ...).
    """
    return json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"), allow_nan=False)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config value {value!r} of type {type(value).__name__} cannot be stored as JSON")


def run_key(config: Any, code: str) -> str:
    """The run's key: a hash of the canonical config and the code fingerprint."""
    return hashlib.sha256(f"{canonical_json(config)}\n{code}".encode()).hexdigest()[:KEY_LENGTH]


def evaluation_key(description: Any) -> str:
    """The key of a stored evaluation: a hash of its canonical description."""
    return hashlib.sha256(canonical_json(description).encode()).hexdigest()[:KEY_LENGTH]


# ------------------------------------------------------------------------------------------- environment
def _package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        module = sys.modules.get(name)
        return getattr(module, "__version__", None)


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment_info() -> dict[str, Any]:
    """Package versions, python, platform, git commit, device, CPU count and the date (UTC)."""
    status = _git("status", "--porcelain")
    cuda = torch.cuda.is_available()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: _package_version(name) for name in ("torch", "torchvision", "numpy", "reidbook")},
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "cuda": torch.version.cuda if cuda else None,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=_to_builtin) + "\n"


def _to_builtin(value: Any) -> Any:
    """JSON fallback for numpy/torch scalars and arrays in metrics."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"metric value {value!r} of type {type(value).__name__} cannot be stored as JSON")


# ----------------------------------------------------------------------------------------------- the run
class Run:
    """One run's folder: ``root/<name>/<key>``."""

    def __init__(self, root: Path, name: str, config: Any, code: str):
        if not _RUN_NAME.match(name):
            raise ValueError(f"run name {name!r} must be letters, digits, '.', '_' or '-' (no slashes)")
        self.name = name
        self.config = json.loads(canonical_json(config))
        self.code = code
        self.key = run_key(config, code)
        self.dir = Path(root) / name / self.key

    def __repr__(self) -> str:
        return f"Run(name={self.name!r}, key={self.key!r}, complete={self.complete})"

    @property
    def lock(self) -> FileLock:
        """The run's lock (``root/<name>/.<key>.lock``, outside the run's folder so that a forced retrain may
        delete the folder while holding it)."""
        return FileLock(self.dir.parent / f".{self.key}.lock")

    @property
    def checkpoint_dir(self) -> Path:
        """Where ``fit(checkpoint_dir=...)`` writes; an interrupted run resumes from it."""
        return self.dir / "checkpoints"

    @property
    def exists(self) -> bool:
        """Whether the run was started (its config is on disk)."""
        return (self.dir / "config.json").is_file()

    @property
    def complete(self) -> bool:
        """Whether the run finished (the ``COMPLETE`` marker is on disk)."""
        return (self.dir / COMPLETE_MARKER).is_file()

    def problems(self, *, quick: bool = False) -> list[str]:
        """What is wrong with the run's files, ``[]`` when nothing: a recorded file missing, truncated or
        corrupted, a file without a recorded checksum. ``quick`` checks sizes only (no reading).
        Checkpoints and stored evaluations are checked when they are read."""
        manifest = Manifest(self.dir)
        try:
            recorded = set(manifest.entries())
        except CorruptFileError as error:
            return [f"{MANIFEST_NAME}: {error.reason}"]
        present = set()
        if self.dir.is_dir():
            present = {p.name for p in self.dir.iterdir() if p.is_file() and not _unrecorded(p.name)}
        found = []
        for name in sorted(recorded | present):
            reason = manifest.problem(name, quick=quick)
            if reason is not None:
                found.append(f"{name}: {reason}")
        return found

    def status(self, *, verify: bool = False) -> str:
        """``"complete"``, ``"incomplete"``, ``"damaged: <what>"`` or ``"being written by <process>"``;
        ``verify`` checks every file's SHA-256 (else sizes only)."""
        if self.lock.is_held():
            return f"being written by {describe_holder(self.lock.holder())}"
        if not self.complete:
            return "incomplete"
        problems = self.problems(quick=not verify)
        return f"damaged: {problems[0]}" if problems else "complete"

    def start(self) -> None:
        """Create the folder and write config, run identity and environment."""
        self._write_text("config.json", _json_text(self.config))
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        identity = {"name": self.name, "key": self.key, "code": self.code, "created": created}
        self._write_text("run.json", _json_text(identity))
        self._write_text("environment.json", _json_text(environment_info()))

    def mark_complete(self) -> None:
        """Write the ``COMPLETE`` marker (last)."""
        _check_writer(self.dir)
        atomic_write_text(self.dir / COMPLETE_MARKER, dt.datetime.now(dt.timezone.utc).isoformat() + "\n")

    def mark_incomplete(self) -> None:
        """Remove the ``COMPLETE`` marker: the run is to be trained again (a damaged file was found)."""
        _check_writer(self.dir)
        (self.dir / COMPLETE_MARKER).unlink(missing_ok=True)

    def save_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Store the final metrics (numbers, lists or numpy/torch arrays)."""
        self._write_text("metrics.json", _json_text(dict(metrics)))

    def load_metrics(self) -> dict[str, Any]:
        """The stored metrics; ``{}`` when none were saved."""
        return self._read_json("metrics.json", default={})

    def load_environment(self) -> dict[str, Any]:
        """The environment recorded when the run started."""
        return self._read_json("environment.json", default={})

    def save_history(self, history: History) -> None:
        """Store a training history as two CSV files."""
        self._write_text("history_steps.csv", history.steps.to_csv(index=False))
        self._write_text("history_epochs.csv", history.epochs.to_csv(index=False))

    def load_history(self) -> History:
        """The stored training history (checksums verified)."""
        from .engine import History

        steps, epochs = (pd.read_csv(io.BytesIO(self._read("history_steps.csv"))),
                         pd.read_csv(io.BytesIO(self._read("history_epochs.csv"))))
        return History.from_frames(steps, epochs)

    def save_model(self, model: torch.nn.Module) -> None:
        """Store the model's weights (``state_dict``, moved to CPU)."""
        _check_writer(self.dir)
        state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        checked_torch_save(state, self.dir / "model.pt")

    def load_weights(self) -> dict[str, torch.Tensor]:
        """The stored weights (a ``state_dict`` on the CPU), their checksum verified.

        Raises:
            FileNotFoundError: when the run stored no weights.
            CorruptFileError: when the weights file is truncated or corrupted.
        """
        path = self.dir / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"run {self.name}/{self.key} has no stored weights at {path}")
        return torch.load(io.BytesIO(self._read("model.pt")), map_location="cpu", weights_only=True)

    def load_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Load the stored weights into ``model`` (strictly) and return it."""
        model.load_state_dict(self.load_weights())
        return model

    # -- stored evaluations
    def evaluation_dir(self, key: str) -> Path:
        return self.dir / "evaluations" / key

    def save_evaluation(
        self, key: str, description: Any, metrics: Mapping[str, Any], distances: np.ndarray | None = None
    ) -> None:
        """Store one evaluation of this run (its ``COMPLETE`` marker last), holding the run's lock."""
        _check_writer(self.dir)
        folder = self.evaluation_dir(key)
        with self.lock.held(message=f"run {self.name}/{self.key}"):
            (folder / COMPLETE_MARKER).unlink(missing_ok=True)  # rewriting: not stored until the marker
            description = json.loads(canonical_json(description))
            checked_write_text(folder / "description.json", _json_text(description))
            checked_write_text(folder / "metrics.json", _json_text(dict(metrics)))
            if distances is not None:
                checked_write(folder / "distances.npy", lambda file: np.save(file, np.asarray(distances)))
            atomic_write_text(folder / COMPLETE_MARKER, dt.datetime.now(dt.timezone.utc).isoformat() + "\n")

    def load_evaluation(self, key: str, *, distances: bool = False) -> tuple[dict, np.ndarray | None] | None:
        """``(metrics, distances or None)`` of a stored evaluation; ``None`` when it is not stored (or
        ``distances`` are asked for and were not kept), or is damaged (a warning says which file)."""
        folder = self.evaluation_dir(key)
        if not (folder / COMPLETE_MARKER).is_file():
            return None
        try:
            matrix = None
            if distances:
                if not (folder / "distances.npy").is_file():
                    return None
                matrix = np.load(io.BytesIO(read_verified(folder / "distances.npy")))
            return _read_json(folder / "metrics.json"), matrix
        except CorruptFileError as error:
            warnings.warn(f"stored evaluation {error.path} is damaged ({error.reason}): it will be computed "
                          "again", stacklevel=2)
            return None

    def evaluations(self) -> list[dict[str, Any]]:
        """Every stored evaluation of this run: ``{"key", "description", "metrics"}`` (damaged ones are left
        out, with a warning)."""
        found = []
        for marker in sorted((self.dir / "evaluations").glob(f"*/{COMPLETE_MARKER}")):
            folder = marker.parent
            try:
                found.append({"key": folder.name, "description": _read_json(folder / "description.json"),
                              "metrics": _read_json(folder / "metrics.json")})
            except CorruptFileError as error:
                warnings.warn(f"leaving out the damaged stored evaluation {folder}: {error}", stacklevel=2)
        return found

    def write_json(self, filename: str, obj: Any) -> None:
        """Store ``obj`` as ``<run>/<filename>`` (e.g. facts about the training: time, device, speed)."""
        self._write_text(filename, _json_text(obj))

    def read_json(self, filename: str) -> Any:
        """The JSON file ``<run>/<filename>``; ``{}`` when it does not exist."""
        return self._read_json(filename, default={})

    def _read_json(self, filename: str, default: Any) -> Any:
        path = self.dir / filename
        return _parse_json(path, self._read(filename)) if path.is_file() else default

    def _read(self, filename: str) -> bytes:
        """The bytes of one of the run's files, verified against the checksum recorded when it was written.

        Raises:
            CorruptFileError: naming the file, what is wrong and how to get the run back.
        """
        try:
            return read_verified(self.dir / filename)
        except CorruptFileError as error:
            raise CorruptFileError(error.path, f"{error.reason}. The run {self.name}/{self.key} cannot be "
                                   "trusted: train it again (experiment.train or python -m reidbook train "
                                   "find it damaged and retrain it)") from error

    def _write_text(self, filename: str, text: str) -> None:
        _check_writer(self.dir)
        checked_write_text(self.dir / filename, text)


# --------------------------------------------------------------------------------------------- the store
def default_results_dir() -> Path:
    """``$REIDBOOK_RESULTS`` if set, else ``<repo>/results``."""
    return Path(os.environ.get(RESULTS_ENV_VAR, REPO_DIR / "results"))


def force_from_env() -> bool:
    """Whether ``REIDBOOK_FORCE`` asks to retrain (``1``, ``true``, ``yes``)."""
    return os.environ.get(FORCE_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


def lock_timeout_from_env() -> float | None:
    """``REIDBOOK_LOCK_TIMEOUT`` in seconds, ``None`` (wait as long as it takes) when unset.

    Raises:
        ValueError: when it is not a number >= 0.
    """
    text = os.environ.get(LOCK_TIMEOUT_ENV_VAR, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValueError(f"{LOCK_TIMEOUT_ENV_VAR} must be a number of seconds >= 0, got {text!r}")
    return value


class ResultsStore:
    """All runs under one folder. ``code``, when given, overrides every run's code fingerprint (tests).

    ``lock_timeout``: how long :meth:`get_or_train` waits for a run that another process is writing
    (seconds; ``None``: as long as it takes; default ``REIDBOOK_LOCK_TIMEOUT``). Under several processes a
    run is never waited for unless ``lock_timeout`` says so, since the other ranks wait for rank 0 in a
    collective meanwhile.
    """

    def __init__(self, root: str | os.PathLike | None = None, *, code: str | None = None,
                 lock_timeout: float | None = None):
        self.root = Path(root) if root is not None else default_results_dir()
        self.code = code
        self.lock_timeout = lock_timeout_from_env() if lock_timeout is None else lock_timeout
        if self.lock_timeout is not None and self.lock_timeout < 0:
            raise ValueError(f"lock_timeout must be None or >= 0 seconds, got {lock_timeout}")

    def run(self, name: str, config: Any, code: str | None = None) -> Run:
        """The run of ``name`` with this config and code fingerprint (it may not exist yet)."""
        code = self.code if self.code is not None else code
        if code is None:
            raise ValueError(f"run {name!r} needs the fingerprint of the code it uses (code=...)")
        return Run(self.root, name, config, code)

    def get_or_train(
        self,
        name: str,
        config: Any,
        train_fn: Callable[[Run], Mapping[str, Any] | None],
        *,
        code: str | None = None,
        force: bool | None = None,
    ) -> Run:
        """Return the complete run for (name, config, code), calling ``train_fn(run)`` only when none exists.

        ``train_fn`` should pass ``run.checkpoint_dir`` to :func:`reidbook.engine.fit` (so an interrupted run
        resumes) and may save weights and history itself; a dict it returns is saved as the metrics.
        ``force`` (default: ``REIDBOOK_FORCE``) deletes the stored run and retrains from scratch. A complete
        run with a damaged file (:meth:`Run.problems`) is trained again, with a message: ``fit`` then resumes
        from its last good checkpoint, which for a finished run holds the final weights.

        Training holds the run's lock; a run another process is writing is waited for (see ``lock_timeout``)
        and, once that process has finished it, reused. Under several processes every rank must call this
        with the same arguments: rank 0 decides and writes, every rank runs ``train_fn``.

        Raises:
            LockTimeoutError: when another process still holds the run after ``lock_timeout`` seconds.
        """
        run = self.run(name, config, code)
        force = force_from_env() if force is None else force
        if distributed.is_distributed():
            return self._get_or_train_together(run, train_fn, force)
        if run.complete and not force and not run.problems():
            return run
        with run.lock.held(self.lock_timeout, message=f"run {run.name}/{run.key}"):
            if self._begin(run, force):
                self._finish(run, train_fn(run))
        return run

    def _begin(self, run: Run, force: bool) -> bool:
        """With the run's lock held: whether it is to be trained; if so, make its folder ready."""
        if run.complete and not force:
            problems = run.problems()
            if not problems:
                return False  # another process finished it while this one waited
            print(f"run {run.name}/{run.key} is damaged ({'; '.join(problems)}): training it again, from its "
                  "last good checkpoint if it has one", flush=True)
            run.mark_incomplete()
        if force and run.dir.exists():
            shutil.rmtree(run.dir)
        run.start()
        return True

    @staticmethod
    def _finish(run: Run, metrics: Mapping[str, Any] | None) -> None:
        if metrics is not None:
            run.save_metrics(metrics)
        run.mark_complete()

    def _get_or_train_together(self, run: Run, train_fn: Callable[[Run], Mapping[str, Any] | None],
                               force: bool) -> Run:
        """:meth:`get_or_train` under several processes: rank 0 takes the lock (waiting ``lock_timeout``
        seconds at most, 0 by default) and decides, every rank trains, rank 0 writes."""
        main = distributed.is_main_process()
        decision, locked = "reuse", None
        if main:
            try:
                run.lock.acquire(self.lock_timeout or 0, message=f"run {run.name}/{run.key}")
            except LockTimeoutError as error:
                decision, locked = "locked", error
            else:
                decision = "train" if self._begin(run, force) else "reuse"
                if decision == "reuse":
                    run.lock.release()
        decision, message = distributed.broadcast_object((decision, str(locked)))
        if decision == "locked":
            raise locked if locked is not None else RuntimeError(f"rank 0 did not train: {message}")
        if decision == "train":
            try:
                metrics = train_fn(run)
                if main:
                    self._finish(run, metrics)
            finally:
                if main:
                    run.lock.release()
            distributed.barrier()  # the other ranks return once the run is complete
        return run

    def runs(self, names: Iterable[str] | None = None, *, code: str | None = None,
             include_incomplete: bool = False) -> list[Run]:
        """Complete runs (``include_incomplete``: every started one), optionally only some names and only
        those of one code fingerprint. A run whose ``run.json`` or ``config.json`` cannot be read is left
        out, with a warning."""
        wanted = None if names is None else set(names)
        found = []
        for run_file in sorted(self.root.glob("*/*/run.json")):
            try:
                info = _read_json(run_file)
                config = _read_json(run_file.parent / "config.json")
            except CorruptFileError as error:
                warnings.warn(f"leaving out the damaged run {run_file.parent}: {error}", stacklevel=2)
                continue
            if wanted is not None and info["name"] not in wanted:
                continue
            if code is not None and info["code"] != code:
                continue
            run = Run(self.root, info["name"], config, info["code"])
            if include_incomplete or run.complete:
                found.append(run)
        return found

    def table(self, names: Iterable[str] | None = None, *, code: str | None = None) -> pd.DataFrame:
        """One row per complete run: name, key, the scalar metrics and the config flattened to
        ``config.<field>`` columns (nested dicts joined with dots)."""
        rows = []
        for run in self.runs(names, code=code):
            metrics = {k: v for k, v in run.load_metrics().items() if _is_scalar(v)}
            config = pd.json_normalize(run.config, sep=".").iloc[0].to_dict() if run.config else {}
            rows.append(
                {"name": run.name, "key": run.key, **metrics, **{f"config.{k}": v for k, v in config.items()}}
            )
        return pd.DataFrame(rows)


def _read_json(path: Path) -> Any:
    """A JSON file of the store, verified against its recorded checksum.

    Raises:
        CorruptFileError: when it is damaged or was never recorded.
    """
    return _parse_json(path, read_verified(path))


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except ValueError as error:  # recorded as written, yet not JSON: the writer wrote garbage
        raise CorruptFileError(path, f"not JSON ({error})") from error


def _unrecorded(name: str) -> bool:
    """Names in a run's folder that the manifest does not list: the marker, the manifest, temporary files."""
    return name in (COMPLETE_MARKER, MANIFEST_NAME) or name.endswith(".tmp")


def _check_writer(path: Path) -> None:
    """Only rank 0 writes the results store.

    Raises:
        RuntimeError: when another rank of a multi-process run tries to write.
    """
    if not distributed.is_main_process():
        raise RuntimeError(f"rank {distributed.rank()} tried to write {path}: under several processes only "
                           "rank 0 writes the results store (guard the call with "
                           "reidbook.distributed.is_main_process())")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
