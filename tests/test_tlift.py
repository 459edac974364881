"""TLift (Liao & Shao 2020, Section 4, Eq. 3) against a loop transcription of the paper's definition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reidbook.evaluation.tlift import tlift


def naive_tlift(score, q_cams, q_times, g_cams, g_times, tau, sigma, K, alpha):
    """Section 4 read literally, one query, one gallery camera and one gallery image at a time."""
    out = np.zeros_like(score, dtype=np.float64)
    for a in range(len(q_cams)):
        same_camera = [b for b in range(len(q_cams)) if q_cams[b] == q_cams[a]]
        nearby = [b for b in same_camera if abs(q_times[a] - q_times[b]) < tau]  # R, A included
        for camera in sorted(set(g_cams.tolist())):
            gallery = [x for x in range(len(g_cams)) if g_cams[x] == camera]
            pairs = sorted(((score[b, x], x) for b in nearby for x in gallery), reverse=True)
            pivots = [x for _, x in pairs[:K]]
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
