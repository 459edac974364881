"""The strong baseline of Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
Re-identification" (CVPRW 2019): backbone (last stride 1) -> global average pooling -> BN-neck ->
identity classifier, trained with label-smoothed cross-entropy on the logits and a batch-hard triplet
loss on the pooled feature.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from ..losses import CrossEntropyLabelSmooth, TripletLoss
from .backbones import Backbone, build_backbone
from .heads import BNNeck, IdentityClassifier

EVAL_FEATURES = ("bn_feat", "feat")


class Baseline(nn.Module):
    """Backbone -> GAP -> ``feat`` -> BN-neck -> ``bn_feat`` -> classifier -> ``logits``.

    In training mode ``forward`` returns ``{"feat": (B, D), "bn_feat": (B, D), "logits": (B, num_classes)}``;
    in eval mode it returns the retrieval embedding (B, D): ``bn_feat`` (the paper's choice) or ``feat``.

    Args:
        num_classes: training identities.
        backbone: a registered backbone name or a :class:`Backbone`.
        pretrained, last_stride: passed to :func:`build_backbone` when ``backbone`` is a name.
        eval_feature: ``"bn_feat"`` or ``"feat"``, the embedding returned in eval mode.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str | Backbone = "resnet50",
        *,
        pretrained: bool = False,
        last_stride: int = 1,
        eval_feature: str = "bn_feat",
    ) -> None:
        super().__init__()
        if eval_feature not in EVAL_FEATURES:
            raise ValueError(f"eval_feature must be one of {EVAL_FEATURES}, got {eval_feature!r}")
        if isinstance(backbone, str):
            backbone = build_backbone(backbone, pretrained=pretrained, last_stride=last_stride)
        self.backbone = backbone
        self.neck = BNNeck(backbone.feature_dim)
        self.classifier = IdentityClassifier(backbone.feature_dim, num_classes)
        self.eval_feature = eval_feature

    @property
    def feature_dim(self) -> int:
        return self.backbone.feature_dim

    def forward(self, img: Tensor) -> dict[str, Tensor] | Tensor:
        fmap = self.backbone(img)  # (B, D, h, w)
        feat = fmap.mean(dim=(2, 3))  # (B, D) global average pooling
        bn_feat = self.neck(feat)  # (B, D)
        if not self.training:
            return bn_feat if self.eval_feature == "bn_feat" else feat
        return {"feat": feat, "bn_feat": bn_feat, "logits": self.classifier(bn_feat)}

    def param_groups(self, base_lr: float, backbone_lr_mult: float = 1.0) -> list[dict]:
        """Optimizer groups: the backbone at ``base_lr * backbone_lr_mult``, the heads at ``base_lr``."""
        return param_groups(self, base_lr, {"backbone": backbone_lr_mult})


def param_groups(model: nn.Module, base_lr: float, lr_mults: Mapping[str, float] | None = None) -> list[dict]:
    """Split ``model``'s trainable parameters into optimizer groups with their own learning rates.

    ``lr_mults`` maps a parameter-name prefix (a submodule, e.g. ``"backbone"`` or ``"backbone.stages.3"``)
    to a multiplier of ``base_lr``; the first matching prefix wins, unmatched parameters form a group
    named ``"default"`` at ``base_lr``. Frozen parameters (``requires_grad=False``) are left out. Each
    group is ``{"name", "params", "lr"}``, ready for ``torch.optim`` constructors.
    """
    lr_mults = dict(lr_mults or {})
    grouped: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in lr_mults}
    grouped["default"] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        prefix = next((p for p in lr_mults if name == p or name.startswith(p + ".")), "default")
        grouped[prefix].append(param)
    return [
        {"name": prefix, "params": params, "lr": base_lr * lr_mults.get(prefix, 1.0)}
        for prefix, params in grouped.items()
        if params
    ]


class BaselineCriterion(nn.Module):
    """The strong baseline's losses as named terms: ``{"ce": label-smoothed CE on the logits,
    "triplet": batch-hard triplet on the pooled feature}`` (Luo et al. 2019 add them up)."""

    def __init__(
        self,
        num_classes: int,
        label_smoothing: float = 0.1,
        triplet_margin: float = 0.3,
        soft_margin: bool = False,
    ) -> None:
        super().__init__()
        self.cross_entropy = CrossEntropyLabelSmooth(num_classes, label_smoothing)
        self.triplet = TripletLoss(triplet_margin, soft_margin=soft_margin)

    def forward(self, outputs: Mapping[str, Tensor], batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        pids = batch["pid"]  # (B,)
        return {
            "ce": self.cross_entropy(outputs["logits"], pids),
            "triplet": self.triplet(outputs["feat"], pids),
        }
