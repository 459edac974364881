"""Files that stay whole: atomic writes, checksums recorded at write time, and a lock per writer.

* Atomic writes: every writer fills a temporary file in the target's folder (named ``.<name>.<random>.tmp``:
  readers must ignore such names), flushes and fsyncs it, renames it over the target (``os.replace`` is
  atomic on POSIX and Windows) and fsyncs the folder, so the rename itself survives a power cut. A failing
  write (disk full, a crash, an exception in the writer) leaves the previous file as it was.
* Checksums (:class:`Manifest`): ``checked_write`` and friends write atomically, then record the file's
  SHA-256 and size in the folder's ``MANIFEST.json`` (itself written atomically). A reader calls
  :func:`read_verified` (or :meth:`Manifest.verify`), which raises :class:`CorruptFileError` when the file is
  missing, truncated, changed after it was written, or was never recorded (the writer died between the file
  and its record, or an older version wrote it): such a file is never silently used. One writer per folder at
  a time (the results store holds a :class:`FileLock` per run while it writes).
* Locks (:class:`FileLock`): ``fcntl.flock`` on a lock file holding the writer's pid, host and start time.
  The kernel releases the lock when its process dies, so a crashed writer never leaves a stale lock. A
  second writer waits (with an optional timeout) and is told who holds it; a process may take a lock it
  already holds again (the lock counts). On platforms without ``fcntl`` (Windows) nothing is locked: a
  warning says so once, and two writers of one run must be avoided by hand.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

try:  # POSIX
    import fcntl
except ImportError:  # Windows: no advisory locks (see the module docstring)
    fcntl = None  # type: ignore[assignment]

MANIFEST_NAME = "MANIFEST.json"
NOT_RECORDED = "no checksum recorded (an older version wrote it, or its writer stopped before recording it)"
_CHUNK = 1 << 20


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (e.g. Windows); the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """Write ``path`` atomically: ``write(file)`` fills a temporary file in the same folder, which is fsynced
    and renamed over ``path``. Temporary files end in ``.tmp``; readers must ignore them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w", encoding=None if binary else "utf-8") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    return atomic_write(path, lambda file: file.write(text), binary=False)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically."""
    return atomic_write(path, lambda file: torch.save(obj, file))


# ------------------------------------------------------------------------------------------- checksums
class CorruptFileError(OSError):
    """A file is missing, truncated or changed since it was written, or its checksum was never recorded."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file (hex), read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class Manifest:
    """The SHA-256 and size of the files of one folder, recorded in ``<folder>/MANIFEST.json`` as
    ``{"files": {name: {"sha256": ..., "size": ...}}}``. Only files written through :meth:`record`
    (``checked_write`` and friends) are listed; the manifest is rewritten atomically after each file."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.path = self.directory / MANIFEST_NAME

    def entries(self) -> dict[str, dict[str, Any]]:
        """The recorded files; ``{}`` when there is no manifest.

        Raises:
            CorruptFileError: when the manifest itself cannot be read as one.
        """
        if not self.path.is_file():
            return {}
        try:
            files = json.loads(self.path.read_text(encoding="utf-8"))["files"]
            if not isinstance(files, dict):
                raise TypeError(f"'files' is a {type(files).__name__}")
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise CorruptFileError(self.path, f"unreadable manifest ({error})") from error
        return files

    def record(self, path: str | os.PathLike) -> None:
        """Record the digest and size of ``path`` (a file of this folder) as it is now on disk."""
        path = Path(path)
        self._write({**self.entries(), path.name: {"sha256": file_digest(path), "size": path.stat().st_size}})

    def forget(self, *names: str) -> None:
        """Drop the records of ``names`` (files that were deleted)."""
        entries = self.entries()
        if any(name in entries for name in names):
            self._write({k: v for k, v in entries.items() if k not in names})

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        atomic_write_text(self.path, json.dumps({"files": entries}, indent=1, sort_keys=True) + "\n")

    def problem(self, name: str, *, quick: bool = False) -> str | None:
        """Why the file ``name`` cannot be trusted, or ``None``. ``quick`` compares sizes only (a truncated
        file), without reading the file."""
        path = self.directory / name
        try:
            entry = self.entries().get(name)
        except CorruptFileError as error:
            return error.reason
        if not path.is_file():
            return "missing"
        if entry is None:
            return NOT_RECORDED
        size = path.stat().st_size
        if size != entry["size"]:
            return _size_problem(size, entry["size"])
        if not quick and file_digest(path) != entry["sha256"]:
            return SHA_PROBLEM
        return None

    def verify(self, name: str) -> None:
        """Raise :class:`CorruptFileError` unless the file ``name`` matches its record."""
        reason = self.problem(name)
        if reason is not None:
            raise CorruptFileError(self.directory / name, reason)


SHA_PROBLEM = "its SHA-256 differs from the one recorded when it was written (corrupted)"


def _size_problem(size: int, recorded: int) -> str:
    return f"{size} bytes on disk, {recorded} when written (truncated or changed)"


def read_verified(path: str | os.PathLike) -> bytes:
    """The bytes of ``path``, checked against its folder's manifest (one read of the file).

    Raises:
        CorruptFileError: when the file is missing, unrecorded, truncated or corrupted.
    """
    path = Path(path)
    manifest = Manifest(path.parent)
    try:
        entry = manifest.entries().get(path.name)
    except CorruptFileError as error:
        raise CorruptFileError(path, error.reason) from error
    if not path.is_file():
        raise CorruptFileError(path, "missing")
    if entry is None:
        raise CorruptFileError(path, NOT_RECORDED)
    data = path.read_bytes()
    if len(data) != entry["size"]:
        raise CorruptFileError(path, _size_problem(len(data), entry["size"]))
    if sha256_of(data) != entry["sha256"]:
        raise CorruptFileError(path, SHA_PROBLEM)
    return data


def checked_write(path: str | os.PathLike, write: Callable[[Any], None], *, binary: bool = True) -> Path:
    """:func:`atomic_write`, then record the file in its folder's manifest. If the record cannot be written
    (disk full), the new file stays unrecorded, so readers refuse it rather than trust it."""
    path = atomic_write(path, write, binary=binary)
    Manifest(path.parent).record(path)
    return path


def checked_write_text(path: str | os.PathLike, text: str) -> Path:
    """A text file (UTF-8) written atomically and recorded in its folder's manifest."""
    return checked_write(path, lambda file: file.write(text), binary=False)


def checked_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` atomically, recorded in the folder's manifest."""
    return checked_write(path, lambda file: torch.save(obj, file))


# ------------------------------------------------------------------------------------------------- locks
class LockTimeoutError(TimeoutError):
    """Another process holds the lock; ``holder`` is what it wrote into the lock file (pid, host, since)."""

    def __init__(self, path: Path, holder: dict[str, Any], waited: float):
        super().__init__(f"{path} is held by {describe_holder(holder)}; gave up after {waited:.0f} s")
        self.path, self.holder = path, holder


def describe_holder(holder: dict[str, Any]) -> str:
    if not holder:
        return "another process (which wrote no details)"
    return (f"process {holder.get('pid')} on host {holder.get('host')} since {holder.get('since')}"
            + (f" ({holder['command']})" if holder.get("command") else ""))


_HELD: dict[str, list[Any]] = {}  # lock path -> [open file, count]: locks this process holds
_HELD_GUARD = threading.Lock()
_WARNED_NO_LOCKS = False


class FileLock:
    """An exclusive lock on ``path`` (created if missing, never deleted) for one writer at a time.

    ``acquire(timeout)`` waits until the lock is free (``timeout=None``: as long as it takes; ``0``: not at
    all), printing once who holds it; it raises :class:`LockTimeoutError` naming the holder when the time
    is up. Re-entrant within a process. Use as ``with FileLock(path).held(timeout): ...``.
    """

    def __init__(self, path: str | os.PathLike, *, poll: float = 0.2):
        self.path = Path(path)
        self.poll = poll

    def holder(self) -> dict[str, Any]:
        """What the current (or last) holder wrote: pid, host, since, command; ``{}`` if nothing."""
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def is_held(self) -> bool:
        """Whether some process holds the lock now (this one included)."""
        if fcntl is None or not self.path.is_file():
            return False
        if str(self.path.resolve()) in _HELD:
            return True
        with open(self.path, "a+") as file:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(file, fcntl.LOCK_UN)
        return False

    def acquire(self, timeout: float | None = None, *, message: str = "") -> None:
        global _WARNED_NO_LOCKS
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be None or >= 0 seconds, got {timeout}")
        if fcntl is None:
            if not _WARNED_NO_LOCKS:
                warnings.warn("file locks need fcntl (POSIX); on this platform two writers of one run are "
                              "not kept apart", stacklevel=2)
                _WARNED_NO_LOCKS = True
            return
        key = str(self.path.resolve())
        with _HELD_GUARD:
            if key in _HELD:
                _HELD[key][1] += 1
                return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while the lock is held
        started, told = time.monotonic(), False
        try:
            while True:
                try:
                    fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = time.monotonic() - started
                    if timeout is not None and waited >= timeout:
                        raise LockTimeoutError(self.path, self.holder(), waited) from None
                    if not told:
                        limit = "as long as it takes" if timeout is None else f"up to {timeout:g} s"
                        print(f"{message or self.path} is being written by {describe_holder(self.holder())}; "
                              f"waiting {limit}", flush=True)
                        told = True
                    time.sleep(self.poll)
            file.seek(0)
            file.truncate()
            file.write(json.dumps({
                "pid": os.getpid(), "host": socket.gethostname(),
                "since": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(sys.argv)[:300],
            }))
            file.flush()
        except BaseException:
            file.close()
            raise
        with _HELD_GUARD:
            _HELD[key] = [file, 1]

    def release(self) -> None:
        if fcntl is None:
            return
        key = str(self.path.resolve())
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is None:
                raise RuntimeError(f"{self.path} is not held by this process")
            held[1] -= 1
            if held[1] > 0:
                return
            del _HELD[key]
        file = held[0]
        fcntl.flock(file, fcntl.LOCK_UN)
        file.close()

    @contextmanager
    def held(self, timeout: float | None = None, *, message: str = "") -> Iterator[FileLock]:
        self.acquire(timeout, message=message)
        try:
            yield self
        finally:
            self.release()
