"""Chapter 4 (IPAD): the recipe, the rows of Tables III / IV and the backbone group, the paper's numbers as
read back from the corrupt extraction, and the figure and measurement helpers of
``reidbook.methods.ipad.figures``, against naive transcriptions on tiny models, images and distances."""

from __future__ import annotations

import itertools

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from reidbook import methods
from reidbook.data import Record, ReIDDataset
from reidbook.evaluation import evaluators
from reidbook.evaluation.evaluators import Embedding, Evaluator, Pairwise
from reidbook.evaluation.ranking import evaluate_rank
from reidbook.methods.ipad import figures, tables
from reidbook.methods.ipad import self_channels as resolve_self_channels
from reidbook.models.backbones import Backbone
from reidbook.models.ipad import IPAD, IPADCriterion
from reidbook.paper_numbers import IPAD_TABLES
from reidbook.profiles import get_profile

matplotlib.use("Agg")

SMOKE = get_profile("smoke")  # 64 x 32 inputs
NUM_CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One thread: the machine is shared and these tensors are tiny."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_backbone() -> Backbone:
    """Four stages at strides 4, 8, 16, 16 (a ResNet with last stride 1), 32 channels out: 64 x 32 images
    give 4 x 2 maps."""

    def conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        layer = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        return nn.Sequential(layer, nn.BatchNorm2d(c_out), nn.ReLU())

    stages = [conv(8, 8, 1), conv(8, 16, 2), conv(16, 16, 2), conv(16, 32, 1)]
    return Backbone(conv(3, 8, 4), stages, out_channels=[8, 16, 16, 32], strides=[4, 8, 16, 16])


def build(**options) -> IPAD:
    recipe = methods.get("ipad")
    torch.manual_seed(0)
    resolved = recipe.resolve_options({"mutual_channels": 8, "squeeze": 4, **options})
    return recipe.build_model(small_backbone(), NUM_CLASSES, SMOKE, resolved)


@pytest.fixture(scope="module")
def model() -> IPAD:
    return build().eval()


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SMOKE.height, SMOKE.width, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------ recipe
def test_recipe_is_registered_and_judged_by_flip_averaged_pair_distances():
    recipe = methods.get("ipad")
    assert recipe.name == "ipad" and "ipad" in methods.names()
    measure = recipe.evaluator_for(recipe.options).measure
    assert isinstance(measure, Pairwise) and measure.flip
    assert recipe.profile_for(get_profile("paper")).epochs == 160
    assert recipe.profile_for(get_profile("paper")).milestones == (40, 70)
    assert recipe.profile_for(get_profile("cpu")) == get_profile("cpu")


def test_self_channels_auto_keeps_the_papers_compression_ratio():
    assert resolve_self_channels(small_backbone(), {"self_channels": "auto"}) == 32 // 4
    assert resolve_self_channels(small_backbone(), {"self_channels": 12}) == 12
    for bad in (0, "wide", 2.5, True):
        with pytest.raises(ValueError, match=f"self_channels must be a positive int or 'auto', got {bad!r}"):
            resolve_self_channels(small_backbone(), {"self_channels": bad})


def test_recipe_builds_each_variant_with_its_branches_and_loss_terms():
    expected = {"v1": ({"ce", "triplet", "mutual_triplet"}, False, True),
                "v2": ({"ce", "triplet", "self_ce", "self_triplet"}, True, False),
                "ipad": ({"ce", "triplet", "self_ce", "self_triplet", "mutual_triplet"}, True, True),
                "attention": ({"ce", "triplet", "self_ce", "self_triplet", "mutual_triplet"}, True, True)}
    recipe = methods.get("ipad")
    batch = {"img": images(8), "pid": torch.arange(4).repeat_interleave(2)}
    for variant, (terms, has_self, has_mutual) in expected.items():
        net = build(variant=variant).train()
        assert (net.self_branch is not None, net.mutual_branch is not None) == (has_self, has_mutual), variant
        criterion = recipe.build_criterion(net, NUM_CLASSES, recipe.resolve_options({}))
        assert isinstance(criterion, IPADCriterion)
        losses = criterion(net(batch["img"]), batch)
        assert set(losses) == terms, variant
        assert all(value.ndim == 0 and torch.isfinite(value) for value in losses.values())


def test_recipe_passes_widths_grid_and_fusion_to_the_model():
    net = build(self_channels=12, controller_grid=[2, 1], fusion_weights={"mutual": 2.0})
    assert net.self_branch.neck.num_features == 12
    assert net.self_branch.layer.controller.grid == (2, 1)
    assert net.self_branch.layer.controller.out_channels == 12 * 12 // 2  # C_t = c^2 / (gh gw)
    assert net.mutual_branch.layer.channels == 8
    assert net.fusion_weights == {"mutual": 2.0}


def test_recipe_refuses_an_unknown_variant():
    with pytest.raises(ValueError, match=r"IPAD's variant must be one of .*'v1'.*, got 'v3'"):
        build(variant="v3")


# -------------------------------------------------------------------------------- the paper's numbers
def test_table3_as_read_back_agrees_with_the_prose_of_section_iv_c():
    t3 = IPAD_TABLES["III"]
    gains = {"IPAD V1": (1.0, 0.5), "IPAD V2": (1.9, 1.9), "IPAD": (3.1, 2.0)}  # over the baseline (prose)
    for row, (map_gain, rank1_gain) in gains.items():
        assert t3[row]["mAP"] - t3["Baseline"]["mAP"] == pytest.approx(map_gain)
        assert t3[row]["rank-1"] - t3["Baseline"]["rank-1"] == pytest.approx(rank1_gain)
    assert t3["IPAD"] == IPAD_TABLES["V"]["IPAD"]  # Table V's row
    assert t3["IPAD"]["mAP"] - t3["attention version"]["mAP"] == pytest.approx(0.8)
    assert t3["IPAD"]["rank-1"] - t3["attention version"]["rank-1"] == pytest.approx(0.7)
    assert t3["Baseline"] != {"mAP": 64.6, "rank-1": 81.8}  # not the extraction's copy of DuATM's row


# -------------------------------------------------------------------------------------------------- tables
def test_table3_rows_train_the_papers_variants():
    rows = tables.table3_rows()
    assert [r.label for r in rows] == ["Baseline", "IPAD V1", "IPAD V2", "IPAD", "attention version"]
    assert [(r.method, r.options.get("variant")) for r in rows] == [
        ("baseline", None), ("ipad", "v1"), ("ipad", "v2"), ("ipad", None), ("ipad", "attention")]
    assert all(r.paper == IPAD_TABLES["III"][r.label] for r in rows)
    assert [r.label for r in tables.headline_rows(rows)] == ["Baseline", "IPAD"]


def test_backbone_rows_and_their_summary():
    rows = tables.backbone_rows(("vgg19_bn", "mobilenet_v2"))
    assert [(r.method, r.profile["backbone"]) for r in rows] == [
        ("baseline", "vgg19_bn"), ("ipad", "vgg19_bn"),
        ("baseline", "mobilenet_v2"), ("ipad", "mobilenet_v2")]
    metrics = {r.label: {"rank1": 0.5 + 0.1 * i, "mAP": 0.3 + 0.05 * i} for i, r in enumerate(rows)}
    summary = tables.backbone_summary(rows, metrics)
    assert summary.loc["vgg19_bn", "gain in rank-1"] == pytest.approx(10.0)
    assert summary.loc["mobilenet_v2", "gain in mAP"] == pytest.approx(5.0)
    assert summary.loc["mobilenet_v2", "ipad mAP"] == pytest.approx(100 * metrics[rows[3].label]["mAP"])


def test_vehicle_settings_are_square_unless_world_pretrained_and_wider_in_the_paper_profile():
    assert (tables.vehicle_profile(SMOKE).height, tables.vehicle_profile(SMOKE).width) == (64, 64)
    assert tables.vehicle_profile(get_profile("paper")).width == 256
    world_started = get_profile("smoke", init="world", pretrain={"method": "baseline"})
    assert tables.vehicle_profile(world_started) == world_started  # the shared backbone's input size
    assert tables.vehicle_options(get_profile("paper")) == {"mutual_channels": 256}
    assert tables.vehicle_options(get_profile("cpu")) == {}


def test_table4_ours_lays_out_the_evaluations_in_the_papers_columns():
    veri = {"IPAD": {"mAP": 0.5, "rank1": 0.6, "rank5": 0.7, "mINP": 0.1}}
    vehicleid = {"IPAD": {"small": {"mAP": 0.8, "rank1": 0.75}, "large": {"mAP": 0.4, "rank1": 0.3}},
                 "Baseline": {"small": {"mAP": 0.2, "rank1": 0.1}}}
    ours = tables.table4_ours(veri, vehicleid)
    assert ours["IPAD"] == {"VeRi mAP": 0.5, "VeRi rank-1": 0.6, "VeRi rank-5": 0.7,
                            "VehicleID small mAP": 0.8, "VehicleID small rank-1": 0.75,
                            "VehicleID large mAP": 0.4, "VehicleID large rank-1": 0.3}
    assert ours["Baseline"] == {"VehicleID small mAP": 0.2, "VehicleID small rank-1": 0.1}
    assert set(tables.table4_columns(ours)) <= set(IPAD_TABLES["IV"]["IPAD"])
    assert tables.table4_columns(ours)[:3] == ["VeRi mAP", "VeRi rank-1", "VeRi rank-5"]
    assert "VehicleID medium mAP" not in tables.table4_columns(ours)
    with pytest.raises(ValueError, match=r"VehicleID sizes must be among .*got \['huge'\]"):
        tables.table4_ours({}, {"IPAD": {"huge": {"mAP": 0.1, "rank1": 0.1}}})


# ---------------------------------------------------------------------------------------- the problem
def test_twin_pairs_are_an_identity_and_its_near_copy():
    pairs = figures.twin_pairs(3, seed=0)
    assert len(pairs) == 3
    for original, twin in pairs:
        assert twin.twin_of == original.pid and twin.twin_cue is not None
        assert twin.differing_fields(original)  # they differ in something, and only in the cue's fields
    table = figures.twin_table(pairs)
    assert list(table["twin"]) == [t.pid for _, t in pairs]
    with pytest.raises(ValueError, match="only .* twin pairs among 4 identities, asked for 50"):
        figures.twin_pairs(50, seed=0, pool=4)


def test_twin_inputs_and_figure():
    pair = figures.twin_pairs(1, seed=0)[0]
    toy, names = figures.twin_inputs(pair, 0, 64, 32)
    assert toy.shape == (3, 3, 64, 32) and len(names) == 3
    assert not torch.equal(toy[0], toy[1])  # the twin differs from the original in the same shot
    fig = figures.plot_twins([pair], seed=0)
    assert len(fig.axes) == 6


# ------------------------------------------------------------------------------------------ sanity checks
def test_kernel_shapes_follow_eq2_on_the_map(model):
    table = figures.kernel_shapes(model, images(2))
    c_self, c_mutual = 8, 8
    assert table.loc["self-guided", "controller output (C_t, h, w)"] == (c_self**2 // 8, 4, 2)
    assert table.loc["mutual-guided", "kernel (c, c)"] == (c_mutual, c_mutual)
    maps = figures.branch_maps(model, images(2))
    for branch in ("self", "mutual"):
        norms = maps[f"{branch}_kernel"].norm(dim=2)  # a row is unit-norm, or all zero after Eq. 2's ReLU
        assert torch.all((norms - 1).abs().lt(1e-5) | norms.eq(0))
        row = table.loc[f"{branch}-guided"]
        assert row["row norms (min, max)"][1] == 1.0
        assert row["all-zero rows (share)"] == pytest.approx(float(norms.eq(0).float().mean()), abs=1e-4)
        assert row["smallest kernel entry"] >= 0


def test_naive_eq3_is_the_papers_formula():
    torch.manual_seed(0)
    k_i, k_j = torch.randn(3, 3), torch.randn(3, 3)
    f_i, f_j = torch.randn(3, 2, 2), torch.randn(3, 2, 2)
    by_hand = np.linalg.norm((k_i @ f_j.flatten(1)).mean(1) - (k_j @ f_i.flatten(1)).mean(1))
    assert figures.naive_eq3(k_i, f_i, k_j, f_j) == pytest.approx(float(by_hand), rel=1e-5)


def test_eq3_check_agrees_with_the_per_pair_loop(model):
    check = figures.eq3_check(model, images(3), ["a", "b", "c"])
    assert len(check) == 6  # pairs i <= j
    assert np.allclose(check["d_ij (package)"], check["d_ij (per-pair loop)"], atol=1e-5)
    assert np.allclose(check["d_ij (package)"], check["d_ji (package)"], atol=1e-6)  # Eq. 3 is symmetric
    same = check["i"] == check["j"]
    assert (check.loc[same, "d_ij (package)"] <= 1e-5).all()  # 0, up to the 1e-12 clamp of the square
    assert (check.loc[~same, "d_ij (package)"] > check.loc[same, "d_ij (package)"].max()).all()
    with pytest.raises(ValueError, match="got 2 names for 3 images"):
        figures.eq3_check(model, images(3), ["a", "b"])


# -------------------------------------------------------------------------------- splits and datasets
def write_images(folder, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{seed}_{i}.png"
        Image.fromarray(rng.integers(0, 255, (64, 32, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> ReIDDataset:
    """4 queries (pids 1-4, camera 0) and 10 gallery images (pids 1-4 in cameras 0/1, two distractors)."""
    folder = tmp_path_factory.mktemp("ipad_images")
    q_paths, g_paths = write_images(folder, 4, 1), write_images(folder, 10, 2)
    query = [Record(p, pid, 0) for p, pid in zip(q_paths, (1, 2, 3, 4))]
    g_labels = [(1, 1), (1, 0), (2, 1), (2, 1), (3, 1), (3, 0), (4, 1), (5, 1), (6, 0), (1, 1)]
    gallery = [Record(p, pid, cam) for p, (pid, cam) in zip(g_paths, g_labels)]
    return ReIDDataset("tiny", str(folder), [], query, gallery)


@pytest.fixture(scope="module")
def split(model, dataset) -> evaluators.TestSplit:
    return Evaluator(Pairwise(flip=True)).split(model, dataset, height=64, width=32, device="cpu")


def test_branch_metrics_rank_each_branch_alone(split, dataset):
    table = figures.branch_metrics(split)
    assert list(table.index) == ["global", "self", "mutual", "fused (IPAD)"]
    q_pids, g_pids = [r.pid for r in dataset.query], [r.pid for r in dataset.gallery]
    q_cams, g_cams = [r.camid for r in dataset.query], [r.camid for r in dataset.gallery]
    features_q, features_g = split.model.unpack(split.query_feats), split.model.unpack(split.gallery_feats)
    by_hand = {
        "global": torch.cdist(features_q["global"], features_g["global"]),
        "fused (IPAD)": split.model.pair_distances(split.query_feats, split.gallery_feats),
    }
    for name, dist in by_hand.items():
        metrics = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=10)
        assert table.loc[name, "mAP"] == pytest.approx(round(100 * float(metrics["mAP"]), 1), abs=1e-6)


def test_branch_features_for_gradcam_are_the_pooled_maps(model):
    x = images(2)
    with torch.no_grad():
        fmap = model.backbone(x)
        assert torch.allclose(figures.BranchFeature(model, "global")(x), fmap.mean(dim=(2, 3)))
        assert torch.allclose(figures.BranchFeature(model, "self")(x), model.self_branch(fmap)["self_feat"])
    with pytest.raises(ValueError, match=r"branch must be one of this model's \['global'\], got 'self'"):
        figures.BranchFeature(build(variant="v1"), "self")
    cams = figures.gradcam_branches(model, x)
    assert list(cams) == ["GB. (global)", "SDB. (self-guided)"]
    for cam in cams.values():
        assert cam.shape == (2, 64, 32) and cam.min() >= 0 and cam.max() <= 1


def test_shown_gallery_is_the_true_matches_then_the_closest_others(dataset):
    distances = torch.arange(40, dtype=torch.float32).reshape(4, 10).flip(1)  # later gallery images closer
    shown = figures.shown_gallery(distances, dataset, 0, negatives=3)
    assert shown == [0, 9, 8, 7, 6]  # pid 1 in camera 1 (0 and 9), then the closest other identities


def test_distance_shift_measures_before_and_after_each_module(model, dataset):
    gallery = [0, 2, 5, 7]
    shift = figures.distance_shift(model, dataset, 1, gallery, 64, 32)
    assert set(shift["branch"]) == {"self", "mutual"}
    assert list(shift.loc[shift["branch"] == "mutual", "positive"]) == [False, True, False, False]
    for _, group in shift.groupby("branch"):
        assert group["before"].mean() == pytest.approx(1.0) and group["after"].mean() == pytest.approx(1.0)
    # the mutual branch's absolute distance after the module is Eq. 3 on the packed (unflipped) features
    from reidbook import viz

    with torch.no_grad():
        packed = model.eval()(viz.test_images([dataset.query[1], *(dataset.gallery[i] for i in gallery)],
                                              range(5), 64, 32))
        eq3 = model.mutual_distances(packed[:1], packed[1:])[0]
    mutual = shift[shift["branch"] == "mutual"]
    assert np.allclose(mutual["after (absolute)"], eq3.numpy(), atol=1e-5)
    # the self branch's: each image convolved with its own kernel (a 1x1 conv2d), pooled, compared
    with torch.no_grad():
        x = model.backbone(viz.test_images([dataset.query[1], *(dataset.gallery[i] for i in gallery)],
                                           range(5), 64, 32))
        f0, kernels = model.self_branch.compression(x), model.self_branch.layer.controller.kernel(x)
        pooled = torch.stack([F.conv2d(f0[i : i + 1], kernels[i][:, :, None, None]).mean(dim=(2, 3))[0]
                              for i in range(5)])
    own = shift[shift["branch"] == "self"]
    assert np.allclose(own["after (absolute)"], (pooled[1:] - pooled[0]).norm(dim=1).numpy(), atol=1e-5)
    fig = figures.plot_distance_shift(shift, "query 1")
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(shift)


def test_separation_counts_correctly_ordered_pairs_per_query():
    shift = pd.DataFrame({
        "query": [0, 0, 0, 1, 1, 1],
        "branch": ["self"] * 6,
        "positive": [True, False, False, True, True, False],
        "before": [0.5, 0.4, 0.9, 1.0, 0.2, 0.6],
        "after": [0.1, 0.4, 0.9, 0.3, 0.2, 0.6],
    })
    table = figures.separation(shift)
    expected = {}
    for axis in ("before", "after"):
        shares = []
        for q in (0, 1):
            one = shift[shift["query"] == q]
            pos, neg = one[one["positive"]][axis], one[~one["positive"]][axis]
            shares.append(np.mean([p < n for p, n in itertools.product(pos, neg)]))
        expected[axis] = np.mean(shares)
    shares = table["true match closer (share of pairs)"]
    assert shares[("self", "before")] == pytest.approx(expected["before"], abs=1e-3) == 0.5
    assert shares[("self", "after")] == pytest.approx(expected["after"]) == 1.0
    assert table.loc[("self", "after"), "queries"] == 2


def test_rank1_changes_and_hard_queries(dataset):
    # query 0 (pid 1): gallery 0 is a match; query 1 (pid 2): gallery 2; query 2 (pid 3): gallery 4;
    # query 3 (pid 4): gallery 6. "global" ranks a wrong image first for queries 1 and 2, "fused" for 3.
    first = {"global": [0, 7, 8, 6], "fused": [0, 2, 4, 8]}
    dists = {}
    for name, picks in first.items():
        d = torch.ones(4, 10)
        for q, g in enumerate(picks):
            d[q, g] = 0.0
        dists[name] = d
    assert list(figures.first_match_correct(dists["global"], dataset)) == [True, False, False, True]
    changes = figures.rank1_changes(dists["global"], dists["fused"], dataset)
    assert changes.to_dict() == {"both right": 1, "global branch right, IPAD wrong": 1,
                                 "global branch wrong, IPAD right": 2, "both wrong": 0}
    assert figures.hard_queries(dists["global"], dists["fused"], dataset, 2, seed=0) == [1, 2]
    assert figures.hard_queries(dists["global"], dists["fused"], dataset, 5, seed=0) == [1, 2]
    all_right = torch.ones(4, 10)
    all_right[[0, 1, 2, 3], [0, 2, 4, 6]] = 0.0
    with pytest.raises(ValueError, match="gets every query right"):
        figures.hard_queries(all_right, dists["fused"], dataset, 1, seed=0)


def test_queries_with_matches_in_another_camera(dataset):
    assert figures.queries_with_matches(dataset, 10, seed=0) == [0, 1, 2, 3]
    no_cross_camera = ReIDDataset("t", "", [], dataset.query, [Record("x", 1, 0), Record("y", 2, 1)])
    assert figures.queries_with_matches(no_cross_camera, 10, seed=0) == [1]


# ---------------------------------------------------------------------------------------------------- cost
def test_feature_cost_of_the_papers_layout():
    cost = figures.feature_cost(figures.PAPER_LAYOUT)
    assert cost["floats per image"] == 2048 + 512 + 128 * 128 + 128
    assert cost["multiply-adds per pair"] == 2048 + 512 + 2 * 128 * 128
    layout = {"global": (32,), "self": (8,), "mutual_kernel": (8, 8), "mutual_vec": (8,)}
    table = figures.paper_size_cost(layout)
    assert table.loc["this run's IPAD", "floats per image"] == 32 + 8 + 64 + 8
    assert table.loc["the paper's IPAD (ResNet-50)", "Market-1501 test features (GiB)"] == pytest.approx(
        round(19281 * 19072 * 4 / 2**30, 2))


def test_pairwise_cost_measures_every_distance(split, dataset):
    embedding = evaluators.TestSplit(nn.Identity(), Embedding(), torch.device("cpu"), dataset.query,
                                     dataset.gallery, torch.randn(4, 16), torch.randn(10, 16))
    cost = figures.pairwise_cost(split, embedding, queries=3, g_chunks=(4,), q_chunk=2)
    assert list(cost.index) == ["IPAD fused, blocks of 2 × 4", "IPAD mutual branch alone (Eq. 3, c = 8)",
                                "baseline, 16-d embeddings"]
    assert (cost["pairs/s"] > 0).all()
    block = cost.loc["IPAD fused, blocks of 2 × 4", "largest block (MiB)"]
    assert block == pytest.approx(3 * 2 * 4 * 8 * 4 / 2**20)  # (q, g, c) float32 products and difference
    floats = figures.feature_cost(split.model.feature_layout)["floats per image"]
    assert cost["floats per image"].tolist() == [floats, floats, 16]
    assert np.allclose(cost["seconds for Market-1501 (3,368 × 15,913)"] / cost["seconds for this test set"],
                       3368 * 15913 / (4 * 10))
