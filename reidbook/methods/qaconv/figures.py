"""Chapter 6's figures and measurements for QAConv: what TLift sees (Eq. 3's temporal probability against
time), correspondence maps of true matches and hard negatives (the paper's Fig. 2), and what matching every
pair costs against comparing embeddings."""

from __future__ import annotations

import time
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.figure import Figure
from torch import Tensor

from ... import viz
from ...data import ReIDDataset
from ...evaluation.evaluators import TestSplit
from ...evaluation.tlift import temporal_probability


def _labels(records: Sequence) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r.pid for r in records]), np.array([r.camid for r in records]),
            np.array([np.nan if r.time is None else r.time for r in records], dtype=float))


def queries_with_matches(dataset: ReIDDataset, count: int, seed: int) -> np.ndarray:
    """``count`` query indices, drawn with ``seed``, whose identity has a gallery image in another camera."""
    (q_pids, q_cams, _), (g_pids, g_cams, _) = _labels(dataset.query), _labels(dataset.gallery)
    valid = [i for i in range(len(q_pids)) if ((g_pids == q_pids[i]) & (g_cams != q_cams[i])).any()]
    return np.random.default_rng(seed).choice(valid, size=count, replace=False)


def plot_tlift_evidence(distances: Tensor, dataset: ReIDDataset, shown: Sequence[int], *, tau: float,
                        sigma: float, K: int) -> Figure:
    """For each query in ``shown``: Eq. 3's temporal probability p_t of every gallery image of the camera
    holding most of the query's true matches, against the image's time (true matches in green, the query's
    own time as a grey line), computed from the scores ``1 - distances``."""
    (q_pids, q_cams, q_times), (g_pids, g_cams, g_times) = _labels(dataset.query), _labels(dataset.gallery)
    p_t = temporal_probability(1.0 - torch.as_tensor(distances, dtype=torch.float64), torch.as_tensor(q_cams),
                               torch.as_tensor(q_times), torch.as_tensor(g_cams), torch.as_tensor(g_times),
                               tau=tau, sigma=sigma, K=K).numpy()
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3), layout="constrained", sharey=True,
                             squeeze=False)
    for ax, i in zip(axes[0], shown):
        other = (g_pids == q_pids[i]) & (g_cams != q_cams[i])
        camera = np.bincount(g_cams[other]).argmax()
        in_camera = g_cams == camera
        ax.scatter(g_times[in_camera] / 60, p_t[i, in_camera], s=6, color="0.6", label="gallery image")
        ax.scatter(g_times[in_camera & other] / 60, p_t[i, in_camera & other], s=30, color=viz.MATCH_COLOR,
                   label="true match")
        ax.axvline(q_times[i] / 60, color="0.3", lw=1)
        ax.set(title=f"query {i} (camera {q_cams[i]}) → camera {camera}", xlabel="time (minutes)")
    axes[0, 0].set_ylabel("$p_t$ (Eq. 3)")
    axes[0, 0].legend(fontsize=8)
    return fig


def hardest_pairs(distances: Tensor, dataset: ReIDDataset,
                  shown: Sequence[int]) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """For each query in ``shown``: (query, gallery) of its best-scored true match in another camera, and
    of its best-scored wrong identity (a hard negative)."""
    (q_pids, q_cams, _), (g_pids, g_cams, _) = _labels(dataset.query), _labels(dataset.gallery)
    dist = np.asarray(distances)
    positives, negatives = [], []
    for i in shown:
        for mask, found in (((g_pids == q_pids[i]) & (g_cams != q_cams[i]), positives),
                            ((g_pids != q_pids[i]) & (g_pids >= 0), negatives)):
            candidates = np.flatnonzero(mask)
            found.append((int(i), int(candidates[np.argmin(dist[i, candidates])])))
    return positives, negatives


def plot_correspondence_pairs(split: TestSplit, dataset: ReIDDataset, positives: Sequence[tuple[int, int]],
                              negatives: Sequence[tuple[int, int]]) -> list[Figure]:
    """Fig. 2: the best match of every query location in the gallery image, for true matches and for hard
    negatives, on one colour scale; the strongest half of the locations is drawn."""
    matcher = split.model.matcher
    q_maps, g_maps = split.query_feats, split.gallery_feats
    distances = split.role_distances("query", "gallery")
    groups = {True: positives, False: negatives}
    found = {same: [matcher.correspondences(q_maps[i], g_maps[j]) for i, j in pairs]
             for same, pairs in groups.items()}
    similarities = torch.stack([c.similarity for group in found.values() for c in group])
    scale = {"vmin": float(similarities.min()), "vmax": float(similarities.max())}
    figures = []
    for same, pairs in groups.items():
        drawn = [(dataset.query[i], dataset.gallery[j], c) for (i, j), c in zip(pairs, found[same])]
        titles = [f"query {i}: score {1 - float(distances[i, j]):.4f}" for i, j in pairs]
        fig = viz.plot_correspondences(drawn, titles=titles, matches=[same] * len(pairs),
                                       top=q_maps.shape[2] * q_maps.shape[3] // 2, **scale)
        fig.suptitle("true matches" if same else "hard negatives")
        figures.append(fig)
    return figures


def _seconds(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def matching_cost(qaconv: TestSplit, embeddings: TestSplit, *, queries: int = 128,
                  chunks: Sequence[int] = (512, 2048, 8192)) -> pd.DataFrame:
    """Pairs scored per second by QAConv's matcher for several ``pairs_per_chunk`` (and the size of the
    similarity block each holds), against squared Euclidean distances of the baseline's embeddings, for
    ``queries`` queries against the whole gallery; with the time each rate implies for this test set and
    for Market-1501's 3,368 x 15,913 pairs."""
    matcher = qaconv.model.matcher
    q_maps, g_maps = qaconv.query_feats[:queries], qaconv.gallery_feats
    hw = q_maps.shape[2] * q_maps.shape[3]
    pairs = len(q_maps) * len(g_maps)
    rows = {}
    original = matcher.pairs_per_chunk
    try:
        for chunk in chunks:
            matcher.pairs_per_chunk = chunk
            seconds = _seconds(lambda: qaconv.distances(q_maps, g_maps))
            rows[f"QAConv, {hw} locations, pairs_per_chunk={chunk}"] = {
                "pairs/s": pairs / seconds, "similarity block (MiB)": chunk * hw * hw * 4 / 2**20}
    finally:
        matcher.pairs_per_chunk = original
    q_emb = embeddings.query_feats[:queries]
    seconds = _seconds(lambda: embeddings.distances(q_emb, embeddings.gallery_feats))
    rows[f"baseline, {q_emb.shape[1]}-d embeddings"] = {"pairs/s": pairs / seconds}
    cost = pd.DataFrame(rows).T
    cost["seconds for this test set"] = len(qaconv.query_feats) * len(g_maps) / cost["pairs/s"]
    cost["seconds for Market-1501 (3,368 × 15,913)"] = 3368 * 15913 / cost["pairs/s"]
    return cost
