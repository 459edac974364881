"""Random Block (RB), the occlusion augmentation of QAConv (Liao & Shao, ECCV 2020, Section 5.1).

Unlike random erasing, which samples an area and an aspect ratio and retries until the rectangle fits,
RB pastes one white *square* whose side is drawn uniformly from ``[max(1, min_frac * S), max_frac * S]``
pixels, ``S = min(H, W)`` (the width of an upright person image), at a uniformly drawn position where it
fits entirely: one draw, always valid. The authors' code applies it to every training image (p = 1),
with sides up to 0.8 x width, on the image before normalisation (white = 255).
"""

from __future__ import annotations

import torch
from torch import Tensor


def white_value(img: Tensor) -> float:
    """White for the image's dtype: 255 for uint8, 1.0 for float images in [0, 1]."""
    return 255.0 if img.dtype == torch.uint8 else 1.0


def random_block(
    img: Tensor,
    *,
    max_frac: float = 0.8,
    min_frac: float = 0.0,
    p: float = 1.0,
    fill: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A copy of ``img`` ((C, H, W) or (B, C, H, W), uint8 or float) with one random square per image.

    Args:
        max_frac, min_frac: bounds of the square's side as fractions of ``min(H, W)``.
        p: probability that an image gets a block.
        fill: value written into the square (default: :func:`white_value`; pass the normalised white when
            the image is already normalised).
        generator: torch generator for the draws (default: torch's global generator).
    """
    if img.ndim not in (3, 4):
        raise ValueError(f"img must be (C, H, W) or (B, C, H, W), got shape {tuple(img.shape)}")
    check_block_args(max_frac, min_frac, p)
    batch = img if img.ndim == 4 else img.unsqueeze(0)  # (B, C, H, W)
    height, width = batch.shape[2:]
    mask = block_masks(len(batch), height, width, max_frac, min_frac, p, generator)  # (B, H, W)
    mask = mask.to(img.device)
    value = white_value(img) if fill is None else fill
    out = batch.masked_fill(mask.unsqueeze(1), value)
    return out if img.ndim == 4 else out.squeeze(0)


def check_block_args(max_frac: float, min_frac: float, p: float) -> None:
    if not 0.0 <= min_frac <= max_frac <= 1.0:
        raise ValueError(f"need 0 <= min_frac <= max_frac <= 1, got min_frac={min_frac}, max_frac={max_frac}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p is a probability in [0, 1], got {p}")


def block_masks(
    count: int,
    height: int,
    width: int,
    max_frac: float,
    min_frac: float,
    p: float,
    generator: torch.Generator | None,
) -> Tensor:
    """``count`` boolean masks (count, height, width), each True on one random square (or nowhere, with
    probability 1 - p)."""
    short = min(height, width)
    low = max(1, int(min_frac * short))
    high = max(low, int(max_frac * short))
    sides = torch.randint(low, high + 1, (count,), generator=generator)  # (count,)
    top = (torch.rand(count, generator=generator) * (height - sides + 1)).long()  # in 0..height - side
    left = (torch.rand(count, generator=generator) * (width - sides + 1)).long()
    applied = torch.rand(count, generator=generator) < p
    rows = torch.arange(height).view(1, height, 1)
    cols = torch.arange(width).view(1, 1, width)
    inside_rows = (rows >= top.view(-1, 1, 1)) & (rows < (top + sides).view(-1, 1, 1))
    inside_cols = (cols >= left.view(-1, 1, 1)) & (cols < (left + sides).view(-1, 1, 1))
    return inside_rows & inside_cols & applied.view(-1, 1, 1)


class RandomBlock:
    """Transform form of :func:`random_block` for a ``Compose`` pipeline, with its own seeded generator
    (``seed=None``: torch's global generator, which the engine reseeds every epoch)."""

    def __init__(
        self,
        max_frac: float = 0.8,
        min_frac: float = 0.0,
        p: float = 1.0,
        fill: float | None = None,
        seed: int | None = None,
    ) -> None:
        check_block_args(max_frac, min_frac, p)
        self.max_frac, self.min_frac, self.p, self.fill = max_frac, min_frac, p, fill
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, img: Tensor) -> Tensor:
        return random_block(
            img,
            max_frac=self.max_frac,
            min_frac=self.min_frac,
            p=self.p,
            fill=self.fill,
            generator=self.generator,
        )

    def __repr__(self) -> str:
        args = f"max_frac={self.max_frac}, min_frac={self.min_frac}, p={self.p}, fill={self.fill}"
        return f"RandomBlock({args})"
