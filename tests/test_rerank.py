"""k-reciprocal re-ranking against plain numpy transcriptions of the reference algorithm (Zhong et al. 2017,
squared distances) and of the QAConv authors' re-ranking (distances as given, float16 encodings)."""

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


def naive_qaconv_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value, dtype=np.float16):
    """The QAConv authors' re-ranking (``reranking`` in reid/evaluators.py of ShengcaiLiao/QAConv), by loops:
    the reference steps on the distances as given (float32, not squared), with V, its query expansion, the
    Jaccard accumulator and the Jaccard distance held in ``dtype`` (theirs: float16)."""
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float32)  # no squaring
    dist = (full / full.max(axis=0)).T
    num_all, num_query = len(dist), len(q_g)
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        return np.array([j for j in rank[i, : k + 1] if i in rank[j, : k + 1]], dtype=int)

    half = int(np.around(k1 / 2))
    V = np.zeros((num_all, num_all), dtype=dtype)
    for i in range(num_all):
        own = reciprocal(i, k1)
        expansion = list(own)
        for candidate in own:
            theirs = reciprocal(candidate, half)
            if len(np.intersect1d(theirs, own)) > 2.0 / 3 * len(theirs):
                expansion += list(theirs)
        expansion = np.unique(np.array(expansion, dtype=int))  # may be empty: i is not its own neighbour
        weights = np.exp(-dist[i, expansion])  # float32
        V[i, expansion] = weights / weights.sum()  # stored in dtype
    if k2 != 1:
        V_qe = np.zeros_like(V)
        for i in range(num_all):
            V_qe[i] = np.mean(V[rank[i, :k2]], axis=0)  # float16: float32 accumulation, float16 result
        V = V_qe
    jaccard = np.zeros((num_query, num_all), dtype=dtype)
    for i in range(num_query):
        temp_min = np.zeros(num_all, dtype=dtype)
        for k in np.nonzero(V[i])[0]:
            for j in np.nonzero(V[:, k])[0]:
                temp_min[j] = temp_min[j] + np.minimum(V[i, k], V[j, k])  # sums in dtype
        jaccard[i] = dtype(1) - temp_min / (dtype(2) - temp_min)
    final = jaccard * dtype(1 - lambda_value) + dist[:num_query] * np.float32(lambda_value)
    return final[:, num_query:]


def qaconv_like_problem(seed, num_q=6, num_g=20):
    """Pair distances in (0, 1) as QAConv's evaluation gives them, 1 - sigmoid(score / 10); not symmetric."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8))
    feats = centres[rng.integers(0, 4, num_q + num_g)] + 0.5 * rng.normal(size=(num_q + num_g, 8))
    scores = feats @ feats.T + rng.normal(scale=2.0, size=(num_q + num_g,) * 2)  # (N, N) logits
    dist = 1 / (1 + np.exp(scores / 10))
    return dist[:num_q, num_q:], dist[:num_q, :num_q], dist[num_q:, num_q:]


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


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (5, 3, 0.3), (4, 1, 0.5)])
def test_square_false_matches_the_qaconv_authors_re_ranking_within_float16(k1, k2, lambda_value):
    q_g, q_q, g_g = qaconv_like_problem(0)
    expected = naive_qaconv_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value)
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value, square=False)
    # the same steps in float32 agree to float32 precision; their float16 V and Jaccard distance (spacing
    # 2**-11 near 1, sums of up to a few dozen rounded terms) to a few thousandths
    in_float32 = naive_qaconv_re_ranking(q_g, q_q, g_g, k1, k2, lambda_value, dtype=np.float32)
    np.testing.assert_allclose(got, in_float32, atol=1e-6)
    np.testing.assert_allclose(got, expected, atol=3e-3)
    squared = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lambda_value, square=True)
    assert np.abs(squared - expected).max() > 3e-2  # the squaring pipeline is measurably another one


def test_square_true_squares_and_square_false_takes_distances_as_given():
    q_g, q_q, g_g = clustered_problem(4)
    squared_inputs = re_ranking(q_g**2, q_q**2, g_g**2, k1=7, k2=3, square=False)
    np.testing.assert_allclose(squared_inputs, re_ranking(q_g, q_q, g_g, k1=7, k2=3, square=True), atol=1e-6)
    np.testing.assert_allclose(
        re_ranking(q_g, q_q, g_g, k1=7, k2=3), naive_re_ranking(q_g, q_q, g_g, 7, 3, 0.3), atol=1e-6
    )  # square=True is the default


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
