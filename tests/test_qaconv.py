"""QAConv (Liao & Shao 2020): matching, class memory, loss, Random Block, and the Table 2 loss heads."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from reidbook.data.augment import RandomBlock, random_block
from reidbook.evaluation.pairwise import pairwise_distance_matrix
from reidbook.models.backbones import build_backbone
from reidbook.models.qaconv import (
    ClassMemory,
    QAConvCriterion,
    QAConvNet,
    QueryAdaptiveConv,
    memory_matching_loss,
)
from reidbook.models.qaconv_losses import (
    TABLE2_LOSSES,
    ArcFaceCriterion,
    CenterHead,
    CenterLossCriterion,
    CosineHead,
    FeatureMemoryCriterion,
    FeatureMemoryHead,
    PooledFeatureNet,
    SoftmaxCriterion,
    SoftmaxHead,
    additive_angular_margin,
    build_loss_comparison,
    build_pooled_model,
    pooled_criterion,
)


def unit_maps(n: int, d: int = 6, h: int = 3, w: int = 2, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, h, w, generator=generator), dim=1)


def randomise_head(matcher: QueryAdaptiveConv, seed: int = 0) -> None:
    """Give the BN-FC-BN block non-trivial statistics and weights, then switch to eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in (matcher.bn, matcher.logit_bn):
            bn.running_mean.copy_(torch.randn(1, generator=generator))
            bn.running_var.copy_(torch.rand(1, generator=generator) + 0.5)
            bn.weight.copy_(torch.randn(1, generator=generator))
            bn.bias.copy_(torch.randn(1, generator=generator))
        matcher.fc.weight.copy_(torch.randn(matcher.fc.weight.shape, generator=generator))
    matcher.eval()


def naive_similarity_vector(q: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Section 3.1 with s = 1, location by location: best cosine of each query location over the gallery
    locations, then of each gallery location over the query locations."""
    d, h, w = q.shape
    q_locs = [q[:, i, j] for i in range(h) for j in range(w)]
    g_locs = [g[:, i, j] for i in range(h) for j in range(w)]
    cos = [[float(torch.dot(a, b) / (a.norm() * b.norm())) for b in g_locs] for a in q_locs]
    from_query = [max(row) for row in cos]
    from_gallery = [max(cos[i][j] for i in range(len(q_locs))) for j in range(len(g_locs))]
    return torch.tensor(from_query + from_gallery)


# ------------------------------------------------------------------------------------------ matching


@pytest.mark.parametrize("pairs_per_chunk", [1, 5, 1000])
def test_similarity_vectors_equal_naive_max_cosine(pairs_per_chunk: int) -> None:
    query, gallery = unit_maps(3, seed=1), unit_maps(4, seed=2)
    matcher = QueryAdaptiveConv((3, 2), pairs_per_chunk=pairs_per_chunk)
    vectors = matcher.similarity_vectors(query, gallery)  # (3, 4, 12)
    assert vectors.shape == (3, 4, 12)
    for a in range(3):
        for b in range(4):
            torch.testing.assert_close(vectors[a, b], naive_similarity_vector(query[a], gallery[b]))


def test_matching_is_a_convolution_with_query_kernels() -> None:
    """The matrix product equals F.conv2d of the gallery map with the query's [hw, d, 1, 1] kernels."""
    query, gallery = unit_maps(1, seed=3), unit_maps(1, seed=4)
    kernels = query[0].flatten(1).t().reshape(6, 6, 1, 1)  # (hw, d, 1, 1)
    conv = F.conv2d(gallery, kernels)[0].flatten(1)  # (hw_q, hw_g)
    vector = QueryAdaptiveConv((3, 2)).similarity_vectors(query, gallery)[0, 0]
    torch.testing.assert_close(vector, torch.cat([conv.max(dim=1).values, conv.max(dim=0).values]))


def test_batched_training_scores_equal_test_path_scores() -> None:
    batch, memory = unit_maps(5, seed=5), unit_maps(7, seed=6)
    matcher = QueryAdaptiveConv((3, 2), pairs_per_chunk=4)
    randomise_head(matcher)
    training_block = matcher.logits(batch, memory)  # (5, 7), the criterion's call
    one_by_one = torch.stack(
        [
            torch.stack([matcher.logits(batch[i : i + 1], memory[j : j + 1])[0, 0] for j in range(7)])
            for i in range(5)
        ]
    )
    torch.testing.assert_close(training_block, one_by_one)
    dist = pairwise_distance_matrix(matcher.score, batch, memory, q_chunk=2, g_chunk=3, progress=False)
    torch.testing.assert_close(-dist, torch.sigmoid(training_block))
    assert training_block.std() > 0.01  # the head is not trivial, so the comparison could fail


def test_head_is_bn_fc_bn_then_sigmoid() -> None:
    matcher = QueryAdaptiveConv((3, 2))
    randomise_head(matcher, seed=7)
    query, gallery = unit_maps(2, seed=8), unit_maps(3, seed=9)
    vectors = matcher.similarity_vectors(query, gallery)  # (2, 3, 12)
    bn, fc, logit_bn = matcher.bn, matcher.fc, matcher.logit_bn

    def affine_bn(x: torch.Tensor, layer: torch.nn.BatchNorm1d) -> torch.Tensor:
        normalised = (x - layer.running_mean) / torch.sqrt(layer.running_var + layer.eps)
        return normalised * layer.weight + layer.bias

    expected = affine_bn(affine_bn(vectors, bn) @ fc.weight[0] + fc.bias, logit_bn)
    torch.testing.assert_close(matcher.score(query, gallery), torch.sigmoid(expected))


def test_correspondences_recover_a_permutation_of_locations() -> None:
    query = unit_maps(1, d=16, h=4, w=2, seed=10)[0]  # (16, 4, 2)
    permutation = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    gallery = query.flatten(1)[:, permutation].view(16, 4, 2)  # gallery location k = query location perm[k]
    found = QueryAdaptiveConv((4, 2)).correspondences(query, gallery)
    best = found.rows * 2 + found.cols  # (4, 2) flat gallery index per query location
    assert torch.equal(permutation[best.flatten()], torch.arange(8))
    torch.testing.assert_close(found.similarity, torch.ones(4, 2))


def test_mismatched_map_sizes_are_rejected() -> None:
    with pytest.raises(ValueError, match="feature maps"):
        QueryAdaptiveConv((3, 2)).logits(unit_maps(1, h=4), unit_maps(1))


# ------------------------------------------------------------------------------------------ memory and loss


def test_memory_update_replaces_exactly_the_batch_classes() -> None:
    memory = ClassMemory(6, channels=6, map_size=(3, 2))
    before = torch.randn(6, 6, 3, 2)
    memory.maps.copy_(before)
    batch = unit_maps(3, seed=11).requires_grad_()
    memory.update(batch, torch.tensor([2, 5, 2]))
    torch.testing.assert_close(memory.maps[2], batch[2].detach())  # the newest sample of class 2 wins
    torch.testing.assert_close(memory.maps[5], batch[1].detach())
    untouched = [0, 1, 3, 4]
    torch.testing.assert_close(memory.maps[untouched], before[untouched])
    assert memory.seen.tolist() == [False, False, True, False, False, True]
    assert not memory.maps.requires_grad


def test_focal_bce_equals_eq1_on_hand_cases() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])  # p = [[1/2, 3/4], [3/4, 1/2]]
    targets = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # row 1: positive p=1/2 -> (1/2)^2 ln 2; negative p=3/4 -> p^=1/4 -> (3/4)^2 ln 4
    # row 2: positive p=3/4 -> (1/4)^2 ln(4/3); positive p=1/2 -> (1/2)^2 ln 2
    row1 = 0.25 * math.log(2) + 0.5625 * math.log(4)
    row2 = 0.0625 * math.log(4 / 3) + 0.25 * math.log(2)
    expected = (row1 + row2) / 2  # Eq. 1: sum over classes, mean over the batch
    assert memory_matching_loss(logits, targets).item() == pytest.approx(expected, rel=1e-6)
    plain_bce = 2 * math.log(2)  # gamma = 0: ordinary BCE summed over the classes
    assert memory_matching_loss(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), gamma=0).item() == (
        pytest.approx(plain_bce, rel=1e-6)
    )


@pytest.fixture(scope="module")
def small_model() -> QAConvNet:
    torch.manual_seed(0)
    return QAConvNet(num_classes=6, backbone="resnet18", image_size=(64, 32))


def test_model_outputs_normalised_maps(small_model: QAConvNet) -> None:
    images = torch.randn(2, 3, 64, 32)
    small_model.train()
    fmap = small_model(images)["fmap"]
    assert fmap.shape == (2, 128, 4, 2) and small_model.map_size == (4, 2)
    torch.testing.assert_close(fmap.norm(dim=1), torch.ones(2, 4, 2))
    small_model.eval()
    assert small_model(images).shape == (2, 128, 4, 2)
    paper_neck = QAConvNet(num_classes=2, backbone="resnet18", image_size=(64, 32), neck_kernel=1)
    assert paper_neck.neck.conv.kernel_size == (1, 1) and small_model.neck.conv.kernel_size == (3, 3)


def test_criterion_masks_unseen_classes_and_updates_memory(small_model: QAConvNet) -> None:
    small_model.memory.reset()
    randomise_head(small_model.matcher, seed=12)  # eval-mode BN: the loss depends on the seen pairs only
    criterion = QAConvCriterion(small_model)
    fmap = unit_maps(3, d=128, h=4, w=2, seed=13).requires_grad_()
    first = criterion({"fmap": fmap}, {"pid": torch.tensor([0, 1, 4])})["focal_bce"]
    assert first.item() == 0.0  # nothing in memory yet
    assert small_model.memory.seen.nonzero().flatten().tolist() == [0, 1, 4]

    batch = unit_maps(2, d=128, h=4, w=2, seed=14).requires_grad_()
    pids = torch.tensor([1, 3])  # class 3 is not in memory yet: only its negatives count
    seen = torch.tensor([0, 1, 4])
    logits = small_model.matcher.logits(batch, small_model.memory.maps[seen])  # (2, 3)
    expected = memory_matching_loss(logits, (pids.unsqueeze(1) == seen).float())
    small_model.memory.maps[[2, 3, 5]] = unit_maps(3, d=128, h=4, w=2, seed=15)  # garbage in unseen rows
    loss = criterion({"fmap": batch}, {"pid": pids})["focal_bce"]
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert batch.grad is not None and batch.grad.abs().sum() > 0
    torch.testing.assert_close(small_model.memory.maps[3], batch[1].detach())
    small_model.matcher.train()


def test_map_stride_8_doubles_the_map_height_and_width(small_model: QAConvNet) -> None:
    torch.manual_seed(1)
    fine = QAConvNet(num_classes=6, backbone="resnet18", image_size=(64, 32), map_stride=8)
    assert small_model.map_size == (4, 2) and fine.map_size == (8, 4)
    assert fine.matcher.fc.in_features == 2 * 8 * 4 and tuple(fine.memory.maps.shape[2:]) == (8, 4)
    def conv_strides(model: QAConvNet) -> set[tuple[int, int]]:
        return {m.stride for m in model.backbone[-1].modules() if isinstance(m, torch.nn.Conv2d)}  # stage 3

    assert conv_strides(fine) == {(1, 1)} and (2, 2) in conv_strides(small_model)
    fine.eval()
    with torch.no_grad():
        maps = fine(torch.randn(2, 3, 64, 32))
    assert maps.shape == (2, 128, 8, 4)
    torch.testing.assert_close(maps.norm(dim=1), torch.ones(2, 8, 4))


@pytest.mark.parametrize("map_stride", [4, 32, 1])
def test_invalid_map_stride_is_rejected(map_stride: int) -> None:
    with pytest.raises(ValueError, match="map_stride"):
        QAConvNet(num_classes=2, backbone="resnet18", image_size=(64, 32), map_stride=map_stride)


def test_match_is_the_matchers_logits(small_model: QAConvNet) -> None:
    randomise_head(small_model.matcher, seed=21)
    query, gallery = unit_maps(3, d=128, h=4, w=2, seed=22), unit_maps(5, d=128, h=4, w=2, seed=23)
    with torch.no_grad():
        logits = small_model.match(query, gallery)
        expected = small_model.matcher.logits(query, gallery)
    assert logits.shape == (3, 5)
    torch.testing.assert_close(logits, expected)
    assert logits.std() > 0  # a non-trivial head: the check is not one between two constants
    small_model.matcher.train()


# ------------------------------------------------------------------------------------------ Random Block


def square_of(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the bounding box of a 2-D boolean mask."""
    rows, cols = mask.nonzero(as_tuple=True)
    top, left = int(rows.min()), int(cols.min())
    return top, left, int(rows.max()) - top + 1, int(cols.max()) - left + 1


def test_random_block_pastes_one_in_bounds_square_per_image() -> None:
    images = torch.zeros(300, 3, 16, 8, dtype=torch.uint8)
    out = random_block(images, generator=torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert images.eq(0).all()  # the input is not modified
    sides, bottoms, rights = [], [], []
    for image in out:
        white = image.eq(255)
        assert torch.equal(white[0], white[1]) and torch.equal(white[0], white[2])
        top, left, height, width = square_of(white[0])
        assert height == width and white[0].sum() == height * width  # a full, unclipped square
        sides.append(height)
        bottoms.append(top + height)
        rights.append(left + width)
    assert min(sides) >= 1 and max(sides) == 6  # up to int(0.8 * 8) pixels
    assert max(bottoms) == 16 and max(rights) == 8  # positions reach the image's far edges


def test_random_block_single_float_image_and_seeding() -> None:
    image = torch.zeros(3, 20, 10)
    first, second = RandomBlock(seed=3)(image), RandomBlock(seed=3)(image)
    assert first.shape == image.shape and torch.equal(first, second)
    assert set(first.unique().tolist()) == {0.0, 1.0}
    batch = torch.zeros(8, 3, 20, 10)
    assert not torch.equal(RandomBlock(seed=3)(batch), RandomBlock(seed=4)(batch))
    untouched = random_block(image, p=0.0)
    assert torch.equal(untouched, image)
    with pytest.raises(ValueError, match="max_frac"):
        RandomBlock(max_frac=1.5)


# ------------------------------------------------------------------------------------------ Table 2 losses


def test_arc_margin_widens_only_the_target_angle() -> None:
    cosine = torch.tensor([[0.5, 0.2, -0.1]])
    targets = torch.tensor([0])
    out = additive_angular_margin(cosine, targets, margin=0.5)
    assert out[0, 0].item() == pytest.approx(math.cos(math.acos(0.5) + 0.5), rel=1e-6)
    torch.testing.assert_close(out[0, 1:], cosine[0, 1:])
    no_margin = ArcFaceCriterion(scale=10.0, margin=0.0)({"cosine": cosine}, {"pid": targets})["arc"]
    torch.testing.assert_close(no_margin, F.cross_entropy(10.0 * cosine, targets))


def test_center_loss_is_half_squared_distance_to_the_class_centre() -> None:
    head = CenterHead(2, 3)
    with torch.no_grad():
        head.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]]))
    feat = torch.tensor([[1.0, 0.0], [1.0, 3.0]])
    terms = CenterLossCriterion(head, center_weight=0.5)(
        {"feat": feat, "logits": torch.zeros(2, 3)}, {"pid": torch.tensor([0, 1])}
    )
    assert terms["center"].item() == pytest.approx(0.5 * (0.5 * 1.0 + 0.5 * 4.0) / 2)
    assert terms["ce"].item() == pytest.approx(math.log(3))


def test_feature_memory_loss_ignores_unseen_classes() -> None:
    head = FeatureMemoryHead(4, 5).eval()  # eval-mode BN: identity on the cosines
    criterion = FeatureMemoryCriterion(head)
    criterion({"feat_n": F.normalize(torch.randn(2, 4), dim=1)}, {"pid": torch.tensor([0, 2])})
    feat_n = F.normalize(torch.randn(2, 4), dim=1)
    cosine = feat_n @ head.memory[[0, 2]].t()
    targets = torch.tensor([[1.0, 0.0], [0.0, 0.0]])  # pid 3 is unseen: only negatives
    expected = memory_matching_loss(cosine / math.sqrt(1 + head.bn.eps), targets)
    head.memory[[1, 3, 4]] = 5.0  # unseen rows must not matter
    loss = criterion({"feat_n": feat_n}, {"pid": torch.tensor([0, 3])})["focal_bce"]
    torch.testing.assert_close(loss, expected)
    assert head.seen.tolist() == [True, False, True, True, False]


@pytest.mark.parametrize("loss", TABLE2_LOSSES)
def test_loss_comparison_models_train_one_step(loss: str) -> None:
    torch.manual_seed(0)
    model, criterion = build_loss_comparison(loss, num_classes=4, backbone="resnet18")
    batch = {"img": torch.randn(4, 3, 64, 32), "pid": torch.tensor([0, 1, 1, 2])}
    for _ in range(2):  # the second step of the memory loss has seen classes
        terms = criterion(model(batch["img"]), batch)
        total = sum(terms.values())
        assert torch.isfinite(total)
        total.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.parameters())
    model.eval()
    embedding = model(batch["img"])
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(4))


HEADS = {"softmax": SoftmaxHead, "arc": CosineHead, "center": CenterHead, "memory": FeatureMemoryHead}
CRITERIA = {
    "softmax": SoftmaxCriterion,
    "arc": ArcFaceCriterion,
    "center": CenterLossCriterion,
    "memory": FeatureMemoryCriterion,
}


@pytest.mark.parametrize("loss", TABLE2_LOSSES)
def test_pooled_model_and_criterion_fit_each_other(loss: str) -> None:
    torch.manual_seed(0)
    backbone = build_backbone("resnet18")
    model = build_pooled_model(loss, 5, backbone)
    assert isinstance(model, PooledFeatureNet) and model.backbone is backbone
    assert type(model.head) is HEADS[loss]
    criterion = pooled_criterion(loss, model)
    assert type(criterion) is CRITERIA[loss]
    batch = {"img": torch.randn(4, 3, 32, 16), "pid": torch.tensor([0, 3, 3, 1])}
    terms = criterion(model(batch["img"]), batch)
    assert all(torch.isfinite(t) for t in terms.values())


def test_stateful_pooled_criteria_are_bound_to_the_models_head() -> None:
    torch.manual_seed(0)
    batch = {"img": torch.randn(4, 3, 32, 16), "pid": torch.tensor([0, 3, 3, 1])}

    memory_model = build_pooled_model("memory", 5, "resnet18")
    memory_criterion = pooled_criterion("memory", memory_model)
    assert memory_criterion.head is memory_model.head
    memory_criterion(memory_model(batch["img"]), batch)
    assert memory_model.head.seen.tolist() == [True, True, False, True, False]  # the model's memory

    center_model = build_pooled_model("center", 5, "resnet18")
    center_criterion = pooled_criterion("center", center_model)
    assert center_criterion.head is center_model.head
    center_criterion(center_model(batch["img"]), batch)["center"].backward()
    grad = center_model.head.centers.grad
    assert grad is not None
    assert grad[[0, 1, 3]].abs().sum(dim=1).gt(0).all() and grad[[2, 4]].eq(0).all()  # the model's centres


def test_unknown_pooled_loss_is_rejected() -> None:
    with pytest.raises(ValueError, match="softmax"):
        build_pooled_model("triplet", 5, "resnet18")
    model = build_pooled_model("softmax", 5, "resnet18")
    with pytest.raises(ValueError, match="'triplet'"):
        pooled_criterion("triplet", model)
