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
from .models import Baseline, BaselineCriterion
from .profiles import Profile
from .results import ResultsStore, Run

SYNTHETIC_PREFIX = "synthetic-"
# Built-in world preset -> the real dataset reader that reads what it writes.
PRESET_READERS = {"market": "market1501", "market-b": "market1501", "sysu": "sysu", "regdb": "regdb"}

Criterion = Callable[[dict, dict], dict]


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
    build_criterion: Callable[[int], Criterion],
    seed: int | None = None,
    options: Mapping[str, Any] | None = None,
    eval_dataset: ReIDDataset | None = None,
    metric: str = "euclidean",
    hooks: Sequence[Any] = (),
    store: ResultsStore | None = None,
    progress: bool = True,
    **fit_kwargs: Any,
) -> Run:
    """Train ``build_model(num_classes)`` with ``build_criterion(num_classes)`` on ``dataset.train`` in the
    ``profile``, evaluate on ``eval_dataset`` (default: the same dataset) and store everything.

    ``options`` describes the method's own settings and enters the run's key together with the profile,
    the seed and the datasets; a complete run with the same key is returned without training. The run
    checkpoints every epoch, so an interrupted run resumes where it stopped.
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

    def train(run: Run) -> dict[str, Any]:
        num_classes = dataset.num_train_pids
        loader = build_train_loader(
            dataset.train, height=profile.height, width=profile.width, batch_size=profile.batch_size,
            num_instances=profile.batch_k, seed=seed, num_workers=profile.num_workers,
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
            model, build_criterion(num_classes), loader, epochs=profile.epochs, optimizer=profile.optimizer,
            lr=profile.lr, weight_decay=profile.weight_decay, warmup_epochs=profile.warmup_epochs,
            milestones=profile.milestones, gamma=profile.gamma,
            max_steps_per_epoch=profile.max_steps_per_epoch, eval_every=profile.eval_every,
            evaluator=evaluator if profile.eval_every else None,
            checkpoint_dir=run.checkpoint_dir, device=profile.device, seed=seed, hooks=hooks,
            progress=progress, **fit_kwargs,
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


def baseline_criterion(num_classes: int) -> BaselineCriterion:
    """The strong baseline's losses: label-smoothed cross-entropy (0.1) + batch-hard triplet (margin 0.3)."""
    return BaselineCriterion(num_classes, label_smoothing=0.1, triplet_margin=0.3)


def train_baseline(dataset: ReIDDataset, profile: Profile, *, seed: int | None = None, **kwargs: Any) -> Run:
    """The strong baseline's run: the one definition every chapter reuses from the results store."""
    return train_reid_model("baseline", dataset, profile, build_model=baseline_model_builder(profile),
                            build_criterion=baseline_criterion, seed=seed, **kwargs)


def load_trained(run: Run, build_model: Callable[[int], nn.Module], num_classes: int) -> nn.Module:
    """The stored model of ``run``, rebuilt with ``build_model(num_classes)``, in eval mode on the CPU."""
    return run.load_model(build_model(num_classes)).eval()
