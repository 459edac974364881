"""QAConv (Liao & Shao, "Interpretable and Generalizable Person Re-Identification with Query-Adaptive
Convolution and Temporal Lifting", ECCV 2020): feature maps of backbone stage 3 matched location by location
(:mod:`reidbook.models.qaconv`), trained with a class memory and a focal binary cross-entropy, judged by
pair matching. Also the four pooled-feature runs of the paper's Table 2 (``pooled-softmax``,
``pooled-arc``, ``pooled-center``, ``pooled-memory``), trained the same way and compared by cosine.

Training as the authors' code does it: shuffled random batches (no P x K), flip and Random Block (no
pad-and-crop, no random erasing), SGD at 0.01 for the new layers and 0.1x that for a backbone that starts
trained. ``sampler="identity"`` trains on P x K batches instead, ``augmentation`` picks the rows of the
paper's Table 1 (``"random_block"``, ``"random_erasing"``, ``"none"``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ...data import Record
from ...evaluation.evaluators import Embedding, Evaluator, Pairwise
from ...models.backbones import Backbone
from ...models.qaconv import QAConvCriterion, QAConvNet
from ...models.qaconv_losses import TABLE2_LOSSES, build_pooled_model, pooled_criterion
from ...paper_numbers import QACONV_RESNET50, QACONV_TABLES
from ...profiles import Profile
from ..recipe import Headline, Options, Recipe, identity_batches, shuffled_batches
from ..registry import register

#: Table 1's rows: the training augmentation besides flipping.
AUGMENTATIONS = {
    "random_block": {"pad": 0, "random_erasing": 0.0, "random_block": 1.0},
    "random_erasing": {"pad": 0, "random_erasing": 0.5, "random_block": 0.0},
    "none": {"pad": 0, "random_erasing": 0.0, "random_block": 0.0},
}
SAMPLERS = {"shuffle": shuffled_batches, "identity": identity_batches}
#: The paper's schedule (Section 5.1) for real data on a GPU: ResNet at 384 x 128, 60 epochs of SGD at
#: 0.01 (x0.1 after 40), batches of 32.
PAPER_PROFILE = {"backbone": "resnet50", "height": 384, "width": 128, "epochs": 60, "milestones": (40,),
                 "warmup_epochs": 0, "optimizer": "sgd", "lr": 0.01, "batch_p": 8, "batch_k": 4,
                 "eval_every": 0, "seeds": (0,)}
CPU_PROFILE = {"epochs": 3, "milestones": (2,), "warmup_epochs": 0, "optimizer": "sgd", "lr": 0.01,
               "eval_every": 0}
SMOKE_PROFILE = {"optimizer": "sgd", "lr": 0.01}


def map_stride(profile: Profile, options: Options) -> int:
    """Stage 3's stride: ``"auto"`` keeps it (16) at the paper's input sizes and removes its downsampling
    (8) on small CPU inputs, so that 64 x 32 images give 8 x 4 maps instead of 4 x 2."""
    return (16 if profile.height >= 256 else 8) if options["map_stride"] == "auto" else options["map_stride"]


def train_batches(records: Sequence[Record], profile: Profile, seed: int, augment: Mapping[str, Any],
                  options: Options) -> DataLoader:
    if options["sampler"] not in SAMPLERS:
        raise ValueError(f"sampler must be one of {sorted(SAMPLERS)}, got {options['sampler']!r}")
    if options["augmentation"] not in AUGMENTATIONS:
        raise ValueError(f"augmentation must be one of {sorted(AUGMENTATIONS)}, "
                         f"got {options['augmentation']!r}")
    augment = {**AUGMENTATIONS[options["augmentation"]], **augment}
    return SAMPLERS[options["sampler"]](records, profile, seed, augment, options)


def build_model(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
    return QAConvNet(num_classes, backbone, image_size=(profile.height, profile.width),
                     map_stride=map_stride(profile, options), channels=options["channels"],
                     neck_kernel=options["neck_kernel"])


def build_criterion(model: nn.Module, num_classes: int, options: Options) -> nn.Module:
    return QAConvCriterion(model)


TRAINING = {"sampler": "shuffle", "augmentation": "random_block"}
SHARED = dict(
    loader=train_batches,
    trained_start_lr_mults={"backbone": 0.1},
    profiles={"smoke": SMOKE_PROFILE, "cpu": CPU_PROFILE, "paper": PAPER_PROFILE},
)

QACONV = register(Recipe(
    name="qaconv",
    module=__name__,
    title="QAConv (Liao & Shao, ECCV 2020)",
    build_model=build_model,
    build_criterion=build_criterion,
    evaluator=Evaluator(Pairwise()),
    options={"map_stride": "auto", "channels": 128, "neck_kernel": 3, **TRAINING},
    paper={"tables": QACONV_TABLES, "resnet50": QACONV_RESNET50},
    headline=Headline("trained on one domain, QAConv's matching generalises to another better than pooled "
                      "features (Table 2)", test="synthetic-market-b"),
    **SHARED,
))


def _pooled_recipe(loss: str) -> Recipe:
    def build(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
        return build_pooled_model(loss, num_classes, backbone)

    return Recipe(
        name=f"pooled-{loss}",
        module=__name__,
        title=f"pooled features trained with the {loss} loss (QAConv's Table 2)",
        build_model=build,
        build_criterion=lambda model, num_classes, options: pooled_criterion(loss, model),
        evaluator=Evaluator(Embedding("cosine")),
        options=dict(TRAINING),
        backbone={"last_stride": 2},  # the classification network's stride, as the paper's Table 2 runs
        paper={"tables": QACONV_TABLES},
        **SHARED,
    )


POOLED = {loss: register(_pooled_recipe(loss)) for loss in TABLE2_LOSSES}
