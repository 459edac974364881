"""IANet (Hou et al., CVPR 2019): relation maps against naive transcriptions of Eqs. 1-8, identity at
initialisation (Eq. 9), block placement, stored relation maps and the memory count."""

import math

import pytest
import torch

from reidbook.models import BaselineCriterion
from reidbook.models.ianet import (
    ARRANGEMENTS,
    AUTHORS_SIA,
    ChannelInteractionAggregation,
    CIABlock,
    IABlock,
    IANet,
    IANetCriterion,
    LocationRelation,
    MultiContextAppearanceRelation,
    SIABlock,
    SpatialInteractionAggregation,
    accumulate_patch_dot_products,
    fuse,
    location_relation,
    paper_location_relation,
    patch_offsets,
    position_dot_products,
    relation_memory,
    relation_of_point,
    single_context_appearance_relation,
)

TINY_IMAGE = (2, 3, 64, 32)  # resnet18 maps: 16x8, 8x4, 4x2, 4x2 (last stride 1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def naive_patch_similarity(features: torch.Tensor, k: int) -> torch.Tensor:
    """Eq. 1's exponent by loops: sum over the K x K patch cells of p_i,k^T p_j,k, zero outside the map."""
    batch, _, height, width = features.shape
    offsets = list(patch_offsets(k))

    def cell(b: int, y: int, x: int) -> torch.Tensor:
        inside = 0 <= y < height and 0 <= x < width
        return features[b, :, y, x] if inside else torch.zeros(features.shape[1], dtype=features.dtype)

    positions = [(y, x) for y in range(height) for x in range(width)]
    out = torch.zeros(batch, len(positions), len(positions), dtype=features.dtype)
    for b in range(batch):
        for i, (yi, xi) in enumerate(positions):
            for j, (yj, xj) in enumerate(positions):
                out[b, i, j] = sum(
                    cell(b, yi + dy, xi + dx) @ cell(b, yj + dy, xj + dx) for dy in offsets for dx in offsets
                )
    return out


def naive_row_softmax(scores: torch.Tensor) -> torch.Tensor:
    exp = torch.exp(scores - scores.amax(dim=-1, keepdim=True))
    return exp / exp.sum(dim=-1, keepdim=True)


def naive_spatial_aggregation(features: torch.Tensor, relation: torch.Tensor) -> torch.Tensor:
    """Eq. 6 by loops: E_S[:, i] = sum_j S[i, j] F[:, j]."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, -1)
    out = torch.zeros_like(flat)
    for b in range(batch):
        for i in range(flat.shape[2]):
            for j in range(flat.shape[2]):
                out[b, :, i] += relation[b, i, j] * flat[b, :, j]
    return out.reshape_as(features)


def naive_location(height: int, width: int, sigma: tuple[float, float]) -> torch.Tensor:
    """Eqs. 3-4 by loops, with the Gaussian's constant."""
    s1, s2 = sigma
    positions = [(y, x) for y in range(height) for x in range(width)]
    gauss = torch.tensor(
        [
            [
                math.exp(-0.5 * ((xj - xi) ** 2 / s1**2 + (yj - yi) ** 2 / s2**2)) / (2 * math.pi * s1 * s2)
                for (yj, xj) in positions
            ]
            for (yi, xi) in positions
        ],
        dtype=torch.float64,
    )
    return gauss / gauss.sum(dim=1, keepdim=True)


# --------------------------------------------------------------------------- Eqs. 1-2


def test_patch_offsets_centre_odd_and_anchor_even_patches():
    assert list(patch_offsets(1)) == [0]
    assert list(patch_offsets(2)) == [0, 1]
    assert list(patch_offsets(3)) == [-1, 0, 1]
    assert list(patch_offsets(5)) == [-2, -1, 0, 1, 2]
    with pytest.raises(ValueError, match="K"):
        patch_offsets(0)


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_accumulated_dot_products_match_a_loop_over_patches(k):
    features = torch.randn(2, 5, 4, 3, dtype=torch.float64)  # C=5 on a 4x3 map
    dots = position_dot_products(features)
    fast = accumulate_patch_dot_products(dots, 4, 3, k)
    assert torch.allclose(fast, naive_patch_similarity(features, k))


def test_accumulation_backpropagates():
    dots = torch.randn(1, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: accumulate_patch_dot_products(d, 3, 2, 3), (dots,))


@pytest.mark.parametrize("k", [1, 2, 3])
def test_single_context_relation_is_row_softmax_of_patch_similarity(k):
    features = torch.randn(1, 5, 4, 3, dtype=torch.float64)
    relation = single_context_appearance_relation(features, k)
    assert torch.allclose(relation, naive_row_softmax(naive_patch_similarity(features, k)))
    assert torch.allclose(relation.sum(dim=-1), torch.ones(1, 12, dtype=torch.float64))


@pytest.mark.parametrize(
    ("fusion", "combine"),
    [
        ("product", lambda a, b, c: a * b * c),
        ("max", lambda a, b, c: a.maximum(b).maximum(c)),
        ("sum", lambda a, b, c: a + b + c),
    ],
)
def test_multi_context_relation_fuses_then_softmaxes(fusion, combine):
    features = torch.randn(2, 5, 4, 3, dtype=torch.float64) * 0.5
    singles = [naive_row_softmax(naive_patch_similarity(features, k)) for k in (1, 2, 3)]
    expected = naive_row_softmax(combine(*singles))  # Eq. 2
    assert torch.allclose(MultiContextAppearanceRelation((1, 2, 3), fusion)(features), expected)


def test_single_context_is_not_fused_again():
    features = torch.randn(1, 5, 4, 3, dtype=torch.float64)
    relation = MultiContextAppearanceRelation((2,))(features)
    assert torch.allclose(relation, single_context_appearance_relation(features, 2))


def test_scaled_dot_products_divide_by_sqrt_channels():
    features = torch.randn(1, 16, 3, 2, dtype=torch.float64)
    scaled = single_context_appearance_relation(features, 1, scale=True)
    assert torch.allclose(scaled, single_context_appearance_relation(features / 2.0, 1))  # sqrt(16)=4=2*2


def test_fuse_rejects_unknown_fusion():
    with pytest.raises(ValueError, match="fusion"):
        fuse([torch.ones(2)], "mean")


# --------------------------------------------------------------------------- Eqs. 3-5


def test_location_relation_matches_gaussian_rows_sum_to_one_and_peak_on_diagonal():
    sigma = (1.5, 3.0)
    relation = location_relation(5, 4, sigma, dtype=torch.float64)
    assert torch.allclose(relation, naive_location(5, 4, sigma))
    assert torch.allclose(relation.sum(dim=1), torch.ones(20, dtype=torch.float64))
    assert torch.equal(relation.argmax(dim=1), torch.arange(20))
    off_diagonal = relation.masked_fill(torch.eye(20, dtype=torch.bool), -1.0)
    assert (off_diagonal.amax(dim=1) < relation.diagonal()).all()


def test_location_sigma_follows_the_paper_and_scales_with_map_height():
    stage2, stage3 = paper_location_relation(2), paper_location_relation(3)
    assert stage2.sigma_for(32) == (10.0, 20.0)  # 256x128 input, stage 2: 32x16 map
    assert stage3.sigma_for(16) == (5.0, 10.0)  # stage 3: 16x8 map
    assert stage2.sigma_for(16) == (5.0, 10.0)  # 128x64 input halves the map and sigma
    assert paper_location_relation(3, sigma_scale=0.4).sigma_for(16) == (2.0, 4.0)
    assert LocationRelation((2.0, 3.0), reference_height=None).sigma_for(100) == (2.0, 3.0)
    with pytest.raises(ValueError, match="stage"):
        paper_location_relation(5)


def test_semantic_relation_is_softmax_of_fused_appearance_and_location():
    features = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    sigma = (1.0, 2.0)
    sia = SpatialInteractionAggregation(
        contexts=(1, 2, 3), relation="semantic", location=LocationRelation(sigma, reference_height=None)
    )
    singles = [naive_row_softmax(naive_patch_similarity(features, k)) for k in (1, 2, 3)]
    appearance = naive_row_softmax(singles[0] * singles[1] * singles[2])
    expected = naive_row_softmax(appearance * naive_location(4, 3, sigma))  # Eq. 5
    maps = sia.relation_maps(features)
    assert torch.allclose(maps["semantic"], expected)
    assert torch.allclose(sia(features), naive_spatial_aggregation(features, expected))  # Eq. 6


def test_sia_with_k1_appearance_only_is_softmax_dot_product_aggregation():
    features = torch.randn(2, 5, 4, 3, dtype=torch.float64)
    sia = SpatialInteractionAggregation(contexts=(1,), relation="appearance")
    flat = features.reshape(2, 5, 12)
    relation = naive_row_softmax(flat.transpose(1, 2) @ flat)  # softmax(F^T F), rows over j
    assert torch.allclose(sia(features), naive_spatial_aggregation(features, relation))


def test_location_only_sia_aggregates_with_the_gaussian():
    features = torch.randn(1, 5, 4, 3, dtype=torch.float64)
    sia = SpatialInteractionAggregation(relation="location", location=LocationRelation((1.0, 2.0), None))
    expected = naive_spatial_aggregation(features, naive_location(4, 3, (1.0, 2.0)).unsqueeze(0))
    assert torch.allclose(sia(features), expected)


# --------------------------------------------------------------------------- the authors' released code


def naive_authors_relation(features: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
    """The released code's SIA map by loops: softmax_j(f_i.f_j / sqrt(C)), times S^L, softmax_j again."""
    batch, channels, height, width = features.shape
    flat = features.reshape(batch, channels, -1)
    positions = flat.shape[2]
    out = torch.zeros(batch, positions, positions, dtype=features.dtype)
    for b in range(batch):
        for i in range(positions):
            dots = torch.stack([flat[b, :, i] @ flat[b, :, j] for j in range(positions)])
            dots = dots / math.sqrt(channels)
            appearance = torch.exp(dots) / torch.exp(dots).sum()
            fused = appearance * location[i]
            out[b, i] = torch.exp(fused) / torch.exp(fused).sum()
    return out


def test_authors_formulation_is_the_released_single_context_scaled_double_softmax():
    features = torch.randn(2, 9, 4, 3, dtype=torch.float64) * 2
    location = LocationRelation((1.0, 2.0), reference_height=None)
    sia = SpatialInteractionAggregation(formulation="authors", location=location)
    expected = naive_authors_relation(features, naive_location(4, 3, (1.0, 2.0)))
    maps = sia.relation_maps(features)
    assert set(maps) == {"appearance_k1", "appearance", "location", "semantic", "spatial"}
    assert torch.allclose(maps["semantic"], expected)
    assert torch.allclose(sia(features), naive_spatial_aggregation(features, expected))  # Eq. 6
    paper = SpatialInteractionAggregation(location=location).relation_maps(features)["semantic"]
    assert not torch.allclose(paper, expected)  # three contexts, unscaled: another map


def test_authors_formulation_is_reachable_from_ianet_and_accepts_its_own_values():
    model = IANet(3, "resnet18", formulation="authors", contexts=[1], scale_dot_products=True)
    for block in model.blocks:
        sia = block.sia.module
        assert sia.formulation == "authors" and sia.relation == AUTHORS_SIA["relation"]
        assert sia.appearance.contexts == (1,) and sia.appearance.scale_dot_products
    paper = IANet(3, "resnet18").blocks[0].sia.module
    assert paper.appearance.contexts == (1, 2, 3) and not paper.appearance.scale_dot_products


@pytest.mark.parametrize("formulation", ["paper", "authors"])
def test_every_row_of_the_fused_map_is_within_exp_max_location_of_uniform(formulation):
    """With the product fusion, S_ij = softmax_j(S^A_ij S^L_ij) and 0 <= S^A_ij S^L_ij <= S^L_ij, so a row
    of S has max / min <= exp(max_j S^L_ij) <= exp(max S^L), whatever the features."""
    location = LocationRelation((0.8, 1.6), reference_height=None)  # a peaked S^L: a loose bound
    sia = SpatialInteractionAggregation(formulation=formulation, location=location)
    for scale in (0.1, 1.0, 30.0):  # flat to one-hot appearance maps
        features = torch.randn(3, 6, 5, 4, dtype=torch.float64) * scale
        maps = sia.relation_maps(features)
        semantic, s_l = maps["semantic"], maps["location"]
        ratio = semantic.amax(dim=-1) / semantic.amin(dim=-1)  # (B, M)
        assert (ratio <= torch.exp(s_l.amax(dim=-1)) * (1 + 1e-12)).all()
        assert ratio.max() <= math.exp(s_l.max()) * (1 + 1e-12)
    k1 = maps["appearance_k1"]
    assert (k1.amax(dim=-1) / k1.amin(dim=-1)).min() > math.exp(s_l.max())  # S^A_1 itself is not flat


@pytest.mark.parametrize("formulation", ["paper", "authors"])
def test_relation_maps_and_aggregation_are_float32_under_autocast(formulation):
    features = torch.randn(2, 64, 16, 8)  # the paper's stage-3 map size
    sia = SpatialInteractionAggregation(formulation=formulation, location=paper_location_relation(3))
    cia = ChannelInteractionAggregation()
    reference = sia.relation_maps(features)
    reference_out, reference_channel = sia(features), cia(features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps = sia.relation_maps(features)
        out, channel_out = sia(features), cia(features)
        channel = cia.channel_relation(features)
        low_input = sia.relation_maps(features.bfloat16())
    for name, relation in maps.items():
        assert relation.dtype == torch.float32, name
        torch.testing.assert_close(relation, reference[name], rtol=1e-5, atol=1e-7)
    assert channel.dtype == out.dtype == channel_out.dtype == torch.float32
    torch.testing.assert_close(channel, cia.channel_relation(features))
    torch.testing.assert_close(out, reference_out)
    torch.testing.assert_close(channel_out, reference_channel)
    rounded = sia.relation_maps(features.bfloat16().float())
    assert low_input["spatial"].dtype == torch.float32
    torch.testing.assert_close(low_input["spatial"], rounded["spatial"])
    # what float32 preserves: the spread of each nearly uniform row, which bfloat16 rounds away
    rows = reference["semantic"].reshape(-1, 128)
    assert min(len(row.unique()) for row in rows) > 4
    assert max(len(row.bfloat16().unique()) for row in rows) <= 2


def test_ianet_under_autocast_keeps_float32_relation_maps():
    model = IANet(3, "resnet18", store_relations=True).eval()
    images = torch.randn(*TINY_IMAGE)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        embedding = model(images)
    assert embedding.shape == (2, 512)
    for block in model.blocks:
        assert block.sia.last_relation.dtype == block.cia.last_relation.dtype == torch.float32
        rows = block.sia.last_relation.sum(dim=-1)  # (B, M)
        assert torch.allclose(rows, torch.ones_like(rows))


# --------------------------------------------------------------------------- Eqs. 7-8


def test_cia_matches_the_naive_formula():
    features = torch.randn(2, 5, 4, 3, dtype=torch.float64) * 0.3
    flat = features.reshape(2, 5, 12)
    expected_relation = torch.zeros(2, 5, 5, dtype=torch.float64)
    expected = torch.zeros_like(flat)
    for b in range(2):
        for m in range(5):
            scores = torch.stack([flat[b, m] @ flat[b, n] for n in range(5)])
            expected_relation[b, m] = torch.exp(scores) / torch.exp(scores).sum()  # Eq. 7
            expected[b, m] = sum(expected_relation[b, m, n] * flat[b, n] for n in range(5))  # Eq. 8
    cia = ChannelInteractionAggregation(store_relations=True)
    assert torch.allclose(cia(features), expected.reshape_as(features))
    assert torch.allclose(cia.last_relation, expected_relation)


# --------------------------------------------------------------------------- Eq. 9 and arrangements


def _blocks(channels: int) -> list[torch.nn.Module]:
    return [SIABlock(channels), CIABlock(channels)] + [IABlock(channels, a) for a in ARRANGEMENTS]


@pytest.mark.parametrize("train", [True, False])
def test_every_block_is_the_identity_at_initialisation(train):
    features = torch.randn(2, 6, 4, 3)
    for block in _blocks(6):
        block.train(train)
        assert torch.equal(block(features), features), block


def test_blocks_change_the_input_once_bn_is_non_zero():
    features = torch.randn(2, 6, 4, 3)
    for block in _blocks(6):
        for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            torch.nn.init.ones_(bn.weight)
        out = block(features)
        assert out.shape == features.shape
        assert not torch.allclose(out, features), block


def test_arrangements_compose_the_blocks_in_order():
    features = torch.randn(2, 6, 4, 3)
    blocks = {a: IABlock(6, a) for a in ("sia-cia", "cia-sia", "parallel")}
    for block in blocks.values():
        for bn in (m for m in block.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            torch.nn.init.uniform_(bn.weight)
        block.eval()
    sia_cia = blocks["sia-cia"]
    assert torch.allclose(sia_cia(features), sia_cia.cia(sia_cia.sia(features)))
    cia_sia = blocks["cia-sia"]
    assert torch.allclose(cia_sia(features), cia_sia.sia(cia_sia.cia(features)))
    par = blocks["parallel"]
    assert torch.allclose(par(features), par.sia(features) + par.cia(features) - features, atol=1e-6)
    assert IABlock(6, "sia").cia is None and IABlock(6, "cia").sia is None
    with pytest.raises(ValueError, match="arrangement"):
        IABlock(6, "sia+cia")


# --------------------------------------------------------------------------- IANet


def test_ianet_train_and_eval_outputs_work_with_both_criteria():
    model = IANet(7, "resnet18")
    images, pids = torch.randn(*TINY_IMAGE), torch.tensor([1, 4])
    outputs = model(images)
    assert outputs["feat"].shape == outputs["bn_feat"].shape == (2, 512)
    assert outputs["logits"].shape == (2, 7)
    ce = IANetCriterion(7)(outputs, {"pid": pids})["ce"]
    assert torch.allclose(ce, torch.nn.functional.cross_entropy(outputs["logits"], pids))
    terms = BaselineCriterion(7)(outputs, {"pid": pids})
    (ce + sum(terms.values())).backward()
    sia_bn = model.blocks[0].sia.bn.weight
    assert sia_bn.grad is not None and sia_bn.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (2, 512)


def test_ianet_at_init_embeds_like_its_backbone_without_blocks():
    model = IANet(5, "resnet18").eval()
    images = torch.randn(*TINY_IMAGE)
    with torch.no_grad():
        with_blocks = model(images)
        x = model.backbone.stem(images)
        for stage in model.backbone.stages:
            for layer in stage:
                x = x if isinstance(layer, IABlock) else layer(x)
        without_blocks = model.neck(x.mean(dim=(2, 3)))
    assert torch.allclose(with_blocks, without_blocks)


@pytest.mark.parametrize("stages", [(1,), (2,), (3,), (4,), (2, 3), (1, 2, 3, 4)])
def test_blocks_can_sit_after_any_stage(stages):
    model = IANet(3, "resnet18", stages=stages).eval()
    assert len(model.blocks) == len(stages)
    channels = [64, 128, 256, 512]
    assert [b.sia.bn.num_features for b in model.blocks] == [channels[s - 1] for s in stages]
    with torch.no_grad():
        assert model(torch.randn(*TINY_IMAGE)).shape == (2, 512)


def test_blocks_after_every_residual_block_of_stages_2_and_3():
    model = IANet(3, "resnet18", stages=(2, 3), placement="every_block")
    assert len(model.blocks) == 4  # resnet18 has 2 residual blocks per stage
    stage2 = model.backbone.stages[1]
    assert [type(m).__name__ for m in stage2] == ["BasicBlock", "IABlock", "BasicBlock", "IABlock"]
    assert model(torch.randn(*TINY_IMAGE))["logits"].shape == (2, 3)


def test_non_resnet_backbones_take_blocks_after_whole_stages():
    model = IANet(3, "mobilenet_v2").eval()
    assert [b.cia.bn.num_features for b in model.blocks] == [32, 96]
    with torch.no_grad():
        assert model(torch.randn(*TINY_IMAGE)).shape == (2, 1280)
    with pytest.raises(ValueError, match="every_block"):
        IANet(3, "mobilenet_v2", placement="every_block")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"stages": (0,)},
        {"stages": (2, 2)},
        {"stages": ()},
        {"placement": "x"},
        {"relation": "shape"},
        {"fusion": "min"},
        {"contexts": ()},
        {"formulation": "code"},
        {"formulation": "authors", "contexts": (1, 2, 3)},
        {"formulation": "authors", "scale_dot_products": False},
        {"formulation": "authors", "relation": "appearance"},
        {"formulation": "authors", "fusion": "max"},
    ],
)
def test_ianet_rejects_bad_options(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs)) if len(kwargs) == 1 else "authors"):
        IANet(3, "resnet18", **kwargs)


def test_stored_relation_maps_have_the_right_shapes_and_rows_sum_to_one():
    model = IANet(3, "resnet18", store_relations=True).eval()
    with torch.no_grad():
        model(torch.randn(*TINY_IMAGE))
    for block, (h, w), channels in zip(model.blocks, [(8, 4), (4, 2)], [128, 256]):
        spatial, channel = block.sia.last_relation, block.cia.last_relation
        assert spatial.shape == (2, h * w, h * w) and channel.shape == (2, channels, channels)
        assert torch.allclose(spatial.sum(dim=-1), torch.ones(2, h * w))
        assert torch.allclose(channel.sum(dim=-1), torch.ones(2, channels))
        assert set(block.sia.last_relations) == {
            "appearance_k1",
            "appearance_k2",
            "appearance_k3",
            "appearance",
            "location",
            "semantic",
        }


def test_relation_maps_returns_inputs_and_maps_and_switches_storage_off():
    model = IANet(3, "resnet18").eval()
    maps = model.relation_maps(torch.randn(*TINY_IMAGE))
    assert len(maps) == 2
    first = maps[0]
    assert first["features"].shape == (2, 128, 8, 4)
    assert torch.equal(first["spatial"], first["semantic"])
    k5 = single_context_appearance_relation(first["features"], 5)  # Fig. 4's K = 5 from the same input
    assert k5.shape == (2, 32, 32)
    point = relation_of_point(first["appearance_k1"], 8, 4, y=2, x=1)
    assert torch.equal(point, first["appearance_k1"][:, 2 * 4 + 1].reshape(2, 8, 4))
    assert not any(b.sia.module.store_relations for b in model.blocks)
    with pytest.raises(ValueError, match="outside"):
        relation_of_point(first["spatial"], 8, 4, y=8, x=0)


def test_param_groups_put_ia_blocks_at_the_base_learning_rate():
    model = IANet(3, "resnet18")
    groups = {g["name"]: g for g in model.param_groups(1.0, backbone_lr_mult=0.1)}
    block_params = {id(p) for b in model.blocks for p in b.parameters()}
    backbone_params = {id(p) for p in groups["backbone"]["params"]}
    assert groups["backbone"]["lr"] == pytest.approx(0.1)
    assert not block_params & backbone_params
    at_base_lr = {id(p) for g in groups.values() if g["lr"] == 1.0 for p in g["params"]}
    assert block_params <= at_base_lr


# --------------------------------------------------------------------------- memory


def test_relation_memory_counts_the_maps_autograd_keeps():
    # K=1 appearance only: the one softmax output (B, M, M) is all SIA keeps; CIA keeps its (B, C, C) map.
    batch, channels = 3, 7
    memory = relation_memory(batch, 64, 32, stage=3, channels=channels, contexts=(1,), relation="appearance")
    positions = (64 // 16) * (32 // 16)
    assert memory.spatial_bytes == batch * positions**2 * 4
    assert memory.channel_bytes == batch * channels**2 * 4
    assert memory.total_bytes == memory.spatial_bytes + memory.channel_bytes + memory.other_bytes
    assert "MiB" in str(memory)


def test_relation_memory_grows_with_batch_and_quadratically_with_positions():
    small = relation_memory(2, 64, 32, stage=2, channels=4)
    assert relation_memory(4, 64, 32, stage=2, channels=4).spatial_bytes > 1.9 * small.spatial_bytes
    larger = relation_memory(2, 128, 64, stage=2, channels=4)  # 4x the positions
    assert larger.spatial_bytes > 15 * small.spatial_bytes
