"""Single-query ranking metrics: CMC, mAP and mINP over a query x gallery distance matrix.

The protocol is the one of torchreid / the Market-1501 evaluation code: for every query the gallery is
sorted by distance, the gallery images that the protocol *removes* (by default: same identity AND same
camera as the query) are dropped from the ranked list, and queries left without any true match are
skipped. Ties in distance are broken by gallery index (a stable sort), so results are deterministic.

Everything is vectorised over chunks of queries (``chunk_size`` rows at a time): peak memory is
about ``50 * chunk_size * num_gallery`` bytes, whatever the number of queries. It runs in torch on the
distance matrix's device (CPU or CUDA); numpy input is evaluated on the CPU.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor

# (query pids (c, 1), query cams (c, 1), ranked gallery pids (c, g), ranked gallery cams (c, g))
#   -> (c, g) bool: True where the ranked gallery image is removed for that query
RemovalRule = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def same_identity_same_camera(q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor) -> Tensor:
    """The standard rule: a gallery image of the query's identity seen by the query's camera is removed."""
    return (g_pids == q_pids) & (g_camids == q_camids)


def remove_nothing(q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor) -> Tensor:
    """Cross-modality (RegDB) and VehicleID rule: every gallery image is a valid candidate."""
    return torch.zeros_like(g_pids, dtype=torch.bool)


def as_tensor(x: ArrayLike, device: torch.device | str | None = None) -> Tensor:
    """A torch view/copy of ``x`` (numpy array, tensor or sequence) on ``device``."""
    if isinstance(x, Tensor):
        return x.to(device) if device is not None else x
    return torch.as_tensor(np.asarray(x), device=device)


@dataclass
class _Accumulator:
    """Running sums over query chunks (float64 so that chunking does not change the result)."""

    max_rank: int
    cmc_counts: Tensor = field(init=False)
    ap_sum: float = 0.0
    inp_sum: float = 0.0
    num_valid: int = 0

    def __post_init__(self) -> None:
        self.cmc_counts = torch.zeros(self.max_rank, dtype=torch.float64)


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int = 128,
) -> dict:
    """CMC, mAP and mINP of the standard single-query protocol (torchreid / Market-1501).

    Args:
        distmat: (num_query, num_gallery) distances (smaller = more similar), numpy or torch.
        q_pids, g_pids: identity labels, (num_query,) and (num_gallery,).
        q_camids, g_camids: 0-based camera ids.
        max_rank: length of the returned CMC curve (clipped to the gallery size with a warning).
        chunk_size: queries ranked at once; bounds memory, does not change the result.

    Returns:
        dict with ``cmc`` (numpy float64, length ``max_rank``: fraction of valid queries whose first true
        match is within rank k+1), ``mAP`` (mean average precision), ``mINP`` (mean inverse negative
        penalty, Ye et al. 2021: number of true matches / rank of the hardest one), as Python floats, and
        ``num_valid_queries``.

    Raises:
        ValueError: on inconsistent shapes, or when no query has a true match left in the gallery.
    """
    return rank_metrics(
        distmat, q_pids, g_pids, q_camids, g_camids, max_rank, chunk_size, same_identity_same_camera
    )


def rank_metrics(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int,
    chunk_size: int,
    removal_rule: RemovalRule,
    identity_once_cmc: bool = False,
) -> dict:
    """The shared engine of every protocol: ``removal_rule`` says which gallery images a query ignores.

    With ``identity_once_cmc`` the CMC counts each gallery identity once (SYSU-MM01 rule): the rank of the
    first true match is one plus the number of *distinct* identities ranked before it.
    """
    dist = as_tensor(distmat)
    if not dist.is_floating_point():
        dist = dist.double()
    device = dist.device
    q_pids_t, g_pids_t, q_cams_t, g_cams_t = (
        as_tensor(x, device).long().reshape(-1) for x in (q_pids, g_pids, q_camids, g_camids)
    )
    _check_shapes(dist, q_pids_t, g_pids_t, q_cams_t, g_cams_t)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    num_gallery = dist.shape[1]
    if num_gallery < max_rank:
        warnings.warn(
            f"gallery has only {num_gallery} images: max_rank reduced from {max_rank}", stacklevel=3
        )
        max_rank = num_gallery

    # identity -> 0..P-1, used to count distinct identities for the identity-once CMC
    _, g_identity_index = torch.unique(g_pids_t, return_inverse=True)
    acc = _Accumulator(max_rank)
    for start in range(0, dist.shape[0], chunk_size):
        stop = start + chunk_size
        _rank_chunk(
            dist[start:stop],
            q_pids_t[start:stop],
            q_cams_t[start:stop],
            g_pids_t,
            g_cams_t,
            g_identity_index,
            removal_rule,
            identity_once_cmc,
            acc,
        )
    if acc.num_valid == 0:
        raise ValueError(_no_valid_query_message(q_pids_t, g_pids_t, q_cams_t, g_cams_t))
    return {
        "cmc": (acc.cmc_counts / acc.num_valid).numpy(),
        "mAP": acc.ap_sum / acc.num_valid,
        "mINP": acc.inp_sum / acc.num_valid,
        "num_valid_queries": acc.num_valid,
    }


def _rank_chunk(
    dist: Tensor,
    q_pids: Tensor,
    q_camids: Tensor,
    g_pids: Tensor,
    g_camids: Tensor,
    g_identity_index: Tensor,
    removal_rule: RemovalRule,
    identity_once_cmc: bool,
    acc: _Accumulator,
) -> None:
    """Ranks one chunk of queries and adds its CMC hits, AP and INP to ``acc``."""
    num_q = dist.shape[0]
    order = torch.sort(dist, dim=1, stable=True).indices  # (c, g): ties by gallery index
    ranked_pids = g_pids[order]  # (c, g)
    keep = ~removal_rule(q_pids[:, None], q_camids[:, None], ranked_pids, g_camids[order])  # (c, g)
    good = keep & (ranked_pids == q_pids[:, None])  # (c, g) true matches that count
    kept_rank = torch.cumsum(keep, dim=1, dtype=torch.int32)  # (c, g) 1-based rank in the kept list
    hits = torch.cumsum(good, dim=1, dtype=torch.int32)  # (c, g) true matches so far

    rows, cols = good.nonzero(as_tuple=True)  # row-major: each query's matches in ranked order
    rank_at_hit = kept_rank[rows, cols].double()  # (n_hits,)
    precision_at_hit = hits[rows, cols].double() / rank_at_hit  # (n_hits,)
    num_pos = good.sum(dim=1)  # (c,)
    valid = num_pos > 0
    if not bool(valid.any()):
        return

    ap = torch.zeros(num_q, dtype=torch.float64, device=dist.device).index_add_(0, rows, precision_at_hit)
    ap = ap[valid] / num_pos[valid]
    hardest = torch.zeros(num_q, dtype=torch.float64, device=dist.device)
    hardest = hardest.scatter_reduce(0, rows, rank_at_hit, reduce="amax")  # rank of the last true match
    inp = num_pos[valid] / hardest[valid]

    first_col = torch.full((num_q,), dist.shape[1], dtype=torch.long, device=dist.device)
    first_col = first_col.scatter_reduce(0, rows, cols, reduce="amin")  # sorted position of first match
    if identity_once_cmc:
        first_rank = _distinct_identities_before(first_col, keep, g_identity_index[order]) + 1
    else:
        first_rank = kept_rank.gather(1, first_col.clamp(max=dist.shape[1] - 1)[:, None])[:, 0]
    ranks = torch.arange(1, acc.max_rank + 1, device=dist.device)
    cmc_hits = (first_rank[valid, None] <= ranks[None, :]).sum(dim=0)  # (max_rank,)

    acc.cmc_counts += cmc_hits.double().cpu()
    acc.ap_sum += float(ap.sum())
    acc.inp_sum += float(inp.sum())
    acc.num_valid += int(valid.sum())


def _distinct_identities_before(first_col: Tensor, keep: Tensor, ranked_identity: Tensor) -> Tensor:
    """(c,) number of distinct identities among kept gallery images ranked before ``first_col``."""
    positions = torch.arange(keep.shape[1], device=keep.device)
    before = keep & (positions[None, :] < first_col[:, None])  # (c, g)
    num_identities = int(ranked_identity.max()) + 1
    seen = torch.zeros(keep.shape[0], num_identities, device=keep.device)  # (c, P)
    seen.scatter_add_(1, ranked_identity, before.float())
    return (seen > 0).sum(dim=1)


def _check_shapes(dist: Tensor, q_pids: Tensor, g_pids: Tensor, q_camids: Tensor, g_camids: Tensor) -> None:
    if dist.ndim != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(dist.shape)}")
    num_q, num_g = dist.shape
    for name, labels, expected in (
        ("q_pids", q_pids, num_q),
        ("q_camids", q_camids, num_q),
        ("g_pids", g_pids, num_g),
        ("g_camids", g_camids, num_g),
    ):
        if labels.numel() != expected:
            raise ValueError(
                f"{name} has {labels.numel()} entries but distmat {tuple(dist.shape)} needs {expected}"
            )
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat is empty: shape {tuple(dist.shape)}")


def _no_valid_query_message(q_pids: Tensor, g_pids: Tensor, q_camids: Tensor, g_camids: Tensor) -> str:
    """Explains why no query kept a true match: absent identities vs. matches all removed by the protocol."""
    q_pids, g_pids, q_camids, g_camids = (x.cpu() for x in (q_pids, g_pids, q_camids, g_camids))
    absent = ~torch.isin(q_pids, g_pids)
    lines = [f"no valid query: none of the {len(q_pids)} queries has a true match left in the gallery."]
    if bool(absent.any()):
        examples = sorted(set(q_pids[absent].tolist()))[:5]
        lines.append(
            f"{int(absent.sum())} queries have an identity that is not in the gallery at all "
            f"(e.g. pids {examples}); check that query and gallery come from the same split."
        )
    removed = ~absent
    if bool(removed.any()):
        idx = removed.nonzero()[:5, 0].tolist()
        examples = [(int(q_pids[i]), int(q_camids[i])) for i in idx]
        cams = {int(q_pids[i]): sorted(set(g_camids[g_pids == q_pids[i]].tolist())) for i in idx}
        lines.append(
            f"{int(removed.sum())} queries have gallery images of their identity, but the protocol removes "
            f"them all (e.g. (pid, camid) {examples}; their gallery cameras {cams}). The standard rule "
            "drops same-identity images from the query's own camera: are the camera ids right?"
        )
    return " ".join(lines)
