"""Distance matrices from a pair-scoring function, computed block by block with bounded memory.

Methods that compare *pairs* instead of embeddings (QAConv's query-adaptive convolution, IPAD's mutual
branch) give a similarity ``score(query_batch, gallery_batch) -> (q, g)``. This module turns such a
function into the (num_query, num_gallery) distance matrix that the ranking metrics expect.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..progress import tqdm

Features = Tensor | dict[str, Tensor]
ScoreFn = Callable[[Features, Features], Tensor]
CONVERSIONS = {"negate": lambda s: -s, "one_minus": lambda s: 1.0 - s, "as_distance": lambda s: s}


@torch.no_grad()
def pairwise_distance_matrix(
    score_fn: ScoreFn,
    query_feats: Features,
    gallery_feats: Features,
    q_chunk: int = 256,
    g_chunk: int = 1024,
    device: torch.device | str | None = None,
    progress: bool = True,
    conversion: str = "negate",
    out_device: torch.device | str = "cpu",
) -> Tensor:
    """(num_query, num_gallery) float32 distances from the similarities of ``score_fn``, block by block.

    Args:
        score_fn: ``(query_block, gallery_block) -> (q, g)`` similarities (larger = more similar).
        query_feats, gallery_feats: tensors whose first dim is the batch (embeddings or feature maps), or
            dicts of such tensors (a model's several test features), sliced together.
        q_chunk, g_chunk: block sizes; only one (q_chunk, g_chunk) block of inputs and scores is on
            ``device`` at a time (plus whatever ``score_fn`` allocates).
        device: where ``score_fn`` runs (default: the query features' device).
        progress: show a tqdm bar over blocks.
        conversion: ``"negate"`` gives distance = -score (any similarity, order preserved);
            ``"one_minus"`` gives 1 - score (for similarities in [0, 1] or cosine similarities);
            ``"as_distance"`` keeps the values (``score_fn`` already returns distances).
        out_device: where the distance matrix is assembled (CPU by default).
    """
    if conversion not in CONVERSIONS:
        raise ValueError(f"conversion must be one of {sorted(CONVERSIONS)}, got {conversion!r}")
    if q_chunk < 1 or g_chunk < 1:
        raise ValueError(f"q_chunk and g_chunk must be positive, got {q_chunk} and {g_chunk}")
    device = torch.device(device) if device is not None else _first(query_feats).device
    to_distance = CONVERSIONS[conversion]
    num_q, num_g = len(_first(query_feats)), len(_first(gallery_feats))
    dist = torch.empty(num_q, num_g, dtype=torch.float32, device=out_device)
    q_starts, g_starts = range(0, num_q, q_chunk), range(0, num_g, g_chunk)
    with tqdm(total=len(q_starts) * len(g_starts), desc="pair scores", disable=not progress) as bar:
        for qs in q_starts:
            q_block = _block(query_feats, slice(qs, qs + q_chunk), device)
            for gs in g_starts:
                g_block = _block(gallery_feats, slice(gs, gs + g_chunk), device)
                scores = score_fn(q_block, g_block)
                expected = (len(_first(q_block)), len(_first(g_block)))
                if tuple(scores.shape) != expected:
                    raise ValueError(
                        f"score_fn returned shape {tuple(scores.shape)} for a block of {expected[0]} "
                        f"queries and {expected[1]} gallery items; expected {expected}"
                    )
                dist[qs : qs + q_chunk, gs : gs + g_chunk] = to_distance(scores.float()).to(out_device)
                bar.update(1)
    return dist


def _first(features: Features) -> Tensor:
    return next(iter(features.values())) if isinstance(features, dict) else features


def _block(features: Features, rows: slice, device: torch.device) -> Features:
    if isinstance(features, dict):
        return {name: value[rows].to(device) for name, value in features.items()}
    return features[rows].to(device)
