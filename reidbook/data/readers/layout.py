"""Finding a dataset folder and parsing its names and list files, with errors that say what was expected."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..records import DatasetLayoutError


def locate_dataset_dir(root: Path, usual_names: Sequence[str], marker: str, layout: str) -> Path:
    """The dataset folder: ``root`` itself or ``root / name`` for one of its usual unpacked names.

    The first candidate holding ``marker`` (a sub-folder or file every copy of the dataset has) wins.
    Raises :class:`DatasetLayoutError` naming every path looked at and the expected ``layout``.
    """
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise DatasetLayoutError(f"Expected a folder at {root} but found none.\nExpected layout:\n{layout}")
    candidates = [root, *(root / name for name in usual_names)]
    for candidate in candidates:
        if (candidate / marker).exists():
            return candidate
    looked_at = "\n".join(f"  {c / marker}" for c in candidates)
    raise DatasetLayoutError(
        f"Could not find the dataset under {root}: none of these exist:\n{looked_at}\n"
        f"Expected layout:\n{layout}"
    )


def require_file(path: Path, layout: str) -> Path:
    """Return ``path`` if it is a file, else raise :class:`DatasetLayoutError` describing ``layout``."""
    if not path.is_file():
        raise DatasetLayoutError(f"Expected a file at {path} but found none.\nExpected layout:\n{layout}")
    return path


def match_name(pattern: re.Pattern[str], path: Path, expected: str) -> re.Match[str]:
    """Match ``pattern`` against the file name's stem, or raise naming the file and the expected pattern."""
    match = pattern.fullmatch(path.stem)
    if match is None:
        raise DatasetLayoutError(f"Malformed file name {path}: expected names like {expected}")
    return match


@dataclass(frozen=True)
class ParsedImage:
    """The fields an image file name carries."""

    path: Path
    pid: int
    cam: int  # as written in the name: 1-based
    session: int = 1  # Market-1501's video session ``sS``; 1 where a dataset has none
    frame: int | None = None  # frame number within the session (Market) or the camera's video (Duke)


@dataclass(frozen=True)
class NameFormat:
    """How one dataset names its files: a regular expression on the stem and a human-readable example."""

    pattern: re.Pattern[str]
    example: str
    has_session: bool = False
    has_frame: bool = False

    def parse(self, path: Path) -> ParsedImage:
        groups = match_name(self.pattern, path, self.example).groupdict()
        cam = int(groups["cam"])
        if cam < 1:
            raise DatasetLayoutError(f"Malformed file name {path}: cameras start at 1 ({self.example})")
        return ParsedImage(
            path=path,
            pid=int(groups["pid"]),
            cam=cam,
            session=int(groups["session"]) if self.has_session else 1,
            frame=int(groups["frame"]) if self.has_frame else None,
        )


def read_list_file(path: Path, expected: str) -> list[tuple[str, int]]:
    """Lines ``<relative path or name> <integer label>`` of a list file (blank lines skipped).

    Raises :class:`DatasetLayoutError` naming the file, the line number and ``expected`` on a bad line.
    """
    entries = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or not re.fullmatch(r"-?\d+", fields[1]):
                raise DatasetLayoutError(
                    f"Malformed line {number} in {path}: {line.rstrip()!r}; expected lines like {expected}"
                )
            entries.append((fields[0], int(fields[1])))
    return entries


def require_listed_files(paths: Sequence[Path], list_file: Path, layout: str) -> None:
    """Check that the first and last files named by ``list_file`` exist (cheap: two ``stat`` calls).

    Catches a wrong root or version early, before a data loader fails deep inside a training loop.
    """
    if not paths:
        raise DatasetLayoutError(f"The list file {list_file} names no images.\nExpected layout:\n{layout}")
    for path in dict.fromkeys((paths[0], paths[-1])):
        if not path.is_file():
            raise DatasetLayoutError(
                f"{list_file} names {path}, which does not exist.\nExpected layout:\n{layout}"
            )
