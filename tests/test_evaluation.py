"""Ranking metrics, protocols, distances and the pairwise path, against hand cases and naive loops."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reidbook.evaluation import (
    cosine_distance,
    euclidean_distance,
    evaluate_rank,
    evaluate_regdb,
    evaluate_regdb_trials,
    evaluate_sysu,
    evaluate_sysu_trials,
    evaluate_vehicleid_trials,
    flip_average,
    pairwise_distance_matrix,
    sample_sysu_gallery,
    split_vehicleid,
)


def naive_metrics(distmat, q_pids, g_pids, q_camids, g_camids, max_rank, remove_fn, identity_once=False):
    """Per-query transcription of the torchreid / DDAG loops (stable argsort for defined ties)."""
    cmcs, aps, inps = [], [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        kept = order[~remove_fn(q_pids[i], q_camids[i], g_pids[order], g_camids[order])]
        matches = (g_pids[kept] == q_pids[i]).astype(int)
        if not matches.any():
            continue
        ranked_ids = g_pids[kept]
        if identity_once:
            _, first = np.unique(ranked_ids, return_index=True)
            ranked_ids = ranked_ids[np.sort(first)]
        first_hit = int(np.flatnonzero(ranked_ids == q_pids[i])[0])
        cmcs.append((np.arange(max_rank) >= first_hit).astype(float))
        hit_ranks = np.flatnonzero(matches) + 1
        aps.append(np.mean(np.arange(1, len(hit_ranks) + 1) / hit_ranks))
        inps.append(len(hit_ranks) / hit_ranks[-1])
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def standard_rule(q_pid, q_cam, g_pids, g_cams):
    return (g_pids == q_pid) & (g_cams == q_cam)


def sysu_rule(q_pid, q_cam, g_pids, g_cams):
    return (q_cam == 2) & (g_cams == 1)


def random_problem(seed, num_q=40, num_g=150, num_ids=25, num_cams=4, levels=None):
    rng = np.random.default_rng(seed)
    dist = rng.random((num_q, num_g)).astype(np.float32)
    if levels:  # coarse values: many exact ties
        dist = np.floor(dist * levels).astype(np.float32)
    return (
        dist,
        rng.integers(0, num_ids, num_q),
        rng.integers(0, num_ids + 5, num_g),
        rng.integers(0, num_cams, num_q),
        rng.integers(0, num_cams, num_g),
    )


# ---------------------------------------------------------------- evaluate_rank: hand cases


def test_hand_case_same_camera_exclusion_distractor_and_query_without_match():
    # gallery: pid  cam   (query A: pid 1 cam 0; B: pid 2 cam 0; C: pid 9, absent)
    g_pids = np.array([1, 2, 1, 0, 1])
    g_cams = np.array([0, 1, 1, 1, 2])
    dist = np.array(
        [
            [0.1, 0.2, 0.3, 0.4, 0.5],  # A: g0 removed (same pid+cam) -> kept g1 x, g2 v, g3 x, g4 v
            [0.5, 0.1, 0.2, 0.3, 0.4],  # B: g1 first and only match
            [0.1, 0.2, 0.3, 0.4, 0.5],  # C: no true match, skipped
        ]
    )
    out = evaluate_rank(dist, np.array([1, 2, 9]), g_pids, np.array([0, 0, 0]), g_cams, max_rank=5)
    # A: AP = (1/2 + 2/4) / 2 = 0.5, INP = 2/4; B: AP = INP = 1
    np.testing.assert_allclose(out["cmc"], [0.5, 1.0, 1.0, 1.0, 1.0])
    assert out["mAP"] == pytest.approx(0.75)
    assert out["mINP"] == pytest.approx(0.75)
    assert out["num_valid_queries"] == 2
    assert isinstance(out["mAP"], float) and isinstance(out["mINP"], float)


def test_ties_are_broken_by_gallery_index():
    dist = np.array([[0.5, 0.5, 0.9]])
    match_second = evaluate_rank(dist, [1], [2, 1, 3], [0], [1, 1, 1], max_rank=3)
    match_first = evaluate_rank(dist, [1], [1, 2, 3], [0], [1, 1, 1], max_rank=3)
    np.testing.assert_allclose(match_second["cmc"], [0.0, 1.0, 1.0])
    assert match_second["mAP"] == pytest.approx(0.5)
    np.testing.assert_allclose(match_first["cmc"], [1.0, 1.0, 1.0])
    assert match_first["mAP"] == pytest.approx(1.0)


def test_all_queries_invalid_raises_an_explaining_error():
    with pytest.raises(ValueError, match=r"not in the gallery at all \(e\.g\. pids \[7\]\)"):
        evaluate_rank(np.zeros((1, 2)), [7], [1, 2], [0], [1, 1], max_rank=2)
    with pytest.raises(ValueError, match=r"protocol removes them all \(e\.g\. \(pid, camid\) \[\(1, 0\)\]"):
        evaluate_rank(np.zeros((1, 2)), [1], [1, 2], [0], [0, 1], max_rank=2)


def test_shape_errors_name_the_argument():
    with pytest.raises(ValueError, match="g_camids has 2 entries"):
        evaluate_rank(np.zeros((1, 3)), [1], [1, 2, 3], [0], [0, 1])


def test_max_rank_is_clipped_to_gallery_size_with_a_warning():
    with pytest.warns(UserWarning, match="max_rank reduced"):
        out = evaluate_rank(np.array([[0.2, 0.1]]), [1], [1, 2], [0], [1, 1], max_rank=50)
    np.testing.assert_allclose(out["cmc"], [0.0, 1.0])


# ---------------------------------------------------------------- evaluate_rank vs the naive loop


@pytest.mark.parametrize("levels", [None, 6])
def test_matches_naive_loop_for_every_chunk_size_and_input_type(levels):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(0, levels=levels)
    cmc, mAP, mINP, valid = naive_metrics(dist, q_pids, g_pids, q_cams, g_cams, 20, standard_rule)
    inputs = [
        (dist, q_pids, g_pids, q_cams, g_cams),
        (torch.from_numpy(dist), torch.from_numpy(q_pids), g_pids, torch.from_numpy(q_cams), g_cams),
        (torch.from_numpy(dist).double(), q_pids, torch.from_numpy(g_pids), q_cams, torch.from_numpy(g_cams)),
    ]
    for args in inputs:
        for chunk_size in (1, 7, 1000):
            out = evaluate_rank(*args, max_rank=20, chunk_size=chunk_size)
            np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
            assert out["mAP"] == pytest.approx(mAP, abs=1e-12)
            assert out["mINP"] == pytest.approx(mINP, abs=1e-12)
            assert out["num_valid_queries"] == valid


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_negative_distances_zeros_and_low_precision_match_the_naive_loop(dtype):
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(4, levels=5)
    dist = (dist - 2.0).astype(np.float32)  # -2..2 with ties, like negated similarities
    dist[:, ::7] = -0.0
    dist[:, 3::7] = 0.0
    cmc, mAP, mINP, _ = naive_metrics(dist, q_pids, g_pids, q_cams, g_cams, 10, standard_rule)
    out = evaluate_rank(torch.from_numpy(dist).to(dtype), q_pids, g_pids, q_cams, g_cams, max_rank=10)
    np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
    assert out["mAP"] == pytest.approx(mAP, abs=1e-12)
    assert out["mINP"] == pytest.approx(mINP, abs=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    dist, q_pids, g_pids, q_cams, g_cams = random_problem(1, levels=8)
    cpu = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    gpu = evaluate_rank(torch.from_numpy(dist).cuda(), q_pids, g_pids, q_cams, g_cams, max_rank=20)
    np.testing.assert_allclose(gpu["cmc"], cpu["cmc"])
    assert gpu["mAP"] == pytest.approx(cpu["mAP"], abs=1e-12)


# ---------------------------------------------------------------- SYSU-MM01


def test_sysu_hand_case_room_rule_and_identity_once_cmc():
    g_pids = np.array([1, 3, 2, 2, 1, 1])
    g_cams = np.array([1, 1, 0, 3, 0, 4])
    row = np.array([0.1, 0.15, 0.2, 0.3, 0.4, 0.5])
    dist = np.stack([row, row])
    q_pids, q_cams = np.array([1, 1]), np.array([2, 5])  # cameras 3 and 6
    out = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    # query 0 (camera 3) drops g0 AND g1 (camera 2, any identity): kept ids 2 2 1 1 -> unique 2 1: rank 2
    # query 1 (camera 6) drops nothing: first match at rank 1
    np.testing.assert_allclose(out["cmc"], [0.5, 1.0, 1.0, 1.0])
    ap0, ap1 = (1 / 3 + 2 / 4) / 2, (1 / 1 + 2 / 5 + 3 / 6) / 3
    assert out["mAP"] == pytest.approx((ap0 + ap1) / 2)
    assert out["mINP"] == pytest.approx((2 / 4 + 3 / 6) / 2)
    standard = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    np.testing.assert_allclose(standard["cmc"], [1.0, 1.0, 1.0, 1.0])  # g0 (camera 2) is kept there


def test_sysu_matches_naive_ddag_style_loop():
    dist, q_pids, g_pids, _, g_cams = random_problem(2, num_q=30, num_g=120, levels=10)
    rng = np.random.default_rng(3)
    q_cams = rng.choice([2, 5], size=len(q_pids))
    g_cams = rng.choice([0, 1, 3, 4], size=len(g_pids))
    cmc, mAP, mINP, valid = naive_metrics(dist, q_pids, g_pids, q_cams, g_cams, 20, sysu_rule, True)
    for chunk_size in (4, 128):
        out = evaluate_sysu(dist, q_pids, g_pids, q_cams, g_cams, chunk_size=chunk_size)
        np.testing.assert_allclose(out["cmc"], cmc, atol=1e-12)
        assert out["mAP"] == pytest.approx(mAP, abs=1e-12)
        assert out["mINP"] == pytest.approx(mINP, abs=1e-12)
        assert out["num_valid_queries"] == valid


def sysu_gallery_labels(seed=0, num_ids=12):
    rng = np.random.default_rng(seed)
    pids, cams = [], []
    for pid in range(num_ids):
        for cam in (0, 1, 2, 3, 4, 5):
            count = int(rng.integers(0, 15))  # some (identity, camera) pairs are empty
            pids += [pid] * count
            cams += [cam] * count
    return np.array(pids), np.array(cams)


@pytest.mark.parametrize("mode, cameras", [("all", {0, 1, 3, 4}), ("indoor", {0, 1})])
def test_sysu_single_shot_gallery_has_one_image_per_identity_camera(mode, cameras):
    pids, cams = sysu_gallery_labels()
    chosen = sample_sysu_gallery(pids, cams, mode=mode, trial=3, seed=1)
    expected_groups = {(p, c) for p, c in zip(pids, cams) if c in cameras}
    chosen_groups = list(zip(pids[chosen], cams[chosen]))
    assert len(chosen_groups) == len(set(chosen_groups)) == len(expected_groups)
    assert set(chosen_groups) == expected_groups
    np.testing.assert_array_equal(chosen, sample_sysu_gallery(pids, cams, mode=mode, trial=3, seed=1))
    assert not np.array_equal(chosen, sample_sysu_gallery(pids, cams, mode=mode, trial=4, seed=1))


def test_sysu_multi_shot_takes_up_to_ten_per_identity_camera():
    pids, cams = sysu_gallery_labels()
    chosen = sample_sysu_gallery(pids, cams, mode="all", num_shots=10)
    assert len(set(chosen)) == len(chosen)
    for p, c in {(p, c) for p, c in zip(pids, cams) if c in (0, 1, 3, 4)}:
        available = int(((pids == p) & (cams == c)).sum())
        assert int(((pids[chosen] == p) & (cams[chosen] == c)).sum()) == min(10, available)


def test_sysu_trials_average_the_sampled_galleries():
    g_pids, g_cams = sysu_gallery_labels(seed=4)
    rng = np.random.default_rng(5)
    q_pids, q_cams = rng.integers(0, 12, 25), rng.choice([2, 5], 25)
    dist = rng.random((25, len(g_pids)))
    summary = evaluate_sysu_trials(dist, q_pids, g_pids, q_cams, g_cams, num_trials=3, seed=7)
    per_trial = []
    for trial in range(3):
        cols = sample_sysu_gallery(g_pids, g_cams, "all", trial, 1, 7)
        per_trial.append(evaluate_sysu(dist[:, cols], q_pids, g_pids[cols], q_cams, g_cams[cols]))
    assert summary["mAP"] == pytest.approx(np.mean([r["mAP"] for r in per_trial]))
    assert summary["rank1"] == pytest.approx(np.mean([r["cmc"][0] for r in per_trial]))
    assert summary["std"]["mINP"] == pytest.approx(np.std([r["mINP"] for r in per_trial], ddof=1))
    assert summary["num_trials"] == 3


# ---------------------------------------------------------------- RegDB and VehicleID


def test_regdb_keeps_every_gallery_image_and_averages_splits():
    dists, q_list, g_list = [], [], []
    for split in range(3):
        dist, q_pids, g_pids, _, _ = random_problem(10 + split, num_q=20, num_g=40, num_ids=10)
        dists.append(dist)
        q_list.append(q_pids)
        g_list.append(g_pids)
    never = lambda *args: np.zeros_like(args[2], dtype=bool)  # noqa: E731
    expected = [naive_metrics(d, q, g, q * 0, g * 0, 20, never) for d, q, g in zip(dists, q_list, g_list)]
    single = evaluate_regdb(dists[0], q_list[0], g_list[0])
    assert single["mAP"] == pytest.approx(expected[0][1], abs=1e-12)
    summary = evaluate_regdb_trials(dists, q_list, g_list)
    np.testing.assert_allclose(summary["cmc"], np.mean([e[0] for e in expected], axis=0), atol=1e-12)
    assert summary["mINP"] == pytest.approx(np.mean([e[2] for e in expected]), abs=1e-12)


def test_vehicleid_split_has_one_gallery_image_per_vehicle():
    pids = np.repeat(np.arange(30), np.random.default_rng(0).integers(2, 6, 30))
    query, gallery = split_vehicleid(pids, trial=2, seed=0)
    assert sorted(pids[gallery].tolist()) == list(range(30))
    assert np.intersect1d(query, gallery).size == 0
    assert len(query) + len(gallery) == len(pids)
    np.testing.assert_array_equal(gallery, split_vehicleid(pids, trial=2, seed=0)[1])
    assert not np.array_equal(gallery, split_vehicleid(pids, trial=3, seed=0)[1])


def test_vehicleid_trials_accept_a_matrix_or_a_function():
    rng = np.random.default_rng(1)
    pids = np.repeat(np.arange(20), 4)
    feats = rng.normal(size=(80, 6)) + pids[:, None] * 0.3
    full = euclidean_distance(feats, feats)
    from_matrix = evaluate_vehicleid_trials(full, pids, num_trials=3)
    from_fn = evaluate_vehicleid_trials(
        lambda q, g: euclidean_distance(feats[q], feats[g]), pids, num_trials=3
    )
    query, gallery = split_vehicleid(pids, trial=0)
    never = lambda *args: np.zeros_like(args[2], dtype=bool)  # noqa: E731
    first = naive_metrics(full[query][:, gallery], pids[query], pids[gallery], query * 0, gallery, 20, never)
    assert from_matrix["trials"][0]["mAP"] == pytest.approx(first[1], abs=1e-12)
    assert from_fn["mAP"] == pytest.approx(from_matrix["mAP"], abs=1e-6)


# ---------------------------------------------------------------- distances, flip, pairwise


def test_distances_match_naive_formulas_and_keep_the_input_type():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3))
    naive_sq = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    naive_cos = 1 - (a @ b.T) / np.linalg.norm(a, axis=1)[:, None] / np.linalg.norm(b, axis=1)[None, :]
    sq = euclidean_distance(a, b)
    assert isinstance(sq, np.ndarray)
    np.testing.assert_allclose(sq, naive_sq, atol=1e-10)
    np.testing.assert_allclose(euclidean_distance(a, b, squared=False), np.sqrt(naive_sq), atol=1e-10)
    cos = cosine_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert isinstance(cos, torch.Tensor)
    np.testing.assert_allclose(cos.numpy(), naive_cos, atol=1e-10)
    with pytest.raises(ValueError, match=r"\(n, d\) and \(m, d\)"):
        euclidean_distance(a, b[:, :2])


def test_flip_average_is_mean_of_both_views_and_restores_training_mode():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Dropout(0.5), torch.nn.Flatten())
    model.train()
    images = torch.randn(2, 3, 6, 5)
    out = flip_average(model, images)
    assert model.training
    model.eval()
    expected = (model(images) + model(torch.flip(images, dims=[3]))) / 2
    torch.testing.assert_close(out, expected)


def map_score(q_maps, g_maps):
    """A toy pair score on feature maps (B, C, H, W): best local cosine match, averaged over query cells."""
    q = torch.nn.functional.normalize(q_maps.flatten(2), dim=1)  # (q, C, HW)
    g = torch.nn.functional.normalize(g_maps.flatten(2), dim=1)  # (g, C, HW)
    local = torch.einsum("qci,gcj->qgij", q, g)
    return local.amax(dim=3).mean(dim=2)  # (q, g)


def test_pairwise_chunks_match_one_shot():
    torch.manual_seed(0)
    q_maps, g_maps = torch.randn(11, 4, 3, 2), torch.randn(17, 4, 3, 2)
    one_shot = -map_score(q_maps, g_maps)
    chunked = pairwise_distance_matrix(map_score, q_maps, g_maps, q_chunk=3, g_chunk=5, progress=False)
    torch.testing.assert_close(chunked, one_shot)
    one_minus = pairwise_distance_matrix(
        map_score, q_maps, g_maps, q_chunk=4, conversion="one_minus", progress=False
    )
    torch.testing.assert_close(one_minus, 1 - map_score(q_maps, g_maps))


def test_pairwise_rejects_a_score_of_the_wrong_shape():
    with pytest.raises(ValueError, match="score_fn returned shape"):
        pairwise_distance_matrix(
            lambda q, g: q @ g.T[:, :1], torch.ones(3, 2), torch.ones(4, 2), progress=False
        )
