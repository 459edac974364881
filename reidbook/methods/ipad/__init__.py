"""IPAD (Instance and Pair-Aware Dynamic Networks for Re-identification): the strong baseline's network
(the global branch) plus a self-guided dynamic branch (each image filters its own compressed map with a
1x1 kernel its controller made from it) and a mutual-guided dynamic branch (each image of a pair filters
the other's features, Eq. 3), :mod:`reidbook.models.ipad`. Trained with the baseline's losses on every
branch (the mutual one with the triplet loss only) on P x K batches; judged by the fused distance of the
three branches over flip-averaged test features (``Evaluator(Pairwise(flip=True))``: the mutual distance
exists only for a pair).

Options: ``variant`` picks a row of Table III (``"global"``, ``"v1"`` = global + mutual, ``"v2"`` = global +
self, ``"ipad"`` = all three) or the attention version of Section IV-C (``"attention"``);
``self_channels="auto"`` keeps the paper's compression ratio C_o -> C_o / 4 (2048 -> 512 on ResNet-50,
512 -> 128 on the book's ResNet-18); ``mutual_channels`` is 128 (persons; the paper uses 256 for
vehicles); ``squeeze``, ``final_relu``, ``kernel_norm``, ``controller_grid`` and ``fusion_weights`` go to
:class:`~reidbook.models.ipad.IPAD`; ``label_smoothing`` and ``triplet_margin`` to its criterion.

The ``paper`` profile trains for 160 epochs (Section IV-A: Adam at 3.5e-4, x0.1 at epochs 40 and 70, as
the profile already has); the other profiles are unchanged.
"""

from __future__ import annotations

from torch import nn

from ...evaluation.evaluators import Evaluator, Pairwise
from ...models.backbones import Backbone
from ...models.ipad import IPAD_VARIANTS, IPADCriterion, build_ipad
from ...paper_numbers import IPAD_TABLES
from ...profiles import Profile
from ..recipe import Headline, Options, Recipe
from ..registry import register

#: The paper's compression of the backbone's channels in the self-guided branch (2048 -> 512, III-C).
SELF_COMPRESSION = 4
#: Section IV-A: 160 epochs; the optimizer, rate and milestones (40, 70) are the ``paper`` profile's already.
PAPER_PROFILE = {"epochs": 160}
MODEL_OPTIONS = ("mutual_channels", "squeeze", "final_relu", "kernel_norm", "fusion_weights")


def self_channels(backbone: Backbone, options: Options) -> int:
    """The self branch's width: ``options["self_channels"]``, or C_o / 4 of the backbone for ``"auto"``."""
    value = options["self_channels"]
    if value == "auto":
        return backbone.feature_dim // SELF_COMPRESSION
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"self_channels must be a positive int or 'auto', got {value!r}")
    return value


def build_model(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
    if options["variant"] not in IPAD_VARIANTS:
        raise ValueError(f"IPAD's variant must be one of {sorted(IPAD_VARIANTS)}, got {options['variant']!r}")
    grid = options["controller_grid"]
    return build_ipad(options["variant"], num_classes, backbone=backbone,
                      image_size=(profile.height, profile.width),
                      self_channels=self_channels(backbone, options),
                      controller_grid=None if grid is None else (int(grid[0]), int(grid[1])),
                      **{name: options[name] for name in MODEL_OPTIONS})


def build_criterion(model: nn.Module, num_classes: int, options: Options) -> nn.Module:
    return IPADCriterion(num_classes, label_smoothing=options["label_smoothing"],
                         triplet_margin=options["triplet_margin"])


IPAD = register(Recipe(
    name="ipad",
    module=__name__,
    title="IPAD (Instance and Pair-Aware Dynamic Networks)",
    build_model=build_model,
    build_criterion=build_criterion,
    evaluator=Evaluator(Pairwise(flip=True)),
    options={"variant": "ipad", "self_channels": "auto", "mutual_channels": 128, "squeeze": 16,
             "final_relu": True, "kernel_norm": "filter", "controller_grid": None, "fusion_weights": None,
             "label_smoothing": 0.1, "triplet_margin": 0.3},
    profiles={"paper": PAPER_PROFILE},
    paper={"tables": IPAD_TABLES},
    headline=Headline("instance- and pair-aware dynamic convolutions (the self- and mutual-guided branches) "
                      "raise mAP over the global branch alone, the strong baseline (Tables III and V)"),
))
