"""Losses against naive transcriptions of their formulas."""

import math

import pytest
import torch

from reidbook.losses import (
    CrossEntropyLabelSmooth,
    FocalLoss,
    TripletLoss,
    batch_hard_mining,
    binary_focal_loss,
    pairwise_euclidean,
)


def test_label_smoothed_cross_entropy_matches_hand_computed_case():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    eps, n = 0.3, 3
    expected = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        log_z = math.log(sum(math.exp(v) for v in row))
        for i, v in enumerate(row):
            q = 1 - (n - 1) / n * eps if i == y else eps / n
            expected -= q * (v - log_z)
    expected /= 2
    loss = CrossEntropyLabelSmooth(n, eps)(logits, targets)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_label_smoothing_zero_is_plain_cross_entropy():
    logits, targets = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    loss = CrossEntropyLabelSmooth(4, 0.0)(logits, targets)
    assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits, targets).item(), rel=1e-6)


def test_label_smoothing_rejects_wrong_class_count():
    with pytest.raises(ValueError, match="classes"):
        CrossEntropyLabelSmooth(5)(torch.randn(2, 4), torch.tensor([0, 1]))


def naive_batch_hard(feat: torch.Tensor, pids: torch.Tensor, margin: float | None) -> float:
    """Loop over anchors: farthest positive, closest negative (soft margin when margin is None)."""
    total = 0.0
    for a in range(len(feat)):
        d_pos, d_neg = 0.0, math.inf
        for j in range(len(feat)):
            d = math.sqrt(sum((x - y) ** 2 for x, y in zip(feat[a].tolist(), feat[j].tolist())))
            if pids[j] == pids[a]:
                d_pos = max(d_pos, d)
            else:
                d_neg = min(d_neg, d)
        if margin is None:
            total += math.log1p(math.exp(d_pos - d_neg))
        else:
            total += max(0.0, d_pos - d_neg + margin)
    return total / len(feat)


@pytest.mark.parametrize("margin", [0.3, 5.0, None])
def test_batch_hard_triplet_equals_naive_loop(margin):
    torch.manual_seed(0)
    feat = torch.randn(12, 5)
    pids = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    loss = TripletLoss(margin or 0.0, soft_margin=margin is None)(feat, pids)
    assert loss.item() == pytest.approx(naive_batch_hard(feat, pids, margin), rel=1e-5)


def test_triplet_is_zero_when_identities_are_far_apart():
    feat = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 0.0], [10.1, 0.0]])
    pids = torch.tensor([0, 0, 1, 1])
    assert TripletLoss(0.3)(feat, pids).item() == 0.0


def test_triplet_gradient_is_finite_with_duplicate_features():
    feat = torch.ones(4, 3, requires_grad=True)
    TripletLoss(0.3)(feat, torch.tensor([0, 0, 1, 1])).backward()
    assert torch.isfinite(feat.grad).all()


def test_pairwise_euclidean_matches_cdist():
    x, y = torch.randn(6, 4), torch.randn(3, 4)
    assert torch.allclose(pairwise_euclidean(x, y), torch.cdist(x, y), atol=1e-5)


def test_batch_hard_mining_without_negatives_gives_infinity():
    d_ap, d_an = batch_hard_mining(torch.tensor([[0.0, 2.0], [2.0, 0.0]]), torch.tensor([1, 1]))
    assert d_ap.tolist() == [2.0, 2.0]
    assert torch.isinf(d_an).all()


def test_binary_focal_loss_matches_formula():
    logits = torch.tensor([2.0, -1.0, 0.5])
    targets = torch.tensor([1.0, 1.0, 0.0])
    gamma, alpha = 2.0, 0.25
    expected = 0.0
    for z, t in zip(logits.tolist(), targets.tolist()):
        p = 1 / (1 + math.exp(-z))
        p_t = p if t == 1 else 1 - p
        a_t = alpha if t == 1 else 1 - alpha
        expected += -a_t * (1 - p_t) ** gamma * math.log(p_t)
    loss = binary_focal_loss(logits, targets, gamma=gamma, alpha=alpha, reduction="sum")
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_binary_focal_loss_with_gamma_zero_is_bce():
    logits, targets = torch.randn(7), torch.randint(0, 2, (7,)).float()
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets)
    assert binary_focal_loss(logits, targets, gamma=0.0).item() == pytest.approx(bce.item(), rel=1e-5)


def test_multiclass_focal_loss_matches_formula():
    logits = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 4.0]])
    targets = torch.tensor([1, 0])
    expected = 0.0
    for row, y in zip(logits.tolist(), targets.tolist()):
        p_y = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected += -((1 - p_y) ** 1.5) * math.log(p_y)
    assert FocalLoss(1.5)(logits, targets).item() == pytest.approx(expected / 2, rel=1e-5)
