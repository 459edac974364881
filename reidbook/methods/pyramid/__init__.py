"""Pyramid (Zheng et al., "Pyramidal Person Re-IDentification via Multi-Loss Dynamic Training", CVPR 2019):
a coarse-to-fine pyramid of 21 branches over the backbone's last map (:mod:`reidbook.models.pyramid`),
trained with the ID loss of every branch and a triplet loss on the concatenated feature, weighted and
sampled dynamically (Algorithm 1: a hook that switches, per step, between random batches with the ID loss
alone and 8 x 8 identity-balanced batches with both losses). Judged by the Euclidean distance of the
flip-averaged 2,688-d embedding.

Options reach Table 4's rows: ``levels`` (the six-digit codes), ``feature_dim`` (64, 128, 256),
``triplet`` (off: "No triplet loss", which also alternates the samplers), ``weighting`` (``"focal"``:
Eq. 7; ``"sum"``: the authors' code; ``"fixed"``: constant weights) and ``sampling`` (``"dynamic"``:
Algorithm 1; ``"balanced"``: the authors' code, which never switches; ``"random"``, ``"alternate"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn
from torch.utils.data import DataLoader

from ...data import Record
from ...models.backbones import Backbone
from ...models.pyramid import DynamicTraining, PyramidCriterion, PyramidNet, build_dynamic_train_loader
from ...paper_numbers import PYRAMID_TABLE4
from ...profiles import Profile
from ..recipe import Headline, Options, Recipe
from ..registry import register

MODEL_OPTIONS = ("levels", "feature_dim", "partition", "pooling", "relu", "dropout")
#: The paper's training (Section 4.2): ResNet at 384 x 128, SGD at 0.01 with momentum 0.9, 120 epochs,
#: the rate halved every 10 epochs from epoch 60, batches of 8 identities x 8 images.
PAPER_PROFILE = {"backbone": "resnet50", "height": 384, "width": 128, "epochs": 120, "optimizer": "sgd",
                 "lr": 0.01, "warmup_epochs": 0, "milestones": (60, 70, 80, 90), "gamma": 0.5, "batch_p": 8,
                 "batch_k": 8, "eval_every": 0}


def build_model(backbone: Backbone, num_classes: int, profile: Profile, options: Options) -> nn.Module:
    return PyramidNet(num_classes, backbone, **{name: options[name] for name in MODEL_OPTIONS})


def build_criterion(model: nn.Module, num_classes: int, options: Options) -> nn.Module:
    return PyramidCriterion(num_classes, triplet=options["triplet"],
                            triplet_per_branch=options["triplet_per_branch"], margin=options["margin"])


def switching_batches(records: Sequence[Record], profile: Profile, seed: int, augment: Options,
                      options: Options) -> DataLoader:
    """Algorithm 1's loader: random batches and ``batch_p`` identities x ``batch_k`` images, per step."""
    return build_dynamic_train_loader(records, height=profile.height, width=profile.width, seed=seed,
                                      num_identities=profile.batch_p, num_instances=profile.batch_k,
                                      **augment)


def build_hooks(profile: Profile, options: Options) -> list:
    sampling = options["sampling"] if options["triplet"] else "alternate"
    return [DynamicTraining(delta=options["delta"], weighting=options["weighting"], sampling=sampling,
                            triplet_term="triplet" if options["triplet"] else None)]


PYRAMID = register(Recipe(
    name="pyramid",
    module=__name__,
    title="Pyramid (Zheng et al., CVPR 2019)",
    build_model=build_model,
    build_criterion=build_criterion,
    loader=switching_batches,
    hooks=build_hooks,
    options={"levels": "111111", "feature_dim": 128, "partition": "cover", "pooling": "max+avg", "relu": True,
             "dropout": 0.0, "triplet": True, "triplet_per_branch": False, "margin": 1.4, "delta": 0.16,
             "weighting": "focal", "sampling": "dynamic"},
    profiles={"paper": PAPER_PROFILE},
    paper={"table4": PYRAMID_TABLE4},
    headline=Headline("the 21-branch coarse-to-fine pyramid with dynamic training raises mAP over the same "
                      "backbone's global feature (Tables 1 and 4)"),
))
