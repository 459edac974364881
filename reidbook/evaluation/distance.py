"""Distances between embeddings, and flip test-time augmentation.

Both distances take (n, d) and (m, d) and return (n, m); torch in gives torch out (on the inputs'
device), numpy in gives numpy out. They work on any pair of batches, so they can be applied chunk by
chunk (see :func:`reidbook.evaluation.pairwise.pairwise_distance_matrix`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from .ranking import ArrayLike


def _as_float_tensors(a: ArrayLike, b: ArrayLike) -> tuple[Tensor, Tensor, bool]:
    numpy_in = not isinstance(a, Tensor) and not isinstance(b, Tensor)
    a_t = a if isinstance(a, Tensor) else torch.from_numpy(np.asarray(a))
    b_t = b if isinstance(b, Tensor) else torch.from_numpy(np.asarray(b))
    if a_t.ndim != 2 or b_t.ndim != 2 or a_t.shape[1] != b_t.shape[1]:
        raise ValueError(
            f"expected (n, d) and (m, d) embeddings, got {tuple(a_t.shape)} and {tuple(b_t.shape)}"
        )
    dtype = torch.promote_types(a_t.dtype, b_t.dtype)
    if not dtype.is_floating_point:
        dtype = torch.float32
    return a_t.to(dtype), b_t.to(device=a_t.device, dtype=dtype), numpy_in


def euclidean_distance(a: ArrayLike, b: ArrayLike, squared: bool = True) -> ArrayLike:
    """(n, m) Euclidean distances; *squared* by default, as torchreid's evaluation uses.

    Computed as |a|^2 + |b|^2 - 2 a.b (one matrix product) and clamped at 0 against rounding.
    """
    a_t, b_t, numpy_in = _as_float_tensors(a, b)
    dist = (a_t.pow(2).sum(1, keepdim=True) + b_t.pow(2).sum(1)[None, :] - 2.0 * a_t @ b_t.T).clamp_(min=0)
    if not squared:
        dist = dist.sqrt_()
    return dist.numpy() if numpy_in else dist


def cosine_distance(a: ArrayLike, b: ArrayLike) -> ArrayLike:
    """(n, m) cosine distances 1 - cos(a_i, b_j), in [0, 2]."""
    a_t, b_t, numpy_in = _as_float_tensors(a, b)
    a_n = torch.nn.functional.normalize(a_t, dim=1)
    b_n = torch.nn.functional.normalize(b_t, dim=1)
    dist = 1.0 - a_n @ b_n.T
    return dist.numpy() if numpy_in else dist


@torch.no_grad()
def flip_average(model: nn.Module, images: Tensor) -> Tensor:
    """Mean of the model's eval-mode output on ``images`` (B, 3, H, W) and their horizontal flips.

    The model is put in eval mode for the call and its previous mode is restored afterwards.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    was_training = model.training
    model.eval()
    try:
        return 0.5 * (model(images) + model(images.flip(-1)))
    finally:
        model.train(was_training)
