"""Losses shared by the methods: label-smoothed cross-entropy, batch-hard triplet, focal losses.

Every loss here maps tensors to a scalar; a method's *criterion* (``criterion(outputs, batch) ->
{"name": scalar}``) combines them into named terms that the engine weighs and sums.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CrossEntropyLabelSmooth(nn.Module):
    """Cross-entropy against smoothed identity labels (Szegedy et al. 2016; Luo et al. 2019, Sec. 3.3).

    With ``N`` classes and smoothing ``epsilon`` the target distribution is
    ``q_i = 1 - (N - 1) / N * epsilon`` for the true class ``y`` and ``q_i = epsilon / N`` otherwise,
    and the loss is ``-sum_i q_i log p_i`` averaged over the batch.
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= epsilon < 1.0:
            raise ValueError(f"epsilon must lie in [0, 1), got {epsilon}")
        self.num_classes = num_classes
        self.epsilon = epsilon

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """logits (B, N), targets (B,) long in ``0..N-1`` -> scalar."""
        if logits.shape[1] != self.num_classes:
            raise ValueError(
                f"logits have {logits.shape[1]} classes, the loss was built for {self.num_classes}"
            )
        log_probs = F.log_softmax(logits, dim=1)  # (B, N)
        one_hot = F.one_hot(targets, self.num_classes).to(log_probs.dtype)  # (B, N)
        q = (1.0 - self.epsilon) * one_hot + self.epsilon / self.num_classes  # (B, N)
        return -(q * log_probs).sum(dim=1).mean()


def pairwise_euclidean(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distances between the rows of x (M, D) and y (N, D), (M, N).

    Squared distances are clamped at 1e-12 before the square root so the gradient stays finite.
    """
    sq = x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1).unsqueeze(0) - 2.0 * x @ y.t()  # (M, N)
    return sq.clamp(min=1e-12).sqrt()


def batch_hard_mining(dist: Tensor, pids: Tensor) -> tuple[Tensor, Tensor]:
    """For each anchor, the distance to its farthest positive and to its closest negative.

    Hermans et al., "In Defense of the Triplet Loss" (2017): batch-hard mining. ``dist`` (B, B) and
    ``pids`` (B,); the anchor counts as its own positive (distance 0). Anchors without a negative in the
    batch get an infinite negative distance. Returns ``(d_ap, d_an)``, each (B,).
    """
    same = pids.unsqueeze(0) == pids.unsqueeze(1)  # (B, B)
    d_ap = dist.masked_fill(~same, float("-inf")).amax(dim=1)  # (B,)
    d_an = dist.masked_fill(same, float("inf")).amin(dim=1)  # (B,)
    return d_ap, d_an


class TripletLoss(nn.Module):
    """Batch-hard triplet loss ``mean_a [d(a, p*) - d(a, n*) + margin]_+`` (Hermans et al. 2017),
    or its soft-margin form ``mean_a log(1 + exp(d(a, p*) - d(a, n*)))`` when ``soft_margin=True``.

    Distances are Euclidean between the features given (not normalised).
    """

    def __init__(self, margin: float = 0.3, soft_margin: bool = False) -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be >= 0, got {margin}")
        self.margin = margin
        self.soft_margin = soft_margin

    def forward(self, feat: Tensor, pids: Tensor) -> Tensor:
        """feat (B, D), pids (B,) -> scalar."""
        d_ap, d_an = batch_hard_mining(pairwise_euclidean(feat, feat), pids)  # (B,), (B,)
        if self.soft_margin:
            return F.softplus(d_ap - d_an).mean()
        return F.relu(d_ap - d_an + self.margin).mean()


def focal_weight(p_t: Tensor, gamma: float) -> Tensor:
    """The focal modulating factor ``(1 - p_t)^gamma`` (Lin et al. 2017, Eq. 4)."""
    return (1.0 - p_t).clamp(min=0.0).pow(gamma)


def binary_focal_loss(
    logits: Tensor, targets: Tensor, gamma: float = 2.0, alpha: float | None = None, reduction: str = "mean"
) -> Tensor:
    """Focal-weighted binary cross-entropy ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017, Eq. 5).

    ``logits`` and ``targets`` (in {0, 1}, or soft labels in [0, 1]) have the same shape. ``alpha``
    weighs positives (``1 - alpha`` weighs negatives); ``None`` weighs both by 1. QAConv uses it to
    weigh the binary cross-entropy of its pair scores, where negatives far outnumber positives.
    """
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # -log p_t
    loss = focal_weight(torch.exp(-bce), gamma) * bce
    if alpha is not None:
        loss = (alpha * targets + (1.0 - alpha) * (1.0 - targets)) * loss
    return _reduce(loss, reduction)


class FocalLoss(nn.Module):
    """Multi-class focal loss ``-(1 - p_y)^gamma log p_y`` averaged over the batch (Lin et al. 2017).

    ``gamma = 0`` gives the ordinary cross-entropy.
    """

    def __init__(self, gamma: float = 2.0) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        """logits (B, N), targets (B,) long -> scalar."""
        log_p_y = F.log_softmax(logits, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)  # (B,)
        return -(focal_weight(log_p_y.exp(), self.gamma) * log_p_y).mean()


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
