"""IANet (Hou et al., "Interaction-and-Aggregation Network for Person Re-identification", CVPR 2019): the
strong baseline's network with IA blocks (SIA + CIA, :mod:`reidbook.models.ianet`) after backbone stages 2
and 3. The book trains it with the strong baseline's losses and distance by default (``loss="baseline"``),
so that the only difference between the two is the IA blocks; ``loss="paper"`` is the paper's
cross-entropy alone (compare it with ``Evaluator(Embedding("cosine"))``, the paper's distance)."""

from __future__ import annotations

from torch import nn

from ...models.backbones import Backbone
from ...models.ianet import IANet, IANetCriterion
from ...paper_numbers import IANET_BACKBONES, IANET_TABLES
from ...profiles import Profile
from ..baseline import BASELINE
from ..recipe import Headline, Options, Recipe
from ..registry import register

#: The paper's IANet (Section 3.4): IA blocks after stages 2 and 3, SIA then CIA, three contexts.
PAPER_IANET = {"formulation": "paper", "stages": [2, 3], "placement": "bottleneck",
               "arrangement": "sia-cia", "contexts": [1, 2, 3], "fusion": "product", "relation": "semantic",
               "scale_dot_products": False}
#: The authors' released code: the same blocks, SIA with one context and sqrt(C)-scaled dot-products.
AUTHORS_IANET = {**PAPER_IANET, "formulation": "authors", "contexts": [1], "scale_dot_products": True}
LOSSES = ("baseline", "paper")


def build_model(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
    blocks = {name: value for name, value in options.items() if name != "loss"}
    return IANet(num_classes, backbone, **blocks)


def build_criterion(model: nn.Module, num_classes: int, options: Options) -> nn.Module:
    if options["loss"] not in LOSSES:
        raise ValueError(f"IANet's loss must be one of {LOSSES}, got {options['loss']!r}")
    if options["loss"] == "paper":
        return IANetCriterion(num_classes)
    return BASELINE.build_criterion(model, num_classes, BASELINE.options)


IANET = register(Recipe(
    name="ianet",
    module=__name__,
    title="IANet (Hou et al., CVPR 2019)",
    build_model=build_model,
    build_criterion=build_criterion,
    options={**PAPER_IANET, "loss": "baseline"},
    paper={"tables": IANET_TABLES, "backbones": IANET_BACKBONES},
    headline=Headline("IA blocks (SIA + CIA after stages 2 and 3) raise mAP over the same network without "
                      "them (Tables 1 and 4)"),
))
