"""IPAD: controller and kernel shapes, L2-normalised kernels, Eq. 3 against per-pair loops, chunked test-time
pair distances, pooling/convolution commutation, attention alternatives, fusion, criterion and training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from reidbook.engine import fit
from reidbook.evaluation.distance import flip_average
from reidbook.evaluation.pairwise import pairwise_distance_matrix
from reidbook.models.backbones import Backbone, build_backbone
from reidbook.models.ipad import (
    IPAD,
    IPAD_VARIANTS,
    CoAttention,
    Controller,
    IPADCriterion,
    MutualGuidedDynamicConv,
    SelfAttention,
    build_ipad,
    controller_to_kernel,
    dynamic_conv,
    fuse_distances,
    triplet_from_distances,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def naive_eq3(kernels: torch.Tensor, maps: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """Eq. 3 for one pair, the long way: convolve each full map with the other image's kernel as a 1x1
    conv2d, pool, then take the Euclidean distance."""
    k_i, k_j = kernels[i][:, :, None, None], kernels[j][:, :, None, None]
    k_i_f_j = F.conv2d(maps[j : j + 1], k_i).mean(dim=(2, 3))[0]
    k_j_f_i = F.conv2d(maps[i : i + 1], k_j).mean(dim=(2, 3))[0]
    return torch.sqrt(sum((k_i_f_j[c] - k_j_f_i[c]) ** 2 for c in range(len(k_i_f_j))))


def naive_coattention(proj, map_i: torch.Tensor, map_j: torch.Tensor) -> torch.Tensor:
    """a(i, j) of CoAttention, position by position."""
    c = map_i.shape[0]
    q = proj.query(map_i[None])[0].flatten(1)  # (c, P)
    k = proj.key(map_j[None])[0].flatten(1)
    v = proj.value(map_j[None])[0].flatten(1)
    outs = []
    for p in range(q.shape[1]):
        logits = torch.stack([torch.dot(q[:, p], k[:, s]) / math.sqrt(c) for s in range(k.shape[1])])
        weights = torch.softmax(logits, dim=0)
        outs.append(sum(weights[s] * v[:, s] for s in range(k.shape[1])))
    return torch.stack(outs).mean(dim=0)


def tiny_backbone() -> Backbone:
    """A four-stage convolutional backbone at strides 4, 8, 16, 16 (last stride 1), 32 channels out: the
    shapes of a ResNet at a fraction of its cost."""

    def block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
        conv = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(c_out), nn.ReLU())

    stages = [block(8, 8, 1), block(8, 16, 2), block(16, 16, 2), block(16, 32, 1)]
    return Backbone(block(3, 8, 4), stages, out_channels=[8, 16, 16, 32], strides=[4, 8, 16, 16])


@pytest.fixture(scope="module")
def resnet18() -> Backbone:
    return build_backbone("resnet18")


@pytest.fixture(scope="module")
def eval_model() -> IPAD:
    """One small IPAD in eval mode, shared by the tests that only read it."""
    return small_ipad().eval()


def small_ipad(**kwargs) -> IPAD:
    """IPAD on :func:`tiny_backbone` for 64 x 32 images (4 x 2 maps, C_o = 32)."""
    torch.manual_seed(0)
    options = {"image_size": (64, 32), "self_channels": 16, "mutual_channels": 8, "squeeze": 4}
    options.update(kwargs)
    return IPAD(6, options.pop("backbone", None) or tiny_backbone(), **options)


# ----------------------------------------------------------------------------------- controller, kernels


@pytest.mark.parametrize(
    ("grid", "channels", "c_t"),
    [
        ((16, 8), 512, 2048),  # person, self branch: 2048 x 16 x 8 = 512 x 512 (Section III-C)
        ((16, 8), 128, 128),  # person, mutual branch: 128 x 16 x 8 = 128 x 128 (Section III-D)
        ((16, 16), 512, 1024),  # vehicle, self branch: 1024 x 16 x 16
        ((16, 16), 256, 256),  # vehicle, mutual branch: 256 x 16 x 16
    ],
)
def test_controller_has_the_papers_output_sizes(grid: tuple[int, int], channels: int, c_t: int) -> None:
    controller = Controller(2048, channels, grid)
    x = torch.rand(1, 2048, *grid)  # a ResNet-50 map, 256 x 128 (person) or 256 x 256 (vehicle) input
    assert controller.out_channels == c_t
    assert controller(x).shape == (1, c_t, *grid)
    assert controller.kernel(x).shape == (1, channels, channels)
    hidden = [m.out_channels for m in controller.net if isinstance(m, torch.nn.Conv2d)]
    assert hidden == [2048 // 16, 2048 // 16, c_t]  # C_o -> C_o/d -> C_o/d -> C_t


@pytest.mark.parametrize(
    ("image_size", "map_size"),
    # persons at the book's and the paper's sizes, then a square, vehicle-like input
    [((64, 32), (4, 2)), ((128, 64), (8, 4)), ((256, 128), (16, 8)), ((128, 128), (8, 8))],
)
def test_model_kernels_follow_the_map(
    resnet18: Backbone, image_size: tuple[int, int], map_size: tuple[int, int]
) -> None:
    model = small_ipad(backbone=resnet18, image_size=image_size, self_channels=64, mutual_channels=32,
                       squeeze=16).eval()
    assert model.map_size == map_size
    cells = map_size[0] * map_size[1]
    self_controller = model.self_branch.layer.controller
    mutual_controller = model.mutual_branch.layer.controller
    assert self_controller.out_channels == 64 * 64 // cells
    assert mutual_controller.out_channels == 32 * 32 // cells
    with torch.no_grad():
        x = model.backbone(torch.rand(1, 3, *image_size))  # (1, 512, h, w)
        assert self_controller(x).shape == (1, 64 * 64 // cells, *map_size)
        assert self_controller.kernel(x).shape == (1, 64, 64)
        assert mutual_controller.kernel(x).shape == (1, 32, 32)
        layout = model.feature_layout
        assert layout == {"global": (512,), "self": (64,), "mutual_kernel": (32, 32), "mutual_vec": (32,)}
        assert model(torch.rand(1, 3, *image_size)).shape == (1, 512 + 64 + 32 * 32 + 32)


def test_controller_grid_pools_the_map_first() -> None:
    model = small_ipad(image_size=(128, 64), controller_grid=(4, 2)).eval()  # 8 x 4 map pooled to 4 x 2
    controller = model.self_branch.layer.controller
    assert controller.out_channels == 16 * 16 // 8
    x = torch.rand(2, 32, 8, 4)
    pooled = torch.stack([x[:, :, 2 * r : 2 * r + 2, 2 * c : 2 * c + 2].mean(dim=(2, 3)) for r in range(4)
                          for c in range(2)], dim=2).view(2, 32, 4, 2)
    torch.testing.assert_close(controller(x), controller.net(pooled))


def test_controller_refuses_bad_grids() -> None:
    with pytest.raises(ValueError, match="larger than the 4 x 2"):
        small_ipad(controller_grid=(16, 8))  # pooling a 4 x 2 map up
    with pytest.raises(ValueError, match="not a multiple of 3"):
        Controller(64, 16, (3, 1))
    controller = Controller(64, 16, (4, 2))
    with pytest.raises(ValueError, match="built for 4 x 2 maps, got 8 x 4"):
        controller(torch.rand(1, 64, 8, 4))
    with pytest.raises(ValueError, match="squeeze must be at most"):
        Controller(8, 4, (2, 2), squeeze=16)
    with pytest.raises(ValueError, match="kernel_norm"):
        Controller(64, 16, (4, 2), kernel_norm="l1")


def test_kernels_are_the_flattened_output_l2_normalised_per_filter() -> None:
    output = randn(2, 8, 2, 1, seed=1)  # C_t = 8 on a 2 x 1 grid: a 4 x 4 kernel
    kernel = controller_to_kernel(output, 4)
    for b in range(2):
        flat = [float(output[b, t, r, 0]) for t in range(8) for r in range(2)]  # (C_t, h, w) order
        for row in range(4):
            entries = torch.tensor(flat[4 * row : 4 * row + 4])
            torch.testing.assert_close(kernel[b, row], entries / entries.norm())
    torch.testing.assert_close(kernel.norm(dim=2), torch.ones(2, 4))


def test_matrix_norm_gives_unit_frobenius_kernels() -> None:
    kernel = controller_to_kernel(randn(3, 16, 1, 1, seed=2), 4, "matrix")
    torch.testing.assert_close(kernel.flatten(1).norm(dim=1), torch.ones(3))
    assert not torch.allclose(kernel.norm(dim=2), torch.ones(3, 4))


def test_eq2_final_relu_makes_kernels_non_negative() -> None:
    torch.manual_seed(0)
    x = randn(2, 64, 4, 2, seed=3)
    assert (Controller(64, 16, (4, 2)).kernel(x) >= 0).all()
    assert (Controller(64, 16, (4, 2), final_relu=False).kernel(x) < 0).any()


# ------------------------------------------------------------------------------- dynamic convolution


def test_dynamic_conv_is_each_images_own_1x1_convolution() -> None:
    kernel, fmap = randn(3, 5, 5, seed=4), randn(3, 5, 4, 2, seed=5)
    out = dynamic_conv(kernel, fmap)
    for b in range(3):
        torch.testing.assert_close(out[b : b + 1], F.conv2d(fmap[b : b + 1], kernel[b][:, :, None, None]))


def test_pooling_and_dynamic_convolution_commute() -> None:
    kernel, fmap = randn(3, 6, 6, seed=6), randn(3, 6, 4, 2, seed=7)
    pooled_after = dynamic_conv(kernel, fmap).mean(dim=(2, 3))  # GAP(K f)
    pooled_before = torch.bmm(kernel, fmap.mean(dim=(2, 3))[:, :, None])[:, :, 0]  # K GAP(f)
    torch.testing.assert_close(pooled_after, pooled_before)


def test_mutual_pair_distances_equal_eq3_on_full_maps() -> None:
    layer = MutualGuidedDynamicConv(16, 4, (4, 2))
    kernels = controller_to_kernel(randn(4, 2, 4, 2, seed=8), 4, "matrix")  # 2 * 8 = 16 = 4 x 4
    maps = randn(4, 4, 4, 2, seed=9)
    feats = {"kernel": kernels, "vec": maps.mean(dim=(2, 3))}
    dist = layer.pair_distances(feats, feats)
    naive = torch.stack([torch.stack([naive_eq3(kernels, maps, i, j) for j in range(4)]) for i in range(4)])
    torch.testing.assert_close(dist, naive)
    torch.testing.assert_close(dist, dist.t())
    assert dist.diagonal().max() < 1e-5


def test_train_mode_mutual_distances_are_eq3_over_every_pair_of_the_batch() -> None:
    model = small_ipad().train()
    img = randn(4, 3, 64, 32, seed=10)
    with torch.no_grad():
        outputs = model(img)
        x = model.backbone(img)  # the same batch: the same BN statistics as in the forward pass
        maps = model.mutual_branch.compression(x)  # (4, 8, 4, 2)
        kernels = model.mutual_branch.layer.controller.kernel(x)  # (4, 8, 8)
    naive = torch.stack([torch.stack([naive_eq3(kernels, maps, i, j) for j in range(4)]) for i in range(4)])
    assert outputs["mutual_dist"].shape == (4, 4)
    torch.testing.assert_close(outputs["mutual_dist"], naive, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("q_chunk", "g_chunk"), [(1, 1), (2, 3), (5, 2), (64, 64)])
def test_chunked_test_pair_distances_equal_the_naive_loop(
    eval_model: IPAD, q_chunk: int, g_chunk: int
) -> None:
    model = eval_model
    with torch.no_grad():
        query, gallery = model(randn(5, 3, 64, 32, seed=11)), model(randn(7, 3, 64, 32, seed=12))
    q, g = model.unpack(query), model.unpack(gallery)
    naive = torch.zeros(5, 7)
    for a in range(5):
        for b in range(7):
            k_a_g_b = q["mutual_kernel"][a] @ g["mutual_vec"][b]
            k_b_g_a = g["mutual_kernel"][b] @ q["mutual_vec"][a]
            naive[a, b] = math.sqrt(sum(float(u - v) ** 2 for u, v in zip(k_a_g_b, k_b_g_a)))
    dist = pairwise_distance_matrix(
        lambda qs, gs: -model.mutual_distances(qs, gs), query, gallery, q_chunk=q_chunk, g_chunk=g_chunk,
        progress=False,
    )
    torch.testing.assert_close(dist, naive, atol=1e-5, rtol=1e-4)
    by_model = model.distance_matrices(query, gallery, q_chunk=q_chunk, g_chunk=g_chunk)["mutual"]
    torch.testing.assert_close(by_model, naive, atol=1e-5, rtol=1e-4)


def test_flip_averaged_packed_features_average_every_named_feature(eval_model: IPAD) -> None:
    model = eval_model
    img = randn(3, 3, 64, 32, seed=13)
    averaged = model.unpack(flip_average(model, img))
    plain, mirrored = model.test_features(img), model.test_features(img.flip(-1))
    for name in model.feature_layout:
        torch.testing.assert_close(averaged[name], 0.5 * (plain[name] + mirrored[name]))
    with torch.no_grad():
        x = model.backbone(img)
        torch.testing.assert_close(plain["global"], model.neck(x.mean(dim=(2, 3))))
        torch.testing.assert_close(plain["mutual_vec"], model.mutual_branch.compression(x).mean(dim=(2, 3)))
        torch.testing.assert_close(plain["mutual_kernel"], model.mutual_branch.layer.controller.kernel(x))


# ------------------------------------------------------------------------------- attention alternatives


def test_self_attention_equals_the_naive_formula() -> None:
    torch.manual_seed(0)
    layer = SelfAttention(4)
    f0 = randn(2, 4, 3, 2, seed=14)
    out = layer(f0)
    assert out.shape == (2, 4, 3, 2)
    proj = layer.projections
    for b in range(2):
        q = proj.query(f0[b : b + 1])[0].flatten(1)  # (4, 6)
        k, v = proj.key(f0[b : b + 1])[0].flatten(1), proj.value(f0[b : b + 1])[0].flatten(1)
        for p in range(6):
            weights = torch.softmax(torch.stack([torch.dot(q[:, p], k[:, s]) / 2.0 for s in range(6)]), dim=0)
            expected = sum(weights[s] * v[:, s] for s in range(6))
            torch.testing.assert_close(out[b].flatten(1)[:, p], expected)


@pytest.mark.parametrize("pairs_per_chunk", [1, 4, 1000])
def test_coattention_distances_equal_the_naive_loop(pairs_per_chunk: int) -> None:
    torch.manual_seed(0)
    layer = CoAttention(4, pairs_per_chunk=pairs_per_chunk)
    maps_a, maps_b = randn(3, 4, 3, 2, seed=15), randn(4, 4, 3, 2, seed=16)
    dist = layer.pair_distances({"map": maps_a}, {"map": maps_b})
    assert dist.shape == (3, 4)
    for i in range(3):
        for j in range(4):
            a_ij = naive_coattention(layer.projections, maps_a[i], maps_b[j])
            a_ji = naive_coattention(layer.projections, maps_b[j], maps_a[i])
            torch.testing.assert_close(dist[i, j], (a_ij - a_ji).norm(), atol=1e-5, rtol=1e-4)


def test_attention_variant_trains_and_scores_pairs_in_chunks() -> None:
    model = build_ipad("attention", 6, backbone=tiny_backbone(), image_size=(64, 32), self_channels=16,
                       mutual_channels=8)
    assert isinstance(model.self_branch.layer, SelfAttention)
    assert model.feature_layout["mutual_map"] == (8, 4, 2)
    outputs = model.train()(randn(4, 3, 64, 32, seed=17))
    assert outputs["mutual_dist"].shape == (4, 4)
    model.eval()
    with torch.no_grad():
        query, gallery = model(randn(3, 3, 64, 32, seed=18)), model(randn(5, 3, 64, 32, seed=19))
    whole = model.mutual_distances(query, gallery)
    chunked = pairwise_distance_matrix(
        lambda a, b: -model.mutual_distances(a, b), query, gallery, q_chunk=2, g_chunk=2, progress=False
    )
    torch.testing.assert_close(chunked, whole)


# ------------------------------------------------------------------------------ variants, fusion, loss


@pytest.mark.parametrize("variant", sorted(IPAD_VARIANTS))
def test_variants_have_their_branches_and_loss_terms(variant: str) -> None:
    torch.manual_seed(0)
    model = build_ipad(variant, 4, backbone=tiny_backbone(), image_size=(32, 16), self_channels=16,
                       mutual_channels=8, squeeze=4)
    outputs = model.train()(randn(4, 3, 32, 16, seed=20))
    terms = IPADCriterion(4)(outputs, {"pid": torch.tensor([0, 0, 1, 1])})
    expected = {"ce", "triplet"}
    self_kind, mutual_kind = IPAD_VARIANTS[variant]
    if self_kind is not None:
        expected |= {"self_ce", "self_triplet"}
    if mutual_kind is not None:
        expected |= {"mutual_triplet"}
    assert set(terms) == expected
    assert all(torch.isfinite(t) and t.ndim == 0 for t in terms.values())
    assert (model.self_branch is None) == (self_kind is None)
    assert (model.mutual_branch is None) == (mutual_kind is None)


def test_mutual_triplet_is_batch_hard_on_the_pair_distances() -> None:
    dist = torch.tensor(
        [[0.0, 0.5, 0.4, 1.0], [0.5, 0.0, 0.2, 0.9], [0.4, 0.2, 0.0, 0.3], [1.0, 0.9, 0.3, 0.0]]
    )
    pids = torch.tensor([0, 0, 1, 1])
    # anchor 0: hardest positive 0.5, hardest negative 0.4; 1: 0.5, 0.2; 2: 0.3, 0.2; 3: 0.3, 0.9
    expected = (max(0.5 - 0.4 + 0.3, 0) + max(0.5 - 0.2 + 0.3, 0) + max(0.3 - 0.2 + 0.3, 0)
                + max(0.3 - 0.9 + 0.3, 0)) / 4
    assert float(triplet_from_distances(dist, pids, 0.3)) == pytest.approx(expected)
    terms = IPADCriterion(2)({"mutual_dist": dist, "logits": torch.zeros(4, 2), "feat": torch.zeros(4, 3)},
                             {"pid": pids})
    assert float(terms["mutual_triplet"]) == pytest.approx(expected)


def test_fusion_divides_each_branch_by_its_scale_and_sums() -> None:
    a, b = torch.rand(3, 5) + 0.1, 10 * torch.rand(3, 5) + 0.1
    fused = fuse_distances({"global": a, "mutual": b}, {"global": 0.5, "mutual": 4.0}, {"mutual": 2.0})
    for i in range(3):
        for j in range(5):
            expected = a[i, j] / 0.5 + 2.0 * b[i, j] / 4.0
            assert float(fused[i, j]) == pytest.approx(float(expected), rel=1e-5)
    torch.testing.assert_close(fuse_distances({"global": a, "mutual": b}), a + b)
    with pytest.raises(ValueError, match="weights names"):
        fuse_distances({"global": a}, weights={"self": 1.0})
    with pytest.raises(ValueError, match="scales must be positive"):
        fuse_distances({"global": a}, {"global": 0.0})
    with pytest.raises(ValueError, match="one shape"):
        fuse_distances({"global": a, "self": b[:2]})


def test_training_tracks_each_branchs_mean_distance_between_different_images() -> None:
    model = small_ipad(scale_momentum=0.25).train()
    assert model.distance_scales == {"global": 1.0, "self": 1.0, "mutual": 1.0}

    def off_diagonal_means(outputs: dict[str, torch.Tensor]) -> dict[str, float]:
        dists = {
            "global": torch.cdist(outputs["bn_feat"], outputs["bn_feat"]),
            "self": torch.cdist(outputs["self_bn_feat"], outputs["self_bn_feat"]),
            "mutual": outputs["mutual_dist"],
        }
        return {name: float(sum(d[i, j] for i in range(4) for j in range(4) if i != j) / 12)
                for name, d in dists.items()}

    with torch.no_grad():
        first = off_diagonal_means(model(randn(4, 3, 64, 32, seed=25)))
        for name, value in model.distance_scales.items():
            assert value == pytest.approx(first[name], rel=1e-4)  # the first batch sets the scale
        second = off_diagonal_means(model(randn(4, 3, 64, 32, seed=26)))
    for name, value in model.distance_scales.items():
        assert value == pytest.approx(0.75 * first[name] + 0.25 * second[name], rel=1e-4)
    assert "distance_means" in model.state_dict()


def test_pair_distances_fuse_the_branches_block_by_block() -> None:
    model = small_ipad(fusion_weights={"mutual": 0.5})
    with torch.no_grad():
        model.train()(randn(6, 3, 64, 32, seed=27))  # sets the scales
        model.eval()
        query, gallery = model(randn(3, 3, 64, 32, seed=21)), model(randn(5, 3, 64, 32, seed=22))
    q, g = model.unpack(query), model.unpack(gallery)
    scales = model.distance_scales
    assert all(value != 1.0 for value in scales.values())
    dists = model.distance_matrices(query, gallery, q_chunk=2, g_chunk=2)
    assert set(dists) == {"global", "self", "mutual"}
    torch.testing.assert_close(dists["self"], torch.cdist(q["self"], g["self"]), atol=1e-3, rtol=1e-4)
    expected = (dists["global"] / scales["global"] + dists["self"] / scales["self"]
                + 0.5 * dists["mutual"] / scales["mutual"])
    fused = model.pair_distances(query, gallery)
    torch.testing.assert_close(fused, expected, atol=1e-3, rtol=1e-4)
    chunked = pairwise_distance_matrix(
        lambda a, b: -model.pair_distances(a, b), query, gallery, q_chunk=2, g_chunk=3, progress=False
    )
    torch.testing.assert_close(chunked, fused)


# ------------------------------------------------------------------------------------------- errors


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="self_branch must be one of"):
        small_ipad(self_branch="static")
    with pytest.raises(ValueError, match="mutual_branch must be one of"):
        small_ipad(mutual_branch="attention")
    with pytest.raises(ValueError, match="variant must be one of"):
        build_ipad("v3", 4)
    with pytest.raises(ValueError, match="fusion_weights names"):
        small_ipad(self_branch=None, fusion_weights={"self": 2.0})
    with pytest.raises(ValueError, match="scale_momentum"):
        small_ipad(scale_momentum=0.0)
    model = small_ipad(mutual_branch=None).eval()
    packed = model(randn(2, 3, 64, 32, seed=23))
    with pytest.raises(ValueError, match="no mutual branch"):
        model.mutual_distances(packed, packed)
    with pytest.raises(ValueError, match="packed features must be"):
        model.unpack(packed[:, :-1])
    with pytest.raises(ValueError, match="built for 4 x 2 maps"):
        small_ipad(mutual_branch=None)(randn(2, 3, 128, 64, seed=24))
    with pytest.raises(TypeError, match="channels must be an int"):
        Controller(64, 16.0, (4, 2))  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------ training


def test_fit_trains_ipad_and_lowers_its_loss() -> None:
    model = small_ipad()
    generator = torch.Generator().manual_seed(0)
    batch = {
        "img": torch.randn(8, 3, 64, 32, generator=generator),
        "pid": torch.arange(4).repeat_interleave(2),
        "camid": torch.zeros(8, dtype=torch.long),
        "index": torch.arange(8),
    }
    history = fit(model, IPADCriterion(6), [batch] * 3, epochs=2, device="cpu", progress=False, seed=0)
    steps = history.steps
    assert {"ce", "triplet", "self_ce", "self_triplet", "mutual_triplet"} <= set(steps.columns)
    assert steps["total"].notna().all()
    assert steps["total"].iloc[-1] < steps["total"].iloc[0]
