"""The results store: every training run's config, metrics, history, weights, environment and evaluations.

Layout (``root`` defaults to ``<repo>/results``, or the ``REIDBOOK_RESULTS`` environment variable)::

    root/<name>/<key>/config.json        the run's config (canonical JSON)
                      run.json           name, key, code fingerprint, creation date
                      environment.json   package versions, python, git commit, device, CPU count, date
                      metrics.json       the metrics of the evaluation at the end of training
                      history_steps.csv  history_epochs.csv
                      model.pt           the trained weights (state_dict)
                      checkpoints/       fit()'s checkpoints; an interrupted run resumes from them
                      evaluations/<evaluation key>/
                          description.json  evaluator, dataset and post-processing that define it
                          metrics.json      distances.npy (when a figure needs the matrix)  COMPLETE
                      COMPLETE           written last: the run finished

The key hashes the canonical JSON of the config together with a *code fingerprint*, which the caller
computes for the code the run uses (:func:`reidbook.fingerprint.code_fingerprint` of the run's recipe and
the training glue): an edit to that code retrains the run the next time it is requested (no stale number
can reach a table), while an edit elsewhere, or a new paper's module, leaves it alone. Stored evaluations
live under their run, so they follow its key. ``REIDBOOK_FORCE=1`` (``make book FORCE=1``) retrains anyway.

Every file is written atomically (:mod:`reidbook.atomic`), so a reader never sees half a file.
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
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from .atomic import atomic_torch_save, atomic_write, atomic_write_text

if TYPE_CHECKING:
    from .engine import History

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
RESULTS_ENV_VAR = "REIDBOOK_RESULTS"
FORCE_ENV_VAR = "REIDBOOK_FORCE"
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

    def start(self) -> None:
        """Create the folder and write config, run identity and environment."""
        atomic_write_text(self.dir / "config.json", _json_text(self.config))
        created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        atomic_write_text(
            self.dir / "run.json",
            _json_text({"name": self.name, "key": self.key, "code": self.code, "created": created}),
        )
        atomic_write_text(self.dir / "environment.json", _json_text(environment_info()))

    def mark_complete(self) -> None:
        """Write the ``COMPLETE`` marker (last)."""
        atomic_write_text(self.dir / COMPLETE_MARKER, dt.datetime.now(dt.timezone.utc).isoformat() + "\n")

    def save_metrics(self, metrics: Mapping[str, Any]) -> None:
        """Store the final metrics (numbers, lists or numpy/torch arrays)."""
        atomic_write_text(self.dir / "metrics.json", _json_text(dict(metrics)))

    def load_metrics(self) -> dict[str, Any]:
        """The stored metrics; ``{}`` when none were saved."""
        return self._read_json("metrics.json", default={})

    def load_environment(self) -> dict[str, Any]:
        """The environment recorded when the run started."""
        return self._read_json("environment.json", default={})

    def save_history(self, history: History) -> None:
        """Store a training history as two CSV files."""
        atomic_write_text(self.dir / "history_steps.csv", history.steps.to_csv(index=False))
        atomic_write_text(self.dir / "history_epochs.csv", history.epochs.to_csv(index=False))

    def load_history(self) -> History:
        """The stored training history."""
        from .engine import History

        return History.from_frames(
            pd.read_csv(self.dir / "history_steps.csv"), pd.read_csv(self.dir / "history_epochs.csv")
        )

    def save_model(self, model: torch.nn.Module) -> None:
        """Store the model's weights (``state_dict``, moved to CPU)."""
        state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
        atomic_torch_save(state, self.dir / "model.pt")

    def load_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Load the stored weights into ``model`` (strictly) and return it."""
        path = self.dir / "model.pt"
        if not path.is_file():
            raise FileNotFoundError(f"run {self.name}/{self.key} has no stored weights at {path}")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        return model

    # -- stored evaluations
    def evaluation_dir(self, key: str) -> Path:
        return self.dir / "evaluations" / key

    def save_evaluation(
        self, key: str, description: Any, metrics: Mapping[str, Any], distances: np.ndarray | None = None
    ) -> None:
        """Store one evaluation of this run (its ``COMPLETE`` marker last)."""
        folder = self.evaluation_dir(key)
        atomic_write_text(folder / "description.json", _json_text(json.loads(canonical_json(description))))
        atomic_write_text(folder / "metrics.json", _json_text(dict(metrics)))
        if distances is not None:
            atomic_write(folder / "distances.npy", lambda file: np.save(file, np.asarray(distances)))
        atomic_write_text(folder / COMPLETE_MARKER, dt.datetime.now(dt.timezone.utc).isoformat() + "\n")

    def load_evaluation(self, key: str, *, distances: bool = False) -> tuple[dict, np.ndarray | None] | None:
        """``(metrics, distances or None)`` of a stored evaluation; ``None`` when it is not stored (or
        ``distances`` are asked for and were not kept)."""
        folder = self.evaluation_dir(key)
        if not (folder / COMPLETE_MARKER).is_file():
            return None
        matrix = None
        if distances:
            if not (folder / "distances.npy").is_file():
                return None
            matrix = np.load(io.BytesIO((folder / "distances.npy").read_bytes()))
        return _read_json(folder / "metrics.json"), matrix

    def evaluations(self) -> list[dict[str, Any]]:
        """Every stored evaluation of this run: ``{"key", "description", "metrics"}``."""
        found = []
        for marker in sorted((self.dir / "evaluations").glob(f"*/{COMPLETE_MARKER}")):
            folder = marker.parent
            found.append({"key": folder.name, "description": _read_json(folder / "description.json"),
                          "metrics": _read_json(folder / "metrics.json")})
        return found

    def write_json(self, filename: str, obj: Any) -> None:
        """Store ``obj`` as ``<run>/<filename>`` (e.g. facts about the training: time, device, speed)."""
        atomic_write_text(self.dir / filename, _json_text(obj))

    def read_json(self, filename: str) -> Any:
        """The JSON file ``<run>/<filename>``; ``{}`` when it does not exist."""
        return self._read_json(filename, default={})

    def _read_json(self, filename: str, default: Any) -> Any:
        path = self.dir / filename
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else default


# --------------------------------------------------------------------------------------------- the store
def default_results_dir() -> Path:
    """``$REIDBOOK_RESULTS`` if set, else ``<repo>/results``."""
    return Path(os.environ.get(RESULTS_ENV_VAR, REPO_DIR / "results"))


def force_from_env() -> bool:
    """Whether ``REIDBOOK_FORCE`` asks to retrain (``1``, ``true``, ``yes``)."""
    return os.environ.get(FORCE_ENV_VAR, "").strip().lower() in {"1", "true", "yes", "on"}


class ResultsStore:
    """All runs under one folder. ``code``, when given, overrides every run's code fingerprint (tests)."""

    def __init__(self, root: str | os.PathLike | None = None, *, code: str | None = None):
        self.root = Path(root) if root is not None else default_results_dir()
        self.code = code

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
        ``force`` (default: ``REIDBOOK_FORCE``) deletes the stored run and retrains from scratch.
        """
        run = self.run(name, config, code)
        force = force_from_env() if force is None else force
        if run.complete and not force:
            return run
        if force and run.dir.exists():
            shutil.rmtree(run.dir)
        run.start()
        metrics = train_fn(run)
        if metrics is not None:
            run.save_metrics(metrics)
        run.mark_complete()
        return run

    def runs(self, names: Iterable[str] | None = None, *, code: str | None = None) -> list[Run]:
        """Complete runs, optionally only some names and only those of one code fingerprint."""
        wanted = None if names is None else set(names)
        found = []
        for run_file in sorted(self.root.glob("*/*/run.json")):
            info = json.loads(run_file.read_text(encoding="utf-8"))
            if wanted is not None and info["name"] not in wanted:
                continue
            if code is not None and info["code"] != code:
                continue
            config = json.loads((run_file.parent / "config.json").read_text(encoding="utf-8"))
            run = Run(self.root, info["name"], config, info["code"])
            if run.complete:
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
    return json.loads(path.read_text(encoding="utf-8"))


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (bool, int, float, str))
