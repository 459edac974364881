"""TLift (Liao & Shao 2020, Section 4, Eq. 3) against a loop transcription of the paper's definition, and
hand-computed cases for the two places where we differ from the authors' code (ties at the K-th pivot, a
query camera absent from the gallery)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reidbook.evaluation.tlift import tlift, top_k_first_come


def naive_tlift(score, q_cams, q_times, g_cams, g_times, tau, sigma, K, alpha):
    """Section 4 read literally, one query, one gallery camera and one gallery image at a time; the K best
    pairs are taken by score, ties in row-major order (lower query index, then lower gallery index)."""
    out = np.zeros_like(score, dtype=np.float64)
    for a in range(len(q_cams)):
        same_camera = [b for b in range(len(q_cams)) if q_cams[b] == q_cams[a]]
        nearby = [b for b in same_camera if abs(q_times[a] - q_times[b]) < tau]  # R, A included
        for camera in sorted(set(g_cams.tolist())):
            gallery = [x for x in range(len(g_cams)) if g_cams[x] == camera]
            pairs = sorted((-score[b, x], b, x) for b in nearby for x in gallery)
            pivots = [x for _, _, x in pairs[:K]]
            for x in gallery:
                kernels = [math.exp(-((g_times[x] - g_times[p]) ** 2) / sigma**2) for p in pivots]
                p_t = sum(kernels) / len(pivots)
                out[a, x] = (p_t + alpha) * score[a, x]
    return out


def random_problem(seed: int = 0, num_query: int = 14, num_gallery: int = 25):
    rng = np.random.default_rng(seed)
    score = rng.random((num_query, num_gallery))
    q_cams, g_cams = rng.integers(0, 2, num_query), rng.integers(0, 3, num_gallery)
    q_times, g_times = rng.uniform(0, 300, num_query), rng.uniform(0, 300, num_gallery)
    return score, q_cams, q_times, g_cams, g_times


@pytest.mark.parametrize("K", [1, 4, 1000])  # 1000: fewer pairs than K, every pair is a pivot
def test_tlift_equals_loop_transcription_of_eq3(K: int) -> None:
    score, q_cams, q_times, g_cams, g_times = random_problem()
    params = {"tau": 60.0, "sigma": 40.0, "K": K, "alpha": 0.1}
    expected = naive_tlift(score, q_cams, q_times, g_cams, g_times, **params)
    refined = tlift(score, q_cams, q_times, g_cams, g_times, **params)
    assert isinstance(refined, np.ndarray) and refined.dtype == score.dtype
    np.testing.assert_allclose(refined, expected, rtol=1e-10)
    assert not np.allclose(refined, (1.0 + params["alpha"]) * score)  # the lifting did something


@pytest.mark.parametrize("K", [1, 3, 7])
def test_tlift_with_many_ties_equals_the_loop_transcription(K: int) -> None:
    score, q_cams, q_times, g_cams, g_times = random_problem(seed=3, num_query=16, num_gallery=30)
    score = np.round(score * 3) / 3  # four levels: ties at almost every K-th pivot
    params = {"tau": 80.0, "sigma": 50.0, "K": K, "alpha": 0.1}
    expected = naive_tlift(score, q_cams, q_times, g_cams, g_times, **params)
    np.testing.assert_allclose(tlift(score, q_cams, q_times, g_cams, g_times, **params), expected, rtol=1e-10)


def test_top_k_first_come_takes_the_lower_columns_among_ties() -> None:
    values = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.5], [0.3, 0.2, 0.1, 0.0, 0.4], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert top_k_first_come(values, 2).tolist() == [[0, 1], [0, 4], [0, 1]]
    assert top_k_first_come(values, 3).tolist() == [[0, 1, 2], [0, 1, 4], [0, 1, 2]]
    assert top_k_first_come(values, 5).tolist() == [[0, 1, 2, 3, 4]] * 3
    masked = torch.tensor([[float("-inf"), 0.2, float("-inf"), float("-inf")]])
    assert top_k_first_come(masked, 3).tolist() == [[0, 1, 2]]


def test_ties_at_the_kth_pivot_keep_exactly_k_pairs_in_row_major_order() -> None:
    """A (t=0) and B (t=10) walk together in camera 0. Their pairs with gallery camera 1, by score: (A, X0)
    0.9, then (A, X1), (B, X0), (B, X2) all 0.5. With K = 2 the pivots are X0 and, of the tied pairs, the
    first in row-major order: (A, X1). The authors' code would keep all four tied pairs (X0, X1, X0, X2)."""
    q_cams, q_times = np.array([0, 0]), np.array([0.0, 10.0])
    g_cams, g_times = np.array([1, 1, 1]), np.array([0.0, 100.0, 200.0])
    score = np.array([[0.9, 0.5, 0.2], [0.5, 0.3, 0.5]])
    refined = tlift(score, q_cams, q_times, g_cams, g_times, tau=100, sigma=100, K=2, alpha=0.1)

    def kernel(dt: float) -> float:
        return math.exp(-(dt**2) / 100.0**2)

    p_t = [(kernel(t - 0.0) + kernel(t - 100.0)) / 2 for t in g_times]  # pivots X0 (t=0) and X1 (t=100)
    for a in range(2):  # both share R = {A, B}, hence the pivots
        np.testing.assert_allclose(refined[a], (np.array(p_t) + 0.1) * score[a], rtol=1e-12)
    authors_p_t = [(2 * kernel(t - 0.0) + kernel(t - 100.0) + kernel(t - 200.0)) / 4 for t in g_times]
    assert not np.allclose(refined[0], (np.array(authors_p_t) + 0.1) * score[0])


def test_equal_scores_make_the_first_k_gallery_images_the_pivots() -> None:
    """One query, ten gallery images at t = 0, 100, ..., 900 s, all scored 0.5: with K = 5 the pivots are the
    first five (t = 0 .. 400), so p_t is largest early (``torch.topk`` alone picks the last five here)."""
    g_times = np.arange(10) * 100.0
    score = np.full((1, 10), 0.5)
    refined = tlift(score, np.array([0]), np.array([0.0]), np.ones(10, dtype=int), g_times, sigma=100, K=5)
    p_t = [sum(math.exp(-((t - pivot) ** 2) / 100.0**2) for pivot in g_times[:5]) / 5 for t in g_times]
    np.testing.assert_allclose(refined[0], (np.array(p_t) + 0.1) * 0.5, rtol=1e-12)


def test_a_query_whose_camera_has_no_gallery_images_is_lifted() -> None:
    """Queries A (t=0) and B (t=10) come from camera 2; the gallery holds cameras 0 and 1 only. Their pivots
    (K = 1): B's match X1 in camera 1, A's match X3 in camera 0. The authors' code never visits camera 2
    (it loops over camera ids up to the gallery's largest) and leaves A at alpha * score, ranked as before."""
    q_cams, q_times = np.array([2, 2]), np.array([0.0, 10.0])
    g_cams, g_times = np.array([1, 1, 1, 0]), np.array([500.0, 505.0, 2000.0, 30.0])
    score = np.array([[0.5, 0.1, 0.6, 0.3], [0.1, 0.9, 0.1, 0.2]])
    refined = tlift(score, q_cams, q_times, g_cams, g_times, tau=100, sigma=100, K=1, alpha=0.1)
    expected_a = [
        (math.exp(-(5.0**2) / 100.0**2) + 0.1) * 0.5,  # X0, 5 s from the pivot X1
        (1.0 + 0.1) * 0.1,  # X1 is the pivot
        (math.exp(-(1495.0**2) / 100.0**2) + 0.1) * 0.6,  # X2, far from it
        (1.0 + 0.1) * 0.3,  # X3 is camera 0's pivot
    ]
    np.testing.assert_allclose(refined[0], expected_a, rtol=1e-12)
    assert refined[0].argmax() == 0 and (0.1 * score[0]).argmax() == 2  # lifted, unlike the authors' code


def test_tlift_torch_in_torch_out() -> None:
    score, q_cams, q_times, g_cams, g_times = random_problem(seed=1)
    expected = naive_tlift(score, q_cams, q_times, g_cams, g_times, tau=100, sigma=100, K=100, alpha=0.1)
    refined = tlift(
        torch.tensor(score, dtype=torch.float32),
        torch.tensor(q_cams),
        torch.tensor(q_times),
        torch.tensor(g_cams),
        torch.tensor(g_times),
    )
    assert isinstance(refined, torch.Tensor) and refined.dtype == torch.float32
    np.testing.assert_allclose(refined.numpy(), expected, rtol=1e-5)


def test_large_alpha_keeps_the_input_ranking() -> None:
    score, q_cams, q_times, g_cams, g_times = random_problem(seed=2)
    refined = tlift(score, q_cams, q_times, g_cams, g_times, tau=60, sigma=40, K=4, alpha=1e6)
    np.testing.assert_array_equal(np.argsort(-refined, axis=1), np.argsort(-score, axis=1))
    lifted = tlift(score, q_cams, q_times, g_cams, g_times, tau=60, sigma=40, K=4, alpha=0.1)
    assert not np.array_equal(np.argsort(-lifted, axis=1), np.argsort(-score, axis=1))


def test_pivots_of_a_nearby_person_lift_the_true_match() -> None:
    """Fig. 4: query A walks with B; B's best match B' lifts A' (near B' in time) above the impostor E."""
    q_cams, q_times = np.array([0, 0]), np.array([0.0, 10.0])  # A, B
    g_cams, g_times = np.array([1, 1, 1]), np.array([500.0, 505.0, 2000.0])  # A', B', E
    score = np.array([[0.5, 0.1, 0.6], [0.1, 0.9, 0.1]])
    refined = tlift(score, q_cams, q_times, g_cams, g_times, tau=100, sigma=100, K=1, alpha=0.1)
    assert score[0].argmax() == 2 and refined[0].argmax() == 0
    assert refined[0, 0] == pytest.approx((math.exp(-(5.0**2) / 100.0**2) + 0.1) * 0.5)
    assert refined[0, 2] == pytest.approx((math.exp(-(1495.0**2) / 100.0**2) + 0.1) * 0.6)


def test_tlift_rejects_mismatched_inputs() -> None:
    score, q_cams, q_times, g_cams, g_times = random_problem()
    with pytest.raises(ValueError, match="gallery cams and times"):
        tlift(score, q_cams, q_times, g_cams[:-1], g_times)
    with pytest.raises(ValueError, match="finite"):
        tlift(score, q_cams, np.full_like(q_times, np.nan), g_cams, g_times)
    with pytest.raises(ValueError, match="K must be"):
        tlift(score, q_cams, q_times, g_cams, g_times, K=0)
