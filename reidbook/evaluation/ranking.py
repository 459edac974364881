"""Single-query ranking metrics: CMC, mAP and mINP over a query x gallery distance matrix.

The protocol is the one of torchreid / the Market-1501 evaluation code: for every query the gallery is
sorted by distance, the gallery images that the protocol *removes* (by default: same identity AND same
camera as the query) are dropped from the ranked list, and queries left without any true match are
skipped. Ties in distance are broken by gallery index (a stable sort), so results are deterministic.

Everything is vectorised over chunks of queries (``chunk_size`` rows at a time), in torch on the
distance matrix's device (CPU or CUDA; numpy input is evaluated on the CPU). Float32/16 distances are
ranked without sorting the gallery: each image gets an int64 key (monotone float bits, gallery index in
the low bits) and a binary search among the few true-match keys counts the images ranked before each
true match (about ``40 * chunk_size * num_gallery`` bytes at peak). Float64 distances, whose bits do not
fit beside the index, are ranked by a stable sort (about ``60 * chunk_size * num_gallery`` bytes). Both
give the same result as a per-query loop with a stable argsort.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

ArrayLike = np.ndarray | Tensor

# (query pids (c, 1), query cams (c, 1), gallery pids (1, g), gallery cams (1, g))
#   -> (c, g) bool (broadcastable): True where the gallery image is removed for that query
RemovalRule = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def same_identity_same_camera(q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor) -> Tensor:
    """The standard rule: a gallery image of the query's identity seen by the query's camera is removed."""
    return (g_pids == q_pids) & (g_camids == q_camids)


def remove_nothing(q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor) -> Tensor:
    """Cross-modality (RegDB) and VehicleID rule: every gallery image is a valid candidate."""
    return torch.zeros(len(q_pids), g_pids.shape[-1], dtype=torch.bool, device=g_pids.device)


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
    removed = removal_rule(q_pids[:, None], q_camids[:, None], g_pids[None, :], g_camids[None, :])
    removed = removed.expand(dist.shape)  # (c, g), gallery order
    good = ~removed & (g_pids[None, :] == q_pids[:, None])  # (c, g) true matches that count
    num_pos = good.sum(dim=1)  # (c,)
    valid = num_pos > 0
    if not bool(valid.any()):
        return
    if dist.dtype == torch.float64:
        match_ranks, first_match = _match_ranks_by_sorting(dist, removed, good, num_pos)
    else:
        match_ranks, first_match = _match_ranks_by_counting(dist, removed, good, num_pos)
    match_ranks, num_pos, first_match = match_ranks[valid], num_pos[valid], first_match[valid]

    # AP = mean over true matches of (matches so far / rank); padding ranks are inf and add 0
    hits = torch.arange(1, match_ranks.shape[1] + 1, device=dist.device, dtype=torch.float64)
    ap = (hits / match_ranks).sum(dim=1) / num_pos
    hardest = match_ranks.gather(1, (num_pos - 1)[:, None])[:, 0]  # rank of the last true match
    inp = num_pos / hardest
    if identity_once_cmc:
        before = _ranked_before(dist[valid], first_match) & ~removed[valid]
        first_rank = _distinct_identities(before, g_identity_index) + 1
    else:
        first_rank = match_ranks[:, 0]
    ranks = torch.arange(1, acc.max_rank + 1, device=dist.device)
    cmc_hits = (first_rank[:, None] <= ranks[None, :]).sum(dim=0)  # (max_rank,)

    acc.cmc_counts += cmc_hits.double().cpu()
    acc.ap_sum += float(ap.sum())
    acc.inp_sum += float(inp.sum())
    acc.num_valid += len(num_pos)


_LAST = torch.iinfo(torch.int64).max


def _order_keys(dist: Tensor) -> Tensor:
    """(c, g) int64 keys, unique per row, ordered exactly as (distance, gallery index).

    The float32 bit pattern is made monotone (negative numbers flipped) and the index fills the low
    32 bits. Comparing keys is then a stable sort without sorting.
    """
    bits = (dist.float() + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into +0.0
    monotone = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # int32 order == float order
    index = torch.arange(dist.shape[1], device=dist.device)
    return monotone.long() * (1 << 32) + index


def _match_ranks_by_counting(
    dist: Tensor, removed: Tensor, good: Tensor, num_pos: Tensor
) -> tuple[Tensor, Tensor]:
    """Ranks of the true matches without sorting the gallery (float32/16 distances).

    Removed images get the largest key, so they rank behind everything and never count. Each gallery
    image falls into a bucket "number of true matches ranked before it" (a binary search among the
    few true-match keys); the cumulative bucket counts are the ranks of the true matches.

    Returns (c, R) float64 ranks in ranked order (inf beyond each query's matches) and the (c,) gallery
    index of each query's best-ranked true match.
    """
    keys = _order_keys(dist).masked_fill_(removed, _LAST)  # (c, g)
    most = int(num_pos.max())
    match_keys = keys.masked_fill(~good, _LAST).topk(most, dim=1, largest=False).values  # (c, R) sorted
    bucket = torch.searchsorted(match_keys, keys)  # (c, g) true matches strictly before each image
    per_bucket = torch.zeros(len(keys), most + 1, dtype=torch.long, device=dist.device)
    per_bucket.scatter_add_(
        1, bucket, torch.ones(1, 1, dtype=torch.long, device=dist.device).expand_as(bucket)
    )
    ranks = per_bucket.cumsum(dim=1)[:, :most].double()  # (c, R) 1-based rank of the m-th true match
    padding = torch.arange(most, device=dist.device)[None, :] >= num_pos[:, None]
    return ranks.masked_fill_(padding, torch.inf), match_keys[:, 0] & 0xFFFFFFFF


def _match_ranks_by_sorting(
    dist: Tensor, removed: Tensor, good: Tensor, num_pos: Tensor
) -> tuple[Tensor, Tensor]:
    """Same output as :func:`_match_ranks_by_counting`, by a stable sort (float64 distances)."""
    order = torch.sort(dist, dim=1, stable=True).indices  # (c, g): ties by gallery index
    kept_rank = torch.cumsum(~removed.gather(1, order), dim=1)  # (c, g) 1-based rank in the kept list
    good_sorted = good.gather(1, order)  # (c, g)
    hits = torch.cumsum(good_sorted, dim=1)  # (c, g) true matches so far
    rows, cols = good_sorted.nonzero(as_tuple=True)
    ranks = torch.full((len(dist), int(num_pos.max())), torch.inf, dtype=torch.float64, device=dist.device)
    ranks[rows, hits[rows, cols] - 1] = kept_rank[rows, cols].double()
    first_col = good_sorted.byte().argmax(dim=1, keepdim=True)  # first True in ranked order
    return ranks, order.gather(1, first_col)[:, 0]


def _ranked_before(dist: Tensor, gallery_index: Tensor) -> Tensor:
    """(c, g) mask of gallery images ranked before ``gallery_index`` (by distance, then index)."""
    pivot = dist.gather(1, gallery_index[:, None])  # (c, 1)
    index = torch.arange(dist.shape[1], device=dist.device)[None, :]
    return (dist < pivot) | ((dist == pivot) & (index < gallery_index[:, None]))


def _distinct_identities(mask: Tensor, identity_index: Tensor) -> Tensor:
    """(c,) number of distinct identities (0..P-1 labels of the gallery) among the images in ``mask``."""
    seen = torch.zeros(len(mask), int(identity_index.max()) + 1, device=mask.device)  # (c, P)
    seen.scatter_add_(1, identity_index.expand_as(mask), mask.float())
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
