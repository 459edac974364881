"""From a method, a dataset and a profile to a stored, evaluated run: the generic glue every chapter shares.

    data = open_dataset("synthetic-market")             # the built-in world, read by the Market-1501 reader
    run = train("ianet", data, "cpu", seed=0)           # trained once, then found in the results store
    lookup("ianet", data, "cpu", seed=0).complete       # the same Run without training: is it stored?
    model = load_model(run)                             # the trained model, in eval mode
    result = evaluate(run, other_data, post=[ReRank()]) # an evaluation stored under the run, reused later

Everything method-specific comes from the method's recipe (:mod:`reidbook.methods`): this module knows no
paper. A run's key hashes its config (method, options, data, profile, seed, how its backbone started) and
the source of the code it uses: this module, the recipe's module and what they import
(:mod:`reidbook.fingerprint`). Training checkpoints every epoch into the store, so an interrupted run
resumes where it stopped, and prints one summary line per run (the progress bars are for the terminal or
JupyterLab; a rendered chapter keeps the summary).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from .data import ReIDDataset, load_dataset
from .distributed import is_main_process, world_size
from .engine import CheckpointDir, fit, resolve_device, seed_everything
from .evaluation.evaluators import Evaluation, Evaluator, PostStep, TestSplit, describe
from .fingerprint import code_fingerprint
from .methods.recipe import Recipe
from .methods.registry import get as get_recipe
from .models.backbones import Backbone, build_backbone
from .models.baseline import param_groups
from .profiles import Profile, available_profiles, get_profile
from .results import REPO_DIR, ResultsStore, Run, canonical_json, evaluation_key, force_from_env

SYNTHETIC_PREFIX = "synthetic-"
DATA_ENV_VAR = "REIDBOOK_DATA"
#: Profile fields that cannot change a run: presentation and the list of seeds (each run has its own).
UNKEYED_PROFILE_FIELDS = ("budgets", "seeds", "device", "stress_world")


# ----------------------------------------------------------------------------------------------- datasets
def default_data_root() -> Path:
    """``$REIDBOOK_DATA`` if set, else ``<repo>/data``: where datasets are read and the world is generated."""
    return Path(os.environ.get(DATA_ENV_VAR, REPO_DIR / "data"))


def open_dataset(
    dataset: str,
    data_root: str | Path | None = None,
    *,
    world: Mapping[str, Any] | None = None,
    world_seed: int = 0,
    **reader_kwargs: Any,
) -> ReIDDataset:
    """Open ``dataset`` under ``data_root`` (default: :func:`default_data_root`).

    ``"synthetic-<preset>"`` (``synthetic-market``, ``synthetic-market-b``, ``synthetic-sysu``, ...) generates
    the built-in world (cached under ``data_root/synthetic``) with the knobs ``world`` and reads it with the
    real reader of that layout; any other name goes straight to :func:`reidbook.data.load_dataset` (e.g.
    ``"market1501"``, ``"dukemtmcreid"``, ``"sysu"``).
    """
    data_root = default_data_root() if data_root is None else Path(data_root)
    if not dataset.startswith(SYNTHETIC_PREFIX):
        return load_dataset(dataset, data_root, **reader_kwargs)
    from .data.synthetic import PRESET_READERS, generate_world

    preset = dataset[len(SYNTHETIC_PREFIX):]
    if preset not in PRESET_READERS:
        raise ValueError(f"unknown built-in world {dataset!r}; choose one of "
                         + ", ".join(SYNTHETIC_PREFIX + p for p in PRESET_READERS))
    root = generate_world(data_root, preset=preset, seed=world_seed, **dict(world or {}))
    opened = load_dataset(PRESET_READERS[preset], root, **reader_kwargs)
    opened.meta["built_in"] = {"dataset": dataset, "world_seed": world_seed, "world": dict(world or {}),
                               "reader_kwargs": dict(reader_kwargs)}
    return opened


def dataset_identity(dataset: ReIDDataset) -> dict[str, Any]:
    """What identifies a dataset in a run's config: reader name, folder, split sizes, training identities,
    for the built-in world how it was generated (so that stress worlds can be derived from a run), and
    ``meta["variant"]``, set by whatever changed the records after reading (e.g. label noise)."""
    identity = {
        "name": dataset.name,
        "folder": Path(dataset.root).name,
        "sizes": [len(dataset.train), len(dataset.query), len(dataset.gallery)],
        "num_train_pids": dataset.num_train_pids,
    }
    for key in ("built_in", "variant"):  # how it was generated; how it was changed after reading (e.g. noise)
        if key in dataset.meta:
            identity[key] = dataset.meta[key]
    return identity


def as_profile(profile: Profile | str) -> Profile:
    return get_profile(profile) if isinstance(profile, str) else profile


# ------------------------------------------------------------------------------------------ planning a run
@dataclass(frozen=True)
class _Plan:
    recipe: Recipe
    profile: Profile
    seed: int
    options: dict[str, Any]
    config: dict[str, Any]
    code: str
    start: Run | None  # the run whose backbone this one starts from (profile.init == "world")


def _code(recipe: Recipe) -> str:
    return code_fingerprint((__name__, recipe.module))


def _keyed_profile(profile: Profile) -> dict[str, Any]:
    return {k: v for k, v in profile.to_dict().items() if k not in UNKEYED_PROFILE_FIELDS}


def pretraining(profile: Profile | str, *, store: ResultsStore | None = None, train_missing: bool = True,
                progress: bool = True) -> Run:
    """The run that gives every ``init="world"`` backbone its start: ``profile.pretrain["method"]`` trained
    once on the pretraining world (identities disjoint from the default world's), then reused by every
    chapter. ``train_missing=False`` only looks it up."""
    profile = as_profile(profile)
    spec = profile.pretrain
    if not spec:
        raise ValueError(f"profile {profile.name!r} has no pretrain spec")
    data = open_dataset(spec["dataset"], world=spec["world"], world_seed=spec["world_seed"])
    schedule = {k: spec[k] for k in ("epochs", "milestones", "warmup_epochs", "max_steps_per_epoch")
                if k in spec}
    # One pretraining per backbone: the named profile's settings (input size, stem, numerics), whatever a
    # chapter changes for its fine-tuning (another input size, no stem pooling), so that all start alike.
    base = get_profile(profile.name) if profile.name in available_profiles() else profile
    pre_profile = base.replace(backbone=profile.backbone, init="random", pretrain={}, eval_every=0,
                               **schedule)
    stored = lookup(spec["method"], data, pre_profile, seed=0, store=store)
    if (stored.complete and not stored.problems()) or not train_missing:
        return stored  # found without a word: every run of the book starts from it
    return train(spec["method"], data, pre_profile, seed=0, store=store, progress=progress)


def _plan(method: str, dataset: ReIDDataset, profile: Profile | str, seed: int | None,
          options: Mapping[str, Any], store: ResultsStore, *, train_missing: bool, progress: bool) -> _Plan:
    recipe = get_recipe(method)
    profile = recipe.profile_for(as_profile(profile))
    seed = profile.seed if seed is None else seed
    resolved = recipe.resolve_options(options)
    start = None
    if profile.init == "world":
        start = pretraining(profile, store=store, train_missing=train_missing, progress=progress)
    config = {
        "method": recipe.name,
        "data": dataset_identity(dataset),
        "profile": _keyed_profile(profile),
        "device": resolve_device(profile.device).type,
        "seed": seed,
        "options": resolved,
        "start": {"init": profile.init, **({"run": f"{start.name}/{start.key}"} if start else {})},
    }
    return _Plan(recipe, profile, seed, resolved, config, _code(recipe), start)


def lookup(method: str, dataset: ReIDDataset, profile: Profile | str, seed: int | None = None, *,
           store: ResultsStore | None = None, **options: Any) -> Run:
    """The :class:`~reidbook.results.Run` that :func:`train` would return, without training anything:
    ``run.key`` and ``run.complete`` say whether it is stored."""
    store = store or ResultsStore()
    plan = _plan(method, dataset, profile, seed, options, store, train_missing=False, progress=False)
    return store.run(plan.recipe.name, plan.config, plan.code)


# ------------------------------------------------------------------------------------------ building models
def _backbone(recipe: Recipe, profile: Profile, start: Run | None) -> Backbone:
    settings = {"last_stride": profile.last_stride, "stem_pool": profile.stem_pool, **recipe.backbone}
    backbone = build_backbone(profile.backbone, pretrained=profile.init == "imagenet", **settings)
    if start is not None:
        weights = start.load_weights()
        prefix = "backbone."
        backbone.load_state_dict({k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)})
    return backbone


def _build(plan: _Plan, num_classes: int) -> nn.Module:
    seed_everything(plan.seed)  # the new layers' initial weights depend on the seed alone
    backbone = _backbone(plan.recipe, plan.profile, plan.start)
    return plan.recipe.build_model(backbone, num_classes, plan.profile, plan.options)


def untrained_model(method: str, num_classes: int, profile: Profile | str, seed: int | None = None, *,
                    store: ResultsStore | None = None, **options: Any) -> nn.Module:
    """The model that :func:`train` would start from (the recipe's model on a backbone started as the
    profile says, the new layers drawn from ``seed``), in eval mode: for sanity checks before training."""
    recipe = get_recipe(method)
    profile = recipe.profile_for(as_profile(profile))
    start = pretraining(profile, store=store) if profile.init == "world" else None
    seed = profile.seed if seed is None else seed
    plan = _Plan(recipe, profile, seed, recipe.resolve_options(options), config={}, code="", start=start)
    return _build(plan, num_classes).eval()


_MODELS: OrderedDict[str, nn.Module] = OrderedDict()
_SPLITS: OrderedDict[str, TestSplit] = OrderedDict()
_CACHE_SIZE = 4


def _remember(cache: OrderedDict, key: str, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _stored_profile(run: Run) -> Profile:
    """The profile ``run`` was trained with, without its start (the weights come from the run itself)."""
    return Profile.from_dict({**run.config["profile"], "init": "random", "pretrain": {}})


def run_evaluator(run: Run) -> Evaluator:
    """The evaluator ``run`` is judged with: its recipe's, without flip averaging where its profile says
    ``test_flip=False``."""
    return _evaluator(get_recipe(run.config["method"]), run.config["options"], _stored_profile(run))


def _evaluator(recipe: Recipe, options: Mapping[str, Any], profile: Profile) -> Evaluator:
    evaluator = recipe.evaluator_for(options)
    if profile.test_flip or not evaluator.measure.flip:
        return evaluator
    return dataclasses.replace(evaluator, measure=dataclasses.replace(evaluator.measure, flip=False))


def _test_inputs(recipe: Recipe, profile: Profile) -> dict[str, Any]:
    """How ``recipe``'s model reads test images under ``profile``: the keyword arguments of
    :meth:`Evaluator.split` and :meth:`Evaluator.evaluate` that the two decide."""
    return {"height": profile.height, "width": profile.width, "feed": recipe.feed,
            "num_workers": profile.num_workers, "channels_last": profile.channels_last}


def load_model(run: Run) -> nn.Module:
    """The trained model of ``run``, rebuilt from its recipe and config, in eval mode on the CPU."""
    if run.dir.as_posix() in _MODELS:
        return _MODELS[run.dir.as_posix()]
    if not run.complete:
        raise FileNotFoundError(f"run {run.name}/{run.key} is not complete: train it first")
    recipe = get_recipe(run.config["method"])
    profile = _stored_profile(run)
    backbone = _backbone(recipe, profile, None)
    model = recipe.build_model(backbone, run.config["data"]["num_train_pids"], profile, run.config["options"])
    return _remember(_MODELS, run.dir.as_posix(), run.load_model(model).eval())


# -------------------------------------------------------------------------------------------------- training
def _summary(run: Run, action: str) -> str:
    info = run.read_json("training.json")
    metrics = run.load_metrics()
    losses = ", ".join(f"{name} {value:.3f}" for name, value in info.get("final_losses", {}).items())
    scores = ", ".join(f"{label} {100 * metrics[key]:.1f}%" for key, label in
                       (("rank1", "rank-1"), ("mAP", "mAP"), ("mINP", "mINP")) if key in metrics)
    trained = (f"{info.get('epochs', '?')} epochs in {info.get('seconds', 0) / 60:.1f} min on "
               f"{info.get('device', '?')}")
    return f"{run.name} (seed {run.config['seed']}, {run.config['data']['name']}): {action} ({trained}); " \
           f"final losses {losses or '-'}; {scores}"


def train(method: str, dataset: ReIDDataset, profile: Profile | str, seed: int | None = None, *,
          store: ResultsStore | None = None, progress: bool = True, sync_batchnorm: bool = True,
          **options: Any) -> Run:
    """Train ``method`` on ``dataset.train`` in ``profile`` (the recipe's changes applied) and evaluate it on
    ``dataset``'s test split with the recipe's evaluator; return the complete, stored run. A run already
    stored under the same key is returned without training (``REIDBOOK_FORCE=1`` retrains; a stored run with
    a damaged file is trained again). ``options`` are the method's own (see
    ``reidbook.methods.get(method).options``).

    Under several processes (``torchrun``, see :mod:`reidbook.distributed`) every rank calls it alike: the
    run has the same key as one process's (same global batches), every rank trains its share, rank 0
    stores; ``sync_batchnorm`` (not part of the key) normalises with the global batch's statistics."""
    store = store or ResultsStore()
    plan = _plan(method, dataset, profile, seed, options, store, train_missing=True, progress=progress)
    existing = store.run(plan.recipe.name, plan.config, plan.code)
    if existing.complete and not force_from_env() and not existing.problems():
        print(_summary(existing, "reused from the results store"), flush=True)
        return existing
    recipe, profile = plan.recipe, plan.profile
    evaluator = _evaluator(recipe, plan.options, profile)
    device = resolve_device(profile.device)

    def judge(model: nn.Module) -> dict[str, Any]:
        return evaluator.evaluate(model, dataset, device=device, **_test_inputs(recipe, profile)).metrics

    def train_fn(run: Run) -> dict[str, Any]:
        num_classes = dataset.num_train_pids
        loader = recipe.loader(dataset.train, profile, plan.seed, recipe.augment, plan.options)
        model = _build(plan, num_classes)
        lr_mults = dict(recipe.trained_start_lr_mults) if profile.init != "random" else {}
        started, cpu_started = time.perf_counter(), time.process_time()
        history = fit(
            model, recipe.build_criterion(model, num_classes, plan.options), loader, epochs=profile.epochs,
            optimizer=profile.optimizer, lr=profile.lr, weight_decay=profile.weight_decay,
            warmup_epochs=profile.warmup_epochs, milestones=profile.milestones, gamma=profile.gamma,
            max_steps_per_epoch=profile.max_steps_per_epoch, eval_every=profile.eval_every,
            evaluator=judge if profile.eval_every else None, checkpoint_dir=run.checkpoint_dir, device=device,
            seed=plan.seed, hooks=recipe.build_hooks(profile, plan.options), feed=recipe.feed,
            amp=profile.amp, channels_last=profile.channels_last, progress=progress,
            param_groups=param_groups(model, profile.lr, lr_mults) if lr_mults else None,
            sync_batchnorm=sync_batchnorm,
        )
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        writer = is_main_process()  # under several processes only rank 0 writes
        if writer:
            run.save_model(model)
            run.save_history(history)
            steps = history.steps
            terms = [c[: -len("_weight")] for c in steps.columns if c.endswith("_weight")]
            last_epoch = history.epochs.iloc[-1]
            run.write_json("training.json", {
                "seconds": seconds, "cpu_seconds": cpu_seconds, "threads": torch.get_num_threads(),
                "epochs": profile.epochs, "steps": len(steps), "device": device.type,
                "images_per_second": len(steps) * profile.batch_size / max(steps["time"].sum(), 1e-9),
                "final_losses": {t: float(last_epoch[t]) for t in terms},
                "parameters": sum(p.numel() for p in model.parameters()),
                "world_size": world_size(), "sync_batchnorm": sync_batchnorm and world_size() > 1,
            })
        result = evaluator.evaluate(model.eval(), dataset, device=device, **_test_inputs(recipe, profile))
        if writer:
            _store_evaluation(run, dataset, result, keep_distances=False)
        _remember(_MODELS, run.dir.as_posix(), model.cpu())
        return result.metrics

    run = store.get_or_train(recipe.name, plan.config, train_fn, code=plan.code)
    print(_summary(run, "trained"), flush=True)
    return run


# ------------------------------------------------------------------------------------------------ evaluation
def _evaluation_description(run: Run, dataset: ReIDDataset, evaluator: Evaluator,
                            post: Sequence[PostStep]) -> dict[str, Any]:
    return {"data": dataset_identity(dataset), **evaluator.describe(dataset, post)}


def _store_evaluation(run: Run, dataset: ReIDDataset, result: Evaluation, keep_distances: bool) -> None:
    description = {"data": dataset_identity(dataset), **result.description}
    distances = result.distances.numpy() if keep_distances and result.distances is not None else None
    run.save_evaluation(evaluation_key(description), description, result.metrics, distances)


def evaluate(run: Run, dataset: ReIDDataset, evaluator: Evaluator | None = None,
             post: Sequence[PostStep] = (), *, keep_distances: bool = False,
             progress: bool = False) -> Evaluation:
    """Evaluate the trained model of ``run`` on ``dataset``'s test split (default: :func:`run_evaluator`),
    after the post-processing steps ``post``; stored under the run, keyed by evaluator, data and
    post-processing, and reused when asked again. ``keep_distances`` also stores (and returns) the final
    distance matrix, for figures. Within one process, test features and distance matrices are kept for the
    last few (run, dataset, measure) combinations, so post-processing variants share them."""
    evaluator = evaluator or run_evaluator(run)
    description = _evaluation_description(run, dataset, evaluator, post)
    key = evaluation_key(description)
    stored = run.load_evaluation(key, distances=keep_distances)
    if stored is not None:
        metrics, distances = stored
        return Evaluation(metrics, None if distances is None else torch.as_tensor(distances), description)
    split = _split(run, dataset, evaluator, progress)
    result = evaluator.evaluate_split(split, dataset, post)
    if is_main_process():  # under several processes the features were gathered in every rank; rank 0 stores
        _store_evaluation(run, dataset, result, keep_distances)
    return Evaluation(result.metrics, result.distances, description)


def _split(run: Run, dataset: ReIDDataset, evaluator: Evaluator, progress: bool = False) -> TestSplit:
    """The test features of ``run``'s model on ``dataset`` for ``evaluator``'s measure (kept in memory for
    the last few combinations, with the distance matrices computed from them)."""
    key = canonical_json([run.dir.as_posix(), dataset_identity(dataset), describe(evaluator.measure)])
    if key in _SPLITS:
        return _SPLITS[key]
    recipe = get_recipe(run.config["method"])
    profile = _stored_profile(run)
    return _remember(_SPLITS, key, evaluator.split(load_model(run), dataset, device="auto", progress=progress,
                                                   **_test_inputs(recipe, profile)))


def hook_states(run: Run) -> list[Any]:
    """The state of each of the run's training hooks at the end of training (e.g. a dynamic-training log),
    from its last checkpoint; ``[]`` when it kept none."""
    checkpoint = CheckpointDir(run.checkpoint_dir).load_latest()
    return [] if checkpoint is None else list(checkpoint["hooks"])


def features(run: Run, dataset: ReIDDataset, evaluator: Evaluator | None = None) -> TestSplit:
    """The :class:`~reidbook.evaluation.evaluators.TestSplit` of ``run`` on ``dataset``: its model, its
    query and gallery features (``query_feats``, ``gallery_feats``) and its distances
    (``role_distances("query", "gallery")``), for figures that need more than the metrics."""
    return _split(run, dataset, evaluator or run_evaluator(run))


def evaluation_frame(runs: Mapping[str, Sequence[Run]], datasets: Mapping[str, ReIDDataset],
                     evaluator: Evaluator | None = None, post: Sequence[PostStep] = (),
                     metrics: Sequence[str] = ("rank1", "mAP", "mINP")) -> pd.DataFrame:
    """Every run evaluated on every dataset (stored evaluations, reused when they exist): one row per
    (label, run, dataset) with ``label`` (the key of ``runs``), ``seed``, ``train`` (the name of the data the
    run was trained on, as a key of ``datasets`` when it is one of them), ``test`` and ``metrics``."""
    trained_on = {canonical_json(dataset_identity(d)): name for name, d in datasets.items()}
    rows = []
    for label, group in runs.items():
        for run in group:
            train_name = trained_on.get(canonical_json(run.config["data"]), run.config["data"]["name"])
            for test_name, dataset in datasets.items():
                result = evaluate(run, dataset, evaluator, post)
                rows.append({"label": label, "seed": run.config["seed"], "train": train_name,
                             "test": test_name, **{m: result.metrics[m] for m in metrics}})
    return pd.DataFrame(rows)


def headline(method: str, profile: Profile | str, data_root: str | Path | None = None, *,
             store: ResultsStore | None = None) -> pd.DataFrame:
    """The comparison behind ``method``'s headline claim (its recipe's ``headline``): the method and its
    reference, each trained on the headline's world with every seed of the profile (found in the store when
    the method's chapter ran), evaluated on the headline's test world. One row per run: ``role``
    (``"method"`` or ``"reference"``), ``label``, ``seed``, ``test`` and rank-1, mAP, mINP (and the
    headline's metric)."""
    recipe = get_recipe(method)
    claim = recipe.headline
    if claim is None:
        raise ValueError(f"method {method!r} has no headline claim in its recipe")
    profile = as_profile(profile)
    data = open_dataset(claim.dataset, data_root, world=profile.world)
    test = data if claim.test is None else open_dataset(claim.test, data_root, world=profile.world)
    frames = []
    for role, name, options in (("method", method, claim.options),
                                ("reference", claim.reference, claim.reference_options)):
        runs = [train(name, data, profile, seed=s, store=store, **options) for s in profile.seeds]
        label = name if not options else f"{name} ({', '.join(f'{k}={v}' for k, v in options.items())})"
        metrics = tuple(dict.fromkeys(("rank1", "mAP", "mINP", claim.metric)))
        frame = evaluation_frame({label: runs}, {claim.test or claim.dataset: test}, metrics=metrics)
        frames.append(frame.assign(role=role))
    return pd.concat(frames, ignore_index=True)


def pair_throughput(run: Run, dataset: ReIDDataset, queries: int = 64, gallery: int = 512) -> float:
    """Query-gallery pairs per second of the run's measure (embedding distances, or the model's own pair
    distances) on this machine: the first ``queries`` queries of ``dataset`` against its first ``gallery``
    gallery images (feature extraction not counted)."""
    recipe = get_recipe(run.config["method"])
    evaluator = run_evaluator(run)
    profile = _stored_profile(run)
    sample = ReIDDataset(dataset.name, dataset.root, [], dataset.query[:queries], dataset.gallery[:gallery])
    split = evaluator.split(load_model(run), sample, **_test_inputs(recipe, profile))
    start = time.perf_counter()
    split.distances(split.query_feats, split.gallery_feats)
    return len(sample.query) * len(sample.gallery) / (time.perf_counter() - start)


def stress_curve(runs: Sequence[Run] | Mapping[str, Sequence[Run]], nuisances: str | Sequence[str],
                 strengths: Sequence[float], *, test_world: Mapping[str, Any],
                 evaluator: Evaluator | None = None,
                 metrics: Sequence[str] = ("rank1", "mAP")) -> pd.DataFrame:
    """Trained models evaluated, without retraining, on fresh test worlds of their built-in world whose
    ``nuisances`` (one knob name or several, set together) have each of ``strengths`` (1 = the training
    world's strength), with the test split ``test_world`` (a profile's ``stress_world``, e.g. fewer test
    identities). ``runs`` is a list (each row labelled by its method) or ``{label: runs}``. One row per
    (run, strength): method (the label), seed, strength and ``metrics``. The
    evaluations are stored under each run, so a later chapter reads the same numbers.

    Raises:
        ValueError: when a run was not trained on the built-in world (real data has no stress knobs).
    """
    knobs = [nuisances] if isinstance(nuisances, str) else list(nuisances)
    labelled = ([(label, run) for label, group in runs.items() for run in group] if isinstance(runs, Mapping)
                else [(run.name, run) for run in runs])
    rows = []
    for strength in strengths:
        worlds: dict[str, ReIDDataset] = {}
        for label, run in labelled:
            source = run.config["data"].get("built_in")
            if source is None:
                raise ValueError(f"run {run.name}/{run.key} was trained on {run.config['data']['name']}, "
                                 "not on the built-in world: stress worlds exist only for the built-in world")
            world = {**source["world"], **test_world, **dict.fromkeys(knobs, strength)}
            name = canonical_json([source["dataset"], source["world_seed"], world,
                                   source.get("reader_kwargs", {})])
            if name not in worlds:
                worlds[name] = open_dataset(source["dataset"], world=world, world_seed=source["world_seed"],
                                            **source.get("reader_kwargs", {}))
            result = evaluate(run, worlds[name], evaluator)
            rows.append({"method": label, "seed": run.config["seed"], "strength": strength,
                         **{m: result.metrics[m] for m in metrics}})
    return pd.DataFrame(rows)
