"""Listing and reading image files without surprises: sorted listings, clear errors naming the file."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class ImageReadError(OSError):
    """An image file is missing or cannot be decoded; the message names the file."""


def list_image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name.

    Other files (``Thumbs.db`` in Market-1501, list files, ...) are ignored. Nothing is decoded, so
    listing tens of thousands of files takes milliseconds.
    """
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file()]
    return [folder / name for name in sorted(names)]


def read_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB, raising :class:`ImageReadError` naming the file on any failure."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"Image file not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ImageReadError(f"Cannot read image {path}: {error}") from error
