"""What a recipe is, and the ways of drawing training batches that recipes share.

A :class:`Recipe` is data plus small functions; :mod:`reidbook.experiment` does the rest, the same way for
every method:

    profile = recipe.profile_for(profile)                    # the paper's changes to the profile
    options = recipe.resolve_options(given)                  # defaults + the run's options
    backbone = <the profile's backbone, with recipe.backbone overrides, started as profile.init says>
    model = recipe.build_model(backbone, num_classes, profile, options)
    criterion = recipe.build_criterion(model, num_classes, options)
    loader = recipe.loader(train_records, profile, seed, augment, options)
    fit(model, criterion, loader, feed=recipe.feed, hooks=recipe.build_hooks(profile, options), ...)
    recipe.evaluator_for(options).evaluate(model, dataset, feed=recipe.feed, ...)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn
from torch.utils.data import DataLoader

from ..data import Record, build_train_loader
from ..engine import Feed, feed_images
from ..evaluation.evaluators import Evaluator
from ..models.backbones import Backbone
from ..profiles import Profile

Options = Mapping[str, Any]
ModelBuilder = Callable[[Backbone, int, Profile, Mapping[str, Any]], nn.Module]
CriterionBuilder = Callable[[nn.Module, int, Mapping[str, Any]], nn.Module]
LoaderBuilder = Callable[[Sequence[Record], Profile, int, Mapping[str, Any], Mapping[str, Any]], DataLoader]
HooksBuilder = Callable[[Profile, Mapping[str, Any]], list]


def identity_batches(
    records: Sequence[Record], profile: Profile, seed: int, augment: Mapping[str, Any],
    options: Mapping[str, Any],
) -> DataLoader:
    """P x K batches: ``profile.batch_p`` identities x ``profile.batch_k`` images (seeded, resumable)."""
    return build_train_loader(records, height=profile.height, width=profile.width,
                              batch_size=profile.batch_size, num_instances=profile.batch_k, seed=seed,
                              num_workers=profile.num_workers, **dict(augment))


def shuffled_batches(
    records: Sequence[Record], profile: Profile, seed: int, augment: Mapping[str, Any],
    options: Mapping[str, Any],
) -> DataLoader:
    """Batches of ``profile.batch_size`` images drawn by a seeded shuffle of the training set."""
    return build_train_loader(records, height=profile.height, width=profile.width,
                              batch_size=profile.batch_size, num_instances=profile.batch_k, seed=seed,
                              num_workers=profile.num_workers, shuffle=True, **dict(augment))


@dataclass(frozen=True)
class Headline:
    """A paper's headline claim, as the comparison the book runs for it: ``method`` with ``options``
    against ``reference`` with ``reference_options``, both trained on ``dataset`` (a built-in world) and
    evaluated on ``test`` (default: the same), compared on ``metric`` over the profile's seeds."""

    claim: str
    dataset: str = "synthetic-market"
    test: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    reference: str = "baseline"
    reference_options: Mapping[str, Any] = field(default_factory=dict)
    metric: str = "mAP"


@dataclass(frozen=True)
class Recipe:
    """Everything the generic glue needs to train and judge one method.

    Attributes:
        name: the registered name (also the run's name in the results store).
        module: the module defining the recipe (``__name__``): the root of the run's code fingerprint.
        title: a human-readable name with the paper.
        build_model: ``(backbone, num_classes, profile, options) -> model``; the backbone is built from the
            profile (with ``backbone`` overrides) and already started as ``profile.init`` says.
        build_criterion: ``(model, num_classes, options) -> criterion`` returning named loss terms.
        evaluator: the :class:`~reidbook.evaluation.evaluators.Evaluator` the method is judged with, or
            ``options -> Evaluator`` when an option changes it.
        loader: ``(train records, profile, seed, augment, options) -> DataLoader``.
        feed: ``(model, batch) -> outputs``, in training and for test features.
        options: the defaults of the method's own settings; a run may change them, not add others.
        augment: training augmentation overrides (see :func:`reidbook.data.build_transforms`).
        backbone: overrides of the profile's backbone settings (e.g. ``{"last_stride": 2}``).
        trained_start_lr_mults: learning-rate multipliers by submodule when the backbone starts trained.
        hooks: ``(profile, options) -> [hooks]`` for :func:`reidbook.engine.fit` (weights, sampler switches).
        profiles: the paper's changes to a profile, by profile name (e.g. QAConv's SGD schedule).
        paper: the paper's numbers, from :mod:`reidbook.paper_numbers` (where each was read is said there).
        headline: the paper's headline claim as a comparison (the comparison chapter runs it for every
            method that has one).
    """

    name: str
    module: str
    title: str
    build_model: ModelBuilder
    build_criterion: CriterionBuilder
    evaluator: Evaluator | Callable[[Mapping[str, Any]], Evaluator] = field(default_factory=Evaluator)
    loader: LoaderBuilder = identity_batches
    feed: Feed = feed_images
    options: Mapping[str, Any] = field(default_factory=dict)
    augment: Mapping[str, Any] = field(default_factory=dict)
    backbone: Mapping[str, Any] = field(default_factory=dict)
    trained_start_lr_mults: Mapping[str, float] = field(default_factory=dict)
    hooks: HooksBuilder | None = None
    profiles: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    paper: Mapping[str, Any] = field(default_factory=dict)
    headline: Headline | None = None

    def resolve_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The defaults updated by ``given``.

        Raises:
            ValueError: naming the valid options when ``given`` has one the method does not know.
        """
        unknown = sorted(set(given) - set(self.options))
        if unknown:
            valid = ", ".join(sorted(self.options)) or "none"
            raise ValueError(f"method {self.name!r} has no option {unknown}; its options are: {valid}")
        return {**self.options, **given}

    def profile_for(self, profile: Profile) -> Profile:
        """``profile`` with this paper's changes for a profile of that name."""
        return profile.replace(**dict(self.profiles.get(profile.name, {})))

    def evaluator_for(self, options: Mapping[str, Any]) -> Evaluator:
        return self.evaluator if isinstance(self.evaluator, Evaluator) else self.evaluator(options)

    def build_hooks(self, profile: Profile, options: Mapping[str, Any]) -> list:
        return [] if self.hooks is None else list(self.hooks(profile, options))
