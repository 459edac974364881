"""The strong baseline (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
Re-identification", CVPRW 2019): backbone -> GAP -> BN-neck -> classifier, label-smoothed cross-entropy +
batch-hard triplet on P x K batches, flip-averaged BN-neck features compared by squared Euclidean distance.
The reference point of every chapter."""

from __future__ import annotations

from torch import nn

from ..models.backbones import Backbone
from ..models.baseline import Baseline, BaselineCriterion
from ..paper_numbers import BASELINE_RESNET50
from ..profiles import Profile
from .recipe import Options, Recipe
from .registry import register


def build_model(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
    return Baseline(num_classes, backbone)


def build_criterion(model: nn.Module, num_classes: int, options: Options) -> nn.Module:
    return BaselineCriterion(num_classes, label_smoothing=options["label_smoothing"],
                             triplet_margin=options["triplet_margin"])


BASELINE = register(Recipe(
    name="baseline",
    module=__name__,
    title="strong baseline (Luo et al., CVPRW 2019)",
    build_model=build_model,
    build_criterion=build_criterion,
    options={"label_smoothing": 0.1, "triplet_margin": 0.3},
    paper=BASELINE_RESNET50,
))
