"""Models: backbones, heads, the strong baseline and one module per paper."""

from .backbones import (
    Backbone,
    PretrainedWeightsMissingWarning,
    available_backbones,
    build_backbone,
    register_backbone,
)
from .baseline import Baseline, BaselineCriterion, param_groups
from .heads import BNNeck, IdentityClassifier
from .ianet import IANet, IANetCriterion
from .qaconv import QAConvCriterion, QAConvNet

__all__ = [
    "BNNeck",
    "Backbone",
    "Baseline",
    "BaselineCriterion",
    "IANet",
    "IANetCriterion",
    "IdentityClassifier",
    "PretrainedWeightsMissingWarning",
    "QAConvCriterion",
    "QAConvNet",
    "available_backbones",
    "build_backbone",
    "param_groups",
    "register_backbone",
]
