"""The loss functions QAConv is compared with in Table 2 of Liao & Shao (ECCV 2020, Section 5.3).

All four train the same backbone and describe an image by the output of its final global average pooling;
retrieval uses the cosine similarity of those vectors (eval mode returns them l2-normalised). Each loss is
a *head* (a submodule of :class:`PooledFeatureNet`, so the engine's optimizer trains it and checkpoints
keep it) plus a *criterion* following the engine's contract ``criterion(outputs, batch) -> {name: loss}``:

* ``"softmax"``: a linear classifier and the softmax cross-entropy;
* ``"arc"``: ArcFace (Deng et al., CVPR 2019): cross-entropy on ``s cos(theta_j)``, with the target's angle
  widened by an additive margin m; s = 64 and m = 0.5, the ArcFace defaults the paper says it kept;
* ``"center"``: softmax cross-entropy plus ``lambda`` times the center loss (Wen et al., ECCV 2016)
  ``1/2 ||f - c_y||^2`` averaged over the batch; the centres are learned by gradient descent (as in most
  re-id code) rather than by Wen et al.'s separate moving update; lambda = 0.003 (Wen et al.; the paper
  gives no value);
* ``"memory"``: the class-memory loss of Eqs. 1-2 on vectors: a memory of the newest l2-normalised
  feature of each class, cosine similarities to it, a ``BatchNorm1d(1)`` turning them into logits (our
  assumption: the paper only says the same Eq. 1 is applied to the cosines; a raw cosine in [-1, 1]
  would give sigmoid probabilities confined to [0.27, 0.73]), focal BCE over the seen classes.

:func:`build_loss_comparison` builds the (model, criterion) pair for one of :data:`TABLE2_LOSSES`
(:func:`build_pooled_model` and :func:`pooled_criterion` separately).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbones import Backbone, build_backbone
from .qaconv import memory_matching_loss, replace_by_newest

TABLE2_LOSSES = ("softmax", "arc", "center", "memory")


class PooledFeatureNet(nn.Module):
    """Backbone -> global average pooling -> ``feat`` (B, D), followed by a loss ``head``.

    Training mode returns ``{"feat": (B, D), **head(feat)}``; eval mode the l2-normalised ``feat``, so that
    dot products (or :func:`reidbook.evaluation.cosine_distance`) give the cosine similarity.
    """

    def __init__(
        self,
        head: nn.Module,
        backbone: str | Backbone = "resnet50",
        *,
        pretrained: bool = False,
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
        self.backbone = backbone
        self.head = head

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def forward(self, img: Tensor) -> dict[str, Tensor] | Tensor:
        feat = self.backbone(img).mean(dim=(2, 3))  # (B, D)
        if not self.training:
            return F.normalize(feat, dim=1)
        return {"feat": feat, **self.head(feat)}


# ------------------------------------------------------------------------------------------ softmax


class SoftmaxHead(nn.Module):
    """Linear identity classifier: ``{"logits": (B, C)}``."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, feat: Tensor) -> dict[str, Tensor]:
        return {"logits": self.classifier(feat)}


class SoftmaxCriterion(nn.Module):
    """``{"ce": softmax cross-entropy of the logits}``."""

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"ce": F.cross_entropy(outputs["logits"], batch["pid"])}


# ------------------------------------------------------------------------------------------ ArcFace


class CosineHead(nn.Module):
    """Cosines between the feature and each class's weight vector: ``{"cosine": (B, C)}`` in [-1, 1]."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, feat: Tensor) -> dict[str, Tensor]:
        return {"cosine": F.normalize(feat, dim=1) @ F.normalize(self.weight, dim=1).t()}


def additive_angular_margin(cosine: Tensor, targets: Tensor, margin: float) -> Tensor:
    """Replace each target cosine cos(theta) by cos(theta + m) (ArcFace, Eq. 3 of Deng et al.).

    Where theta + m would pass pi (cos(theta + m) would start to increase), ``cos(theta) - m sin(m)`` is used
    instead, as in the ArcFace code, so the target logit keeps decreasing with theta.
    """
    cos_t = cosine.gather(1, targets.unsqueeze(1))  # (B, 1)
    sin_t = (1.0 - cos_t.pow(2)).clamp(min=0.0).sqrt()
    widened = cos_t * math.cos(margin) - sin_t * math.sin(margin)  # cos(theta + m)
    fallback = cos_t - margin * math.sin(margin)
    target_logit = torch.where(cos_t > math.cos(math.pi - margin), widened, fallback)
    return cosine.scatter(1, targets.unsqueeze(1), target_logit.to(cosine.dtype))


class ArcFaceCriterion(nn.Module):
    """``{"arc": cross-entropy of s * [cos(theta_y + m), cos(theta_j) for j != y]}`` (Deng et al. 2019)."""

    def __init__(self, scale: float = 64.0, margin: float = 0.5) -> None:
        super().__init__()
        if scale <= 0 or not 0 <= margin < math.pi / 2:
            raise ValueError(f"need scale > 0 and 0 <= margin < pi/2, got scale={scale}, margin={margin}")
        self.scale = scale
        self.margin = margin

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        logits = self.scale * additive_angular_margin(outputs["cosine"].float(), batch["pid"], self.margin)
        return {"arc": F.cross_entropy(logits, batch["pid"])}


# ------------------------------------------------------------------------------------------ center loss


class CenterHead(SoftmaxHead):
    """Linear classifier plus one learnable centre per class, ``centers`` (C, D)."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__(dim, num_classes)
        self.centers = nn.Parameter(torch.randn(num_classes, dim))


class CenterLossCriterion(nn.Module):
    """``{"ce": softmax cross-entropy, "center": lambda * mean_i 1/2 ||f_i - c_{y_i}||^2}`` (Wen et al.)."""

    def __init__(self, head: CenterHead, center_weight: float = 0.003) -> None:
        super().__init__()
        if center_weight < 0:
            raise ValueError(f"center_weight must be >= 0, got {center_weight}")
        self.head = head
        self.center_weight = center_weight

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pids = batch["pid"]
        feat = outputs["feat"].float()  # (B, D)
        center_loss = 0.5 * (feat - self.head.centers[pids]).pow(2).sum(dim=1).mean()
        return {"ce": F.cross_entropy(outputs["logits"], pids), "center": self.center_weight * center_loss}


# ------------------------------------------------------------------------------------------ class memory


class FeatureMemoryHead(nn.Module):
    """Class memory of feature vectors (Section 5.3): ``memory`` (C, D) holds each class's newest
    l2-normalised feature, ``seen`` (C,) the classes written; ``bn`` maps cosines to logits.

    Forward passes the normalised feature on: ``{"feat_n": (B, D)}``.
    """

    memory: Tensor
    seen: Tensor

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("memory", torch.zeros(num_classes, dim))
        self.register_buffer("seen", torch.zeros(num_classes, dtype=torch.bool))
        self.bn = nn.BatchNorm1d(1)

    def forward(self, feat: Tensor) -> dict[str, Tensor]:
        return {"feat_n": F.normalize(feat, dim=1)}

    def logits(self, feat_n: Tensor, classes: Tensor) -> Tensor:
        """BN of the cosines between ``feat_n`` (B, D) and the memory rows ``classes`` (S,): (B, S)."""
        cosine = feat_n @ self.memory[classes].to(feat_n.dtype).t()  # (B, S)
        return self.bn(cosine.reshape(-1, 1)).view_as(cosine)

    @torch.no_grad()
    def update(self, feat_n: Tensor, pids: Tensor) -> None:
        """Direct replacement by the batch's last sample of each class, as in :class:`ClassMemory`."""
        replace_by_newest(self.memory, self.seen, feat_n, pids)


class FeatureMemoryCriterion(nn.Module):
    """``{"focal_bce": Eq. 1 on BN'd cosines to the memory's seen classes}``, then the memory update."""

    def __init__(self, head: FeatureMemoryHead, gamma: float = 2.0) -> None:
        super().__init__()
        self.head = head
        self.gamma = gamma

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        feat_n, pids = outputs["feat_n"], batch["pid"]
        seen = self.head.seen.nonzero().squeeze(1)  # (S,)
        if seen.numel() == 0:
            loss = feat_n.sum() * 0.0
        else:
            logits = self.head.logits(feat_n, seen)  # (B, S)
            targets = (pids.unsqueeze(1) == seen.unsqueeze(0)).to(logits.dtype)
            loss = memory_matching_loss(logits, targets, self.gamma)
        self.head.update(feat_n, pids)
        return {"focal_bce": loss}


def build_loss_comparison(
    loss: str,
    num_classes: int,
    backbone: str | Backbone = "resnet50",
    *,
    pretrained: bool = False,
    last_stride: int = 2,
) -> tuple[PooledFeatureNet, nn.Module]:
    """``(model, criterion)`` for one row of Table 2: ``loss`` in :data:`TABLE2_LOSSES`."""
    model = build_pooled_model(loss, num_classes, backbone, pretrained=pretrained, last_stride=last_stride)
    return model, pooled_criterion(loss, model)


def build_pooled_model(
    loss: str,
    num_classes: int,
    backbone: str | Backbone = "resnet50",
    *,
    pretrained: bool = False,
    last_stride: int = 2,
) -> PooledFeatureNet:
    """The :class:`PooledFeatureNet` with the head that ``loss`` (one of :data:`TABLE2_LOSSES`) trains."""
    _check_loss(loss)
    if isinstance(backbone, str):
        backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
    dim = backbone.feature_dim
    heads = {"softmax": SoftmaxHead, "arc": CosineHead, "center": CenterHead}
    head = FeatureMemoryHead(dim, num_classes) if loss == "memory" else heads[loss](dim, num_classes)
    return PooledFeatureNet(head, backbone)


def pooled_criterion(loss: str, model: PooledFeatureNet) -> nn.Module:
    """The criterion of ``loss`` for a model from :func:`build_pooled_model` (bound to its head where the
    loss keeps state: the centres, the feature memory)."""
    _check_loss(loss)
    if loss == "softmax":
        return SoftmaxCriterion()
    if loss == "arc":
        return ArcFaceCriterion()
    if loss == "center":
        return CenterLossCriterion(model.head)
    return FeatureMemoryCriterion(model.head)


def _check_loss(loss: str) -> None:
    if loss not in TABLE2_LOSSES:
        raise ValueError(f"loss must be one of {TABLE2_LOSSES}, got {loss!r}")
