"""k-reciprocal re-ranking against a plain numpy transcription of the reference algorithm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbook.evaluation import euclidean_distance, re_ranking


def naive_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value):
    """Straight loops over the reference steps (Zhong et al. 2017, re_ranking.py), dense matrices."""
    full = np.block([[q_q, q_g], [q_g.T, g_g]])
    full = np.power(full, 2).astype(np.float32)
    dist = (full / full.max(axis=0)).T  # column-max normalisation, then transpose
    num_all, num_query = len(dist), len(q_g)
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        return np.array([j for j in rank[i, : k + 1] if i in rank[j, : k + 1]], dtype=int)

    half = int(np.around(k1 / 2))
    V = np.zeros_like(dist)
    for i in range(num_all):
        own = reciprocal(i, k1)
        expansion = list(own)
        for candidate in own:
            theirs = reciprocal(candidate, half)
            if len(np.intersect1d(theirs, own)) > 2.0 / 3 * len(theirs):
                expansion += list(theirs)
        expansion = np.unique(expansion)
        weights = np.exp(-dist[i, expansion])
        V[i, expansion] = weights / weights.sum()
    if k2 != 1:
        V = np.stack([V[rank[i, :k2]].mean(axis=0) for i in range(num_all)])
    jaccard = np.zeros((num_query, num_all), dtype=np.float32)
    for i in range(num_query):
        for j in range(num_all):
            shared = np.minimum(V[i], V[j]).sum()
            jaccard[i, j] = 1 - shared / (2.0 - shared)
    final = jaccard * (1 - lambda_value) + dist[:num_query] * lambda_value
    return final[:, num_query:]


def clustered_problem(seed, num_q=24, num_g=60):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(10, 8))
    feats = centres[rng.integers(0, 10, num_q + num_g)] + 0.6 * rng.normal(size=(num_q + num_g, 8))
    q, g = feats[:num_q], feats[num_q:]
    return euclidean_distance(q, g), euclidean_distance(q, q), euclidean_distance(g, g)


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (7, 3, 0.5), (5, 1, 0.0)])
def test_matches_the_numpy_transcription(k1, k2, lambda_value):
    q_g, q_q, g_g = clustered_problem(0)
    expected = naive_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value)
    assert got.shape == q_g.shape and isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_memory_bounds_and_input_types_do_not_change_the_result():
    q_g, q_q, g_g = clustered_problem(1)
    reference = re_ranking(q_g, q_q, g_g)
    tight = re_ranking(q_g, q_q, g_g, chunk_size=5, max_pairs=50)
    from_torch = re_ranking(*(torch.from_numpy(x).float() for x in (q_g, q_q, g_g)))
    np.testing.assert_allclose(tight, reference, atol=1e-6)
    np.testing.assert_allclose(from_torch, reference, atol=1e-6)


def test_re_ranking_changes_the_order():
    q_g, q_q, g_g = clustered_problem(2)
    assert not np.array_equal(np.argsort(re_ranking(q_g, q_q, g_g), axis=1), np.argsort(q_g, axis=1))


def test_rejects_inconsistent_shapes_and_parameters():
    q_g, q_q, g_g = clustered_problem(3)
    with pytest.raises(ValueError, match="g_g_dist"):
        re_ranking(q_g, q_q, g_g[:-1, :-1])
    with pytest.raises(ValueError, match="k1"):
        re_ranking(q_g, q_q, g_g, k1=500)
