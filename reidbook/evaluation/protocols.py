"""Dataset-specific evaluation protocols: SYSU-MM01, RegDB and VehicleID, with their random trials.

* SYSU-MM01 (Wu et al., ICCV 2017), as in the authors' MATLAB code and its Python port in the DDAG/AGW
  code (mangye16): infrared queries (cameras 3 and 6 -> 0-based 2 and 5) search a visible gallery drawn
  at random, one image per (identity, camera) (single-shot) or ten (multi-shot), ten times. Camera 3
  (id 2) sits in the same room as camera 2 (id 1), so a camera-3 query ignores *every* camera-2 gallery
  image -- the reference code removes them whatever their identity, and so do we. The CMC counts each
  gallery identity once (repeated identities are removed from the ranked list); mAP and mINP use the
  filtered list as usual.
* RegDB (Nguyen et al., 2017): one visible and one thermal camera, ten train/test splits; the DDAG code
  removes nothing from the gallery (all gallery images are in the other modality). Metrics are averaged
  over the ten splits, in either direction (visible->thermal or thermal->visible).
* VehicleID (Liu et al., CVPR 2016): one random image per vehicle forms the gallery, the others are
  queries; repeated with seeds and averaged. No camera information, nothing removed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from torch import Tensor

from .ranking import ArrayLike, as_tensor, rank_metrics, remove_nothing

SYSU_GALLERY_CAMERAS = {"all": (0, 1, 3, 4), "indoor": (0, 1)}  # visible cameras 1,2,4,5 / 1,2
SYSU_QUERY_CAMERAS = (2, 5)  # infrared cameras 3 and 6
SYSU_SAME_ROOM = (2, 1)  # (query camera, gallery camera): cameras 3 and 2 share a room
REPORTED_RANKS = (1, 5, 10, 20)


def sysu_same_room_rule(q_pids: Tensor, q_camids: Tensor, g_pids: Tensor, g_camids: Tensor) -> Tensor:
    """Camera-3 queries ignore all camera-2 gallery images (0-based ids 2 and 1), as the reference code."""
    query_cam, gallery_cam = SYSU_SAME_ROOM
    return (q_camids == query_cam) & (g_camids == gallery_cam)


def evaluate_sysu(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 20,
    chunk_size: int = 128,
) -> dict:
    """SYSU-MM01 metrics of one gallery draw: same dict as :func:`evaluate_rank` (0-based camera ids)."""
    return rank_metrics(
        distmat,
        q_pids,
        g_pids,
        q_camids,
        g_camids,
        max_rank,
        chunk_size,
        sysu_same_room_rule,
        identity_once_cmc=True,
    )


def sample_sysu_gallery(
    g_pids: ArrayLike,
    g_camids: ArrayLike,
    mode: str = "all",
    trial: int = 0,
    num_shots: int = 1,
    seed: int = 0,
) -> np.ndarray:
    """Indices of one random SYSU-MM01 gallery drawn from the full visible test gallery.

    ``num_shots`` random images (all of them when fewer exist) per (identity, camera) among the mode's
    cameras: single-shot is 1, multi-shot 10. The draw depends only on (seed, trial). Indices are
    sorted by (identity, camera, index).
    """
    if mode not in SYSU_GALLERY_CAMERAS:
        raise ValueError(f"mode must be one of {sorted(SYSU_GALLERY_CAMERAS)}, got {mode!r}")
    if num_shots < 1:
        raise ValueError(f"num_shots must be >= 1, got {num_shots}")
    pids = np.asarray(as_tensor(g_pids).cpu()).reshape(-1)
    cams = np.asarray(as_tensor(g_camids).cpu()).reshape(-1)
    if pids.shape != cams.shape:
        raise ValueError(f"g_pids has {pids.size} entries but g_camids has {cams.size}")
    candidates = np.flatnonzero(np.isin(cams, SYSU_GALLERY_CAMERAS[mode]))
    if candidates.size == 0:
        raise ValueError(
            f"no gallery image from the {mode}-search cameras {SYSU_GALLERY_CAMERAS[mode]} "
            f"(0-based); the gallery has cameras {sorted(set(cams.tolist()))}"
        )
    rng = np.random.default_rng([seed, trial])
    random_key = rng.random(candidates.size)
    # group by (identity, camera), random order inside each group
    order = candidates[np.lexsort((random_key, cams[candidates], pids[candidates]))]
    group = np.stack([pids[order], cams[order]], axis=1)
    starts = np.flatnonzero(np.r_[True, np.any(group[1:] != group[:-1], axis=1)])
    position_in_group = np.arange(order.size) - np.repeat(starts, np.diff(np.r_[starts, order.size]))
    chosen = order[position_in_group < num_shots]
    return chosen[np.lexsort((chosen, cams[chosen], pids[chosen]))]


def evaluate_sysu_trials(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    mode: str = "all",
    num_trials: int = 10,
    num_shots: int = 1,
    seed: int = 0,
    max_rank: int = 20,
) -> dict:
    """The SYSU-MM01 protocol: ``num_trials`` random galleries, metrics averaged (:func:`summarize_trials`).

    ``distmat`` is (num_query, num_full_gallery) against *all* visible test images; each trial selects the
    columns of its sampled gallery.
    """
    dist = as_tensor(distmat)
    g_pids_t, g_cams_t = as_tensor(g_pids), as_tensor(g_camids)
    results = []
    for trial in range(num_trials):
        columns = sample_sysu_gallery(g_pids_t, g_cams_t, mode, trial, num_shots, seed)
        cols = as_tensor(columns, dist.device)
        results.append(
            evaluate_sysu(
                dist.index_select(1, cols),
                q_pids,
                g_pids_t[columns],
                q_camids,
                g_cams_t[columns],
                max_rank,
            )
        )
    return summarize_trials(results)


def evaluate_regdb(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, max_rank: int = 20) -> dict:
    """RegDB metrics of one split: nothing is removed from the gallery (as in the DDAG code)."""
    q_cams = np.zeros(len(as_tensor(q_pids)), dtype=np.int64)
    g_cams = np.ones(len(as_tensor(g_pids)), dtype=np.int64)
    return rank_metrics(distmat, q_pids, g_pids, q_cams, g_cams, max_rank, 128, remove_nothing)


def evaluate_regdb_trials(
    distmats: Sequence[ArrayLike],
    q_pids: Sequence[ArrayLike],
    g_pids: Sequence[ArrayLike],
    max_rank: int = 20,
) -> dict:
    """Average of :func:`evaluate_regdb` over the splits (one distance matrix and label pair per split).

    The direction is whatever the matrices encode: visible queries x thermal gallery or the reverse.
    """
    if not len(distmats) == len(q_pids) == len(g_pids) or len(distmats) == 0:
        raise ValueError(
            f"need one (distmat, q_pids, g_pids) per split, got {len(distmats)}, {len(q_pids)}, {len(g_pids)}"
        )
    results = [evaluate_regdb(d, q, g, max_rank) for d, q, g in zip(distmats, q_pids, g_pids)]
    return summarize_trials(results)


def split_vehicleid(pids: ArrayLike, trial: int = 0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(query indices, gallery indices): one random gallery image per vehicle, all others are queries."""
    labels = np.asarray(as_tensor(pids).cpu()).reshape(-1)
    rng = np.random.default_rng([seed, trial])
    order = np.lexsort((rng.random(labels.size), labels))  # by vehicle, random inside
    first_of_vehicle = np.r_[True, labels[order][1:] != labels[order][:-1]]
    gallery = np.sort(order[first_of_vehicle])
    query = np.sort(order[~first_of_vehicle])
    return query, gallery


def evaluate_vehicleid_trials(
    distances: ArrayLike | Callable[[np.ndarray, np.ndarray], ArrayLike],
    pids: ArrayLike,
    num_trials: int = 10,
    seed: int = 0,
    max_rank: int = 20,
) -> dict:
    """The VehicleID random-gallery protocol, averaged over ``num_trials`` seeded splits.

    ``distances`` is either the (N, N) distance matrix among the N test images, or a function
    ``(query_indices, gallery_indices) -> (num_query, num_gallery)`` distances (cheaper for large test sets:
    the gallery has one image per vehicle).
    """
    labels = as_tensor(pids).cpu()
    results = []
    for trial in range(num_trials):
        query, gallery = split_vehicleid(labels, trial, seed)
        if callable(distances):
            dist = distances(query, gallery)
        else:
            full = as_tensor(distances)
            q_idx, g_idx = as_tensor(query, full.device), as_tensor(gallery, full.device)
            dist = full.index_select(0, q_idx).index_select(1, g_idx)
        q_cams, g_cams = np.zeros(len(query), dtype=np.int64), np.ones(len(gallery), dtype=np.int64)
        results.append(
            rank_metrics(dist, labels[query], labels[gallery], q_cams, g_cams, max_rank, 128, remove_nothing)
        )
    return summarize_trials(results)


def summarize_trials(results: Sequence[dict]) -> dict:
    """Mean over trials of ``cmc``, ``mAP``, ``mINP``, plus ``rank1/5/10/20`` and a ``std`` dict.

    ``std`` is the sample standard deviation over trials (0 for a single trial) of the scalar metrics.
    """
    cmc = np.stack([r["cmc"] for r in results])  # (trials, max_rank)
    scalars = {f"rank{k}": cmc[:, k - 1] for k in REPORTED_RANKS if k <= cmc.shape[1]}
    scalars["mAP"] = np.array([r["mAP"] for r in results])
    scalars["mINP"] = np.array([r["mINP"] for r in results])
    ddof = 1 if len(results) > 1 else 0
    summary: dict = {"cmc": cmc.mean(axis=0)}
    summary.update({name: float(values.mean()) for name, values in scalars.items()})
    summary["std"] = {name: float(values.std(ddof=ddof)) for name, values in scalars.items()}
    summary["num_trials"] = len(results)
    summary["trials"] = list(results)
    return summary
