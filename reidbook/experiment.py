"""From a dataset name and a profile to a stored, evaluated training run: the glue every chapter shares.

A chapter says *what* to train (a model builder, a criterion builder, options); this module opens the
dataset through its reader (the built-in world is generated first), builds the loaders of the profile,
calls :func:`reidbook.engine.fit` with checkpoints in the results store, evaluates, and stores weights,
history and metrics under a key of config + code, so ``make book`` reuses an unchanged run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .data import ReIDDataset, build_test_loader, build_train_loader, load_dataset
from .engine import evaluate_model, fit, seed_everything
from .models import Backbone, Baseline, BaselineCriterion
from .models.baseline import param_groups
from .models.qaconv import QAConvCriterion, QAConvNet
from .models.qaconv_losses import build_pooled_model, pooled_criterion
from .profiles import Profile
from .results import ResultsStore, Run

SYNTHETIC_PREFIX = "synthetic-"
# Built-in world preset -> the real dataset reader that reads what it writes.
PRESET_READERS = {"market": "market1501", "market-b": "market1501", "sysu": "sysu", "regdb": "regdb"}

Criterion = Callable[[dict, dict], dict]
CriterionBuilder = Callable[[nn.Module, int], Criterion]  # (model, num_classes) -> criterion


def open_dataset(
    dataset: str,
    data_root: str | Path,
    *,
    world: Mapping[str, Any] | None = None,
    world_seed: int = 0,
    **reader_kwargs: Any,
) -> ReIDDataset:
    """Open ``dataset`` under ``data_root``.

    ``"synthetic-<preset>"`` (``synthetic-market``, ``synthetic-market-b``, ``synthetic-sysu``,
    ``synthetic-regdb``) generates the built-in world (cached under ``data_root/synthetic``) with the knobs
    ``world`` and reads it with the real reader; any other name goes straight to
    :func:`reidbook.data.load_dataset` (e.g. ``"market1501"``, ``"dukemtmcreid"``, ``"sysu"``).
    """
    if dataset.startswith(SYNTHETIC_PREFIX):
        from .data.synthetic import generate_world

        preset = dataset[len(SYNTHETIC_PREFIX):]
        if preset not in PRESET_READERS:
            raise ValueError(
                f"unknown built-in world {dataset!r}; choose one of "
                + ", ".join(SYNTHETIC_PREFIX + p for p in PRESET_READERS)
            )
        root = generate_world(data_root, preset=preset, seed=world_seed, **dict(world or {}))
        return load_dataset(PRESET_READERS[preset], root, **reader_kwargs)
    return load_dataset(dataset, data_root, **reader_kwargs)


def dataset_identity(dataset: ReIDDataset) -> dict[str, Any]:
    """What identifies a dataset in a run's config: reader name, folder name and split sizes."""
    return {
        "name": dataset.name,
        "folder": Path(dataset.root).name,
        "sizes": [len(dataset.train), len(dataset.query), len(dataset.gallery)],
    }


def test_loaders(dataset: ReIDDataset, profile: Profile):
    """Query and gallery loaders at the profile's input size, in record order."""
    size = {"height": profile.height, "width": profile.width, "num_workers": profile.num_workers}
    return build_test_loader(dataset.query, **size), build_test_loader(dataset.gallery, **size)


def train_reid_model(
    name: str,
    dataset: ReIDDataset,
    profile: Profile,
    *,
    build_model: Callable[[int], nn.Module],
    build_criterion: CriterionBuilder,
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    augment: Mapping[str, Any] | None = None,
    lr_mults: Mapping[str, float] | None = None,
    eval_dataset: ReIDDataset | None = None,
    metric: str = "euclidean",
    hooks: Sequence[Any] = (),
    store: ResultsStore | None = None,
    progress: bool = True,
    **fit_kwargs: Any,
) -> Run:
    """Train ``build_model(num_classes)`` with ``build_criterion(model, num_classes)`` on ``dataset.train``
    in the ``profile`` (the criterion gets the model for losses that use its parts, like QAConv's class
    memory), evaluate on ``eval_dataset`` (default: the same dataset) and store everything.

    ``options`` describes the method's own settings and enters the run's key together with the profile,
    the seed, the datasets and ``augment`` (training augmentation overrides for
    :func:`reidbook.data.build_transforms`, e.g. ``{"random_erasing": 0, "random_block": 1}``) and
    ``lr_mults`` (learning-rate multipliers by submodule name, e.g. ``{"backbone": 0.1}``); a complete run
    with the same key is returned without training. The run checkpoints every epoch, so an interrupted run
    resumes where it stopped.
    """
    store = store or ResultsStore()
    seed = profile.seed if seed is None else seed
    eval_dataset = eval_dataset or dataset
    config = {
        "train_data": dataset_identity(dataset),
        "eval_data": dataset_identity(eval_dataset),
        "profile": profile.to_dict(),
        "seed": seed,
        "metric": metric,
        "options": dict(options or {}),
    }
    if augment:
        config["augment"] = dict(augment)
    if lr_mults:
        config["lr_mults"] = dict(lr_mults)

    def train(run: Run) -> dict[str, Any]:
        num_classes = dataset.num_train_pids
        loader = build_train_loader(
            dataset.train, height=profile.height, width=profile.width, batch_size=profile.batch_size,
            num_instances=profile.batch_k, seed=seed, num_workers=profile.num_workers, **dict(augment or {}),
        )
        query_loader, gallery_loader = test_loaders(eval_dataset, profile)

        latest: dict[str, Any] = {}  # fit() also evaluates after its last epoch: keep that result

        def evaluator(model: nn.Module) -> dict[str, Any]:
            latest.clear()
            latest.update(evaluate_model(model, query_loader, gallery_loader, metric=metric,
                                         device=profile.device, progress=False))
            return latest

        seed_everything(seed)  # the model's initial weights depend on the seed alone
        model = build_model(num_classes)
        history = fit(
            model, build_criterion(model, num_classes), loader, epochs=profile.epochs,
            optimizer=profile.optimizer, lr=profile.lr, weight_decay=profile.weight_decay,
            warmup_epochs=profile.warmup_epochs, milestones=profile.milestones, gamma=profile.gamma,
            max_steps_per_epoch=profile.max_steps_per_epoch, eval_every=profile.eval_every,
            evaluator=evaluator if profile.eval_every else None,
            checkpoint_dir=run.checkpoint_dir, device=profile.device, seed=seed, hooks=hooks,
            progress=progress, param_groups=param_groups(model, profile.lr, lr_mults) if lr_mults else None,
            **fit_kwargs,
        )
        metrics = dict(latest) if latest else evaluator(model)
        run.save_model(model)
        run.save_history(history)
        return {k: (np.asarray(v).tolist() if k == "cmc" else v) for k, v in metrics.items()}

    return store.get_or_train(name, config, train)


def baseline_model_builder(profile: Profile) -> Callable[[int], nn.Module]:
    """``num_classes -> Baseline`` with the profile's backbone, weights and last stride (chapter 1)."""

    def build(num_classes: int) -> nn.Module:
        return Baseline(num_classes, backbone=profile.backbone, pretrained=profile.pretrained,
                        last_stride=profile.last_stride)

    return build


def baseline_criterion(model: nn.Module, num_classes: int) -> BaselineCriterion:
    """The strong baseline's losses: label-smoothed cross-entropy (0.1) + batch-hard triplet (margin 0.3)."""
    return BaselineCriterion(num_classes, label_smoothing=0.1, triplet_margin=0.3)


def train_baseline(dataset: ReIDDataset, profile: Profile, *, seed: int | None = None, **kwargs: Any) -> Run:
    """The strong baseline's run: the one definition every chapter reuses from the results store."""
    return train_reid_model("baseline", dataset, profile, build_model=baseline_model_builder(profile),
                            build_criterion=baseline_criterion, seed=seed, **kwargs)


RANDOM_BLOCK = {"random_erasing": 0.0, "random_block": 1.0}  # QAConv's augmentation (Section 5.1)


def starting_backbone(profile: Profile, init: Run | None, num_classes: int) -> str | Backbone:
    """The backbone a chapter-6 model starts from: the profile's backbone name (random or ImageNet weights)
    or, with ``init``, the backbone of that stored strong-baseline run (``num_classes``: its training ids)."""
    if init is None:
        return profile.backbone
    return load_trained(init, baseline_model_builder(profile), num_classes).backbone.train()


def init_options(init: Run | None) -> dict[str, str]:
    """What ``init`` adds to a run's options (and key): the starting run's name and key."""
    return {} if init is None else {"init": f"{init.name}/{init.key}"}


def qaconv_model_builder(
    profile: Profile, options: Mapping[str, Any], init: Run | None = None
) -> Callable[[int], nn.Module]:
    """``num_classes -> QAConvNet`` at the profile's input size, its backbone built from the profile or
    taken from ``init`` (see :func:`starting_backbone`); ``options`` are
    :class:`~reidbook.models.qaconv.QAConvNet` keywords (``map_stride``, ``neck_kernel``, ``channels``)."""

    def build(num_classes: int) -> nn.Module:
        return QAConvNet(num_classes, starting_backbone(profile, init, num_classes),
                         image_size=(profile.height, profile.width), pretrained=profile.pretrained, **options)

    return build


def qaconv_criterion(model: nn.Module, num_classes: int) -> QAConvCriterion:
    """QAConv's class-memory focal BCE (Eqs. 1-2, gamma = 2) on ``model``'s matcher and memory."""
    return QAConvCriterion(model)


def pretrained_lr_mults(profile: Profile, init: Run | None) -> dict[str, float] | None:
    """The paper's rates (Section 5.1): a backbone that starts trained learns at 0.1x the new layers'."""
    return {"backbone": 0.1} if profile.pretrained or init is not None else None


def train_qaconv(
    dataset: ReIDDataset,
    profile: Profile,
    *,
    options: Mapping[str, Any] | None = None,
    init: Run | None = None,
    augment: Mapping[str, Any] | None = RANDOM_BLOCK,
    seed: int | None = None,
    **kwargs: Any,
) -> Run:
    """A QAConv run (chapter 6): trained with its class memory, evaluated by pair matching
    (``metric="match"``); ``augment`` defaults to Random Block instead of random erasing. ``init``: a
    strong-baseline run on ``dataset`` whose backbone QAConv starts from (instead of ImageNet weights)."""
    options = dict(options or {})
    return train_reid_model(
        "qaconv", dataset, profile, build_model=qaconv_model_builder(profile, options, init),
        build_criterion=qaconv_criterion, seed=seed, options={**options, **init_options(init)},
        augment=augment, lr_mults=pretrained_lr_mults(profile, init), metric="match", **kwargs,
    )


def pooled_model_builder(loss: str, profile: Profile, init: Run | None = None) -> Callable[[int], nn.Module]:
    """``num_classes -> PooledFeatureNet`` for one of QAConv's Table 2 losses; the backbone as in
    :func:`qaconv_model_builder` (a fresh one with the classification network's last stride 2)."""

    def build(num_classes: int) -> nn.Module:
        return build_pooled_model(loss, num_classes, starting_backbone(profile, init, num_classes),
                                  pretrained=profile.pretrained, last_stride=2)

    return build


def train_loss_comparison(
    loss: str,
    dataset: ReIDDataset,
    profile: Profile,
    *,
    init: Run | None = None,
    seed: int | None = None,
    **kwargs: Any,
) -> Run:
    """A run of QAConv's Table 2: pooled features trained with ``loss`` (softmax, arc, center, memory),
    retrieved by cosine similarity; ``init`` as in :func:`train_qaconv`."""
    return train_reid_model(
        f"pooled-{loss}", dataset, profile, build_model=pooled_model_builder(loss, profile, init),
        build_criterion=lambda model, num_classes: pooled_criterion(loss, model), seed=seed,
        options={"loss": loss, **init_options(init)}, lr_mults=pretrained_lr_mults(profile, init),
        metric="cosine", **kwargs,
    )


def load_trained(run: Run, build_model: Callable[[int], nn.Module], num_classes: int) -> nn.Module:
    """The stored model of ``run``, rebuilt with ``build_model(num_classes)``, in eval mode on the CPU."""
    return run.load_model(build_model(num_classes)).eval()
