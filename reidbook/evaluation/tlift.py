"""Temporal Lifting (TLift), Liao & Shao, ECCV 2020, Section 4: a model-free re-weighting of the scores
by the temporal co-occurrence of people within each camera.

People walking together in one camera are likely to walk together in the next. For a query A in camera
Q, its *nearby persons* R are the query images of camera Q taken less than ``tau`` seconds from A (A
itself included: its time difference is 0). Their ``K`` best cross-camera matches in a gallery camera G,
taken over all of R together, are the *pivots* P. The temporal probability of a gallery image X of
camera G is a kernel density estimate over the pivots' times (Eq. 3),

    p_t(A, X) = 1/|P| sum_{B in P} exp(-(t_X - t_B)^2 / sigma^2),

and the refined score is ``(p_t(A, X) + alpha) * p_a(A, X)``, with p_a the appearance similarity.

Details taken from the authors' released code (``reid/tlift.py`` in ShengcaiLiao/QAConv), where the paper
does not say:

* R is drawn from the *query set* (the other query images of A's camera), and includes A;
* P is the top K of all (nearby person, gallery image) scores, so a gallery image retrieved by two
  nearby persons counts twice; if R x G has fewer than K pairs, all of them are pivots;
* every gallery camera is lifted, the query's own camera included;
* nearby means ``|t_A - t_B| < tau`` (strict).

Where we differ from the authors' code, on purpose:

* Ties at the K-th pivot: the authors keep every pair whose score equals the K-th best (``>=`` a
  threshold), so P can hold more than K pairs. Here P holds exactly K: pairs tied with the K-th score are
  taken in row-major order of the score matrix, the nearby person with the lower query index first, then
  the lower gallery index. Deterministic, and independent of the device and of ``MAX_BLOCK_ELEMENTS``.
* A query whose camera has no gallery images is lifted like any other: its nearby persons come from the
  query set and its pivots from each gallery camera, neither of which needs its own camera in the
  gallery. The authors' code loops over the camera ids ``0 .. max(gallery camera id)`` for the queries
  too, so a query whose camera id is above every gallery camera's is never visited: its p_t stays 0 and
  its scores become ``alpha * score``, its ranking unchanged. (A camera id below the gallery's largest
  without gallery images makes their code fail: it indexes the empty list of that camera's scores.)

The paper uses K = tau = sigma = 100 and alpha = 0.1 (Section 5.1); the authors' code defaults to tau = 100,
sigma = 200, K = 10, alpha = 0.2 and applies TLift to ``1 - re-ranked distance``. Scores should be
non-negative similarities such as sigmoid probabilities (the multiplicative fusion would favour distant
pivots for a negative score).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor
MAX_BLOCK_ELEMENTS = 1 << 24  # elements of the largest intermediate block


def tlift(
    score: ArrayLike,
    q_cams: ArrayLike,
    q_times: ArrayLike,
    g_cams: ArrayLike,
    g_times: ArrayLike,
    tau: float = 100,
    sigma: float = 100,
    K: int = 100,
    alpha: float = 0.1,
) -> ArrayLike:
    """TLift-refined (num_query, num_gallery) scores: ``(p_t + alpha) * score`` (Section 4, Eq. 3).

    Args:
        score: (q, g) similarities, higher = more similar (numpy array or torch tensor, any device).
        q_cams, g_cams: 0-based camera ids of the queries (q,) and gallery images (g,).
        q_times, g_times: their times in seconds, (q,) and (g,), all finite.
        tau: time window (seconds) defining the nearby persons of a query in its camera.
        sigma: time scale (seconds) of the kernel around each pivot.
        K: number of pivots per (query, gallery camera).
        alpha: regulariser of the fusion; large alpha leaves the ranking of ``score`` unchanged.

    Returns the refined scores with the type, dtype, device and shape of ``score``. Computed per
    (query camera, gallery camera) pair with tensor operations over chunks of queries; no loop over images.
    About 17 s for a Market-1501-sized problem (3,368 x 15,913, 6 cameras) on 2 CPU cores.
    """
    scores = torch.from_numpy(np.asarray(score)) if isinstance(score, np.ndarray) else score
    if not isinstance(scores, Tensor) or scores.ndim != 2 or not scores.is_floating_point():
        raise ValueError(
            "score must be a 2-D floating-point numpy array or torch tensor (num_query, num_gallery)"
        )
    _check_parameters(tau, sigma, K)
    device = scores.device
    qc, qt = _camera_and_time("query", q_cams, q_times, scores.shape[0], device)
    gc, gt = _camera_and_time("gallery", g_cams, g_times, scores.shape[1], device)
    if not torch.isfinite(scores).all():
        raise ValueError("score contains NaN or infinite values")
    p_t = temporal_probability(scores, qc, qt, gc, gt, tau=tau, sigma=sigma, K=int(K))  # (q, g)
    refined = ((p_t + alpha) * scores.to(p_t.dtype)).to(scores.dtype)
    return refined.numpy() if isinstance(score, np.ndarray) else refined


def temporal_probability(
    scores: Tensor,
    q_cams: Tensor,
    q_times: Tensor,
    g_cams: Tensor,
    g_times: Tensor,
    *,
    tau: float,
    sigma: float,
    K: int,
) -> Tensor:
    """p_t(A, X) of Eq. 3 for every query A and gallery image X, (q, g).

    Written as ``p_t = W @ k``: ``W[A, B]`` is the share of pivot B in A's pivot set (its multiplicity over
    |P|) and ``k[B, X] = exp(-(t_X - t_B)^2 / sigma^2)`` the kernel between two images of the gallery camera.
    Computed in float64 for float64 scores, else in float32.
    """
    dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    p_t = torch.zeros(scores.shape, dtype=dtype, device=scores.device)
    for g_cam in g_cams.unique():
        gi = (g_cams == g_cam).nonzero().squeeze(1)  # (ng,) gallery images of this camera
        weights = torch.zeros(len(scores), len(gi), dtype=dtype, device=scores.device)  # (q, ng) W
        for q_cam in q_cams.unique():
            qi = (q_cams == q_cam).nonzero().squeeze(1)  # (nq,) queries of this camera
            nearby = (q_times[qi].unsqueeze(1) - q_times[qi].unsqueeze(0)).abs() < tau  # (nq, nq): R per row
            weights[qi] = pivot_weights(scores[qi][:, gi], nearby, K).to(dtype)
        p_t[:, gi] = _smooth_over_time(weights, g_times[gi], sigma)
    return p_t


def pivot_weights(scores: Tensor, nearby: Tensor, K: int) -> Tensor:
    """Pivot shares within one (query camera, gallery camera) pair: scores (nq, ng), nearby (nq, nq) ->
    (nq, ng), row A = multiplicity of each gallery image among the K best pairs of R(A) x G, over |P|.

    Pairs are ranked by score, ties by row-major position in ``scores`` (lower query row, then lower
    gallery column first). The K best pairs of R x G then lie among the K best gallery images of each row
    of R, so each query picks its pivots among ``nq * min(K, ng)`` candidates rather than ``nq * ng``.
    """
    nq, ng = scores.shape
    row_k = min(K, ng)
    row_index = top_k_first_come(scores, row_k)  # (nq, row_k) each nearby person's best, by gallery column
    row_best = scores.gather(1, row_index)  # (nq, row_k)
    k = min(K, nq * row_k)
    chunk = max(1, MAX_BLOCK_ELEMENTS // (nq * row_k))
    weights = torch.zeros(nq, ng, dtype=torch.float64, device=scores.device)
    for start in range(0, nq, chunk):
        near = nearby[start : start + chunk]  # (c, nq)
        candidates = row_best.unsqueeze(0).masked_fill(~near.unsqueeze(2), float("-inf"))  # (c, nq, row_k)
        candidates = candidates.flatten(1)  # (c, nq * row_k), row-major order of the (query, gallery) pairs
        flat = top_k_first_come(candidates, k)  # (c, k) over R x G
        best = candidates.gather(1, flat)  # (c, k)
        is_pivot = torch.isfinite(best).to(torch.float64)  # (c, k); False where R x G has < K pairs
        share = is_pivot / is_pivot.sum(dim=1, keepdim=True)  # (c, k)
        weights[start : start + chunk].scatter_add_(1, row_index.flatten()[flat], share)
    return weights


def top_k_first_come(values: Tensor, k: int) -> Tensor:
    """Columns of the ``k`` largest values of each row, values (n, m) -> (n, k) in ascending column order;
    among values tied with the k-th largest, the lower columns are taken (``torch.topk`` leaves that open).
    """
    best, index = values.topk(min(k + 1, values.shape[1]), dim=1)  # (n, k + 1): one more, to see ties
    index = index[:, :k]  # (n, k)
    if best.shape[1] > k:  # a row's cut splits ties when its (k+1)-th largest equals its k-th
        rows = (best[:, k] == best[:, k - 1]).nonzero().squeeze(1)
        if len(rows):
            kth = best[rows, k - 1 : k]  # (r, 1)
            cut = values[rows]  # (r, m)
            above, tied = cut > kth, cut == kth  # (r, m) each
            tied &= tied.cumsum(dim=1) <= k - above.sum(dim=1, keepdim=True)  # the first tied columns needed
            index[rows] = (above | tied).nonzero()[:, 1].view(len(rows), k)
    return index.sort(dim=1).values


def _smooth_over_time(weights: Tensor, times: Tensor, sigma: float) -> Tensor:
    """``weights @ exp(-(t_X - t_B)^2 / sigma^2)``: (q, ng) pivot weights -> (q, ng), in column blocks."""
    out = torch.empty_like(weights)
    block = max(1, MAX_BLOCK_ELEMENTS // len(times))
    for start in range(0, len(times), block):
        dt = times.unsqueeze(1) - times[start : start + block].unsqueeze(0)  # (ng, b), float64 seconds
        kernel = torch.exp(-dt.pow(2) / sigma**2).to(weights.dtype)  # (ng, b)
        out[:, start : start + block] = weights @ kernel
    return out


def _camera_and_time(
    name: str, cams: ArrayLike, times: ArrayLike, expected: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Camera ids (long) and times (float64) on ``device``, checked against the score's axis length."""
    cam_t = torch.as_tensor(np.asarray(cams) if not isinstance(cams, Tensor) else cams).to(device)
    time_t = torch.as_tensor(np.asarray(times) if not isinstance(times, Tensor) else times).to(device)
    if cam_t.shape != (expected,) or time_t.shape != (expected,):
        raise ValueError(
            f"{name} cams and times must be 1-D of length {expected} (that axis of score), got shapes "
            f"{tuple(cam_t.shape)} and {tuple(time_t.shape)}"
        )
    if cam_t.is_floating_point() or cam_t.dtype == torch.bool:
        raise ValueError(f"{name} camera ids must be integers, got dtype {cam_t.dtype}")
    time_t = time_t.to(torch.float64)
    if not torch.isfinite(time_t).all():
        raise ValueError(f"{name} times must all be finite seconds (TLift needs a time for every image)")
    return cam_t.long(), time_t


def _check_parameters(tau: float, sigma: float, K: int) -> None:
    if tau <= 0 or sigma <= 0:
        raise ValueError(f"tau and sigma must be positive seconds, got tau={tau}, sigma={sigma}")
    if int(K) != K or K < 1:
        raise ValueError(f"K must be a positive integer, got {K}")
