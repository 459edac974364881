"""The command line: train the run a chapter would train, on one process or several, and list stored runs.

    python -m reidbook train --method baseline --dataset synthetic-market --profile cpu
    torchrun --standalone --nproc_per_node 4 -m reidbook train --method ianet --dataset market1501 \\
        --profile paper --data-root /data
    python -m reidbook runs --method baseline

``train`` builds the profile, the dataset and the method's options exactly as a chapter's first cells do
(``get_profile(profile, device=device)``, ``open_dataset(dataset, data_root, world=profile.world,
world_seed=...)``) and calls :func:`reidbook.experiment.train` for each seed of the profile (or those given),
so the run has the chapter's key and lands in the same results store: a chapter executed afterwards (with the
same profile, dataset and device kind) reuses it instead of training. Under ``torchrun`` every process runs
this command; they train one run together (:mod:`reidbook.distributed`), rank 0 prints and writes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
import torch

from . import distributed, experiment, methods
from .atomic import CorruptFileError, LockTimeoutError
from .data.registry import available_datasets
from .data.synthetic import PRESET_READERS
from .methods.recipe import Recipe
from .profiles import Profile, available_profiles, get_profile
from .results import FORCE_ENV_VAR, RESULTS_ENV_VAR, ResultsStore, Run

PROFILE_FIELDS = tuple(f.name for f in dataclasses.fields(Profile))
SCORES = (("rank1", "rank-1"), ("mAP", "mAP"), ("mINP", "mINP"))

PROG = "python -m reidbook"
DESCRIPTION = "reidbook: train the book's runs from a terminal (one process or torchrun) and list them."
TRAIN_EPILOG = """\
--set key=value (repeatable) changes a profile field (epochs=4, lr=0.01, milestones=[30,50],
world.num_train_ids=100 for a knob of the built-in world) or one of the method's options
(augmentation=random_erasing); prefix profile. or option. when a name is both. Values are read as JSON
when they parse (numbers, true/false, null, lists), as text otherwise. A changed setting is another run
(another key) than the chapter's.

The run is the chapter's run: the same profile, dataset, seeds, options, device kind and code give the
same key, and a chapter executed afterwards reuses it. The results store is $REIDBOOK_RESULTS (default:
<repo>/results); datasets are read, and the built-in world generated, under $REIDBOOK_DATA (default:
<repo>/data).

Several processes: torchrun --standalone --nproc_per_node N -m reidbook train ... trains one run with
DistributedDataParallel (nccl on CUDA, each process on its GPU; gloo on the CPU). The global batch (the
profile's batch size, which N must divide) and its order are the single process's; SyncBatchNorm is on
unless --no-sync-bn. Rank 0 prints and writes. The key does not depend on N.

Another process writing the same run (a notebook, a second job) is waited for: the message names it;
--lock-timeout S (or $REIDBOOK_LOCK_TIMEOUT) gives up after S seconds (0: at once). Under torchrun the
default is not to wait.

examples:
  python -m reidbook train --method baseline --dataset synthetic-market --profile smoke
  python -m reidbook train --method qaconv --dataset synthetic-market --profile cpu --seed 0 \\
      --set augmentation=random_erasing
  torchrun --standalone --nproc_per_node 4 -m reidbook train --method baseline --dataset market1501 \\
      --profile paper --data-root /data/reid
"""


def dataset_choices() -> list[str]:
    """The built-in worlds and the registered readers' names."""
    return [f"{experiment.SYNTHETIC_PREFIX}{p}" for p in PRESET_READERS] + available_datasets()


def _dataset(name: str) -> str:
    known = name.startswith(experiment.SYNTHETIC_PREFIX) and name[len(experiment.SYNTHETIC_PREFIX):] in \
        PRESET_READERS
    # the registry's own spelling rule: case, '-' and '_' do not matter
    known = known or name.lower().replace("_", "").replace("-", "") in available_datasets()
    if not known:
        raise argparse.ArgumentTypeError(f"unknown dataset {name!r}; choose one of: "
                                         + ", ".join(dataset_choices()))
    return name


def _device(name: str) -> str:
    if name == "auto":
        return name
    try:
        torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(f"unknown device {name!r} ({error}); use auto, cpu, cuda, cuda:N or "
                                         "mps") from None
    return name


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", metavar="{train,runs}")
    train = commands.add_parser(
        "train", help="train (or find stored) the run a chapter would train",
        description="Train one method on one dataset in one profile, for each seed, exactly as the\n"
                    "chapters do, and store the runs; a run already stored is reused.",
        epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--method", required=True, choices=methods.names(), metavar="METHOD",
                       help="the method: " + ", ".join(methods.names()))
    train.add_argument("--dataset", required=True, type=_dataset, metavar="DATASET",
                       help="a built-in world (" + ", ".join(f"synthetic-{p}" for p in PRESET_READERS)
                       + ") or a real dataset under --data-root (" + ", ".join(available_datasets()) + ")")
    train.add_argument("--profile", required=True, choices=available_profiles(), metavar="PROFILE",
                       help="the profile: " + ", ".join(available_profiles()))
    train.add_argument("--seed", type=int, action="append", metavar="S",
                       help="a training seed (repeatable; default: every seed of the profile, as chapters)")
    train.add_argument("--world-seed", type=int, default=0, metavar="N",
                       help="the built-in world's seed (the chapters' `seed` parameter; default 0)")
    train.add_argument("--data-root", metavar="DIR",
                       help="where datasets live (default: $REIDBOOK_DATA or <repo>/data)")
    train.add_argument("--results", metavar="DIR", help=f"the results store (default: ${RESULTS_ENV_VAR} or "
                       "<repo>/results)")
    train.add_argument("--device", type=_device, default="auto", metavar="DEVICE",
                       help="auto (CUDA, then MPS, then the CPU; default), cpu, cuda, cuda:N or mps")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="change a profile field or a method option (repeatable; see below)")
    train.add_argument("--force", action="store_true",
                       help=f"train again even if stored (as {FORCE_ENV_VAR}=1 does; pretraining runs too)")
    train.add_argument("--no-sync-bn", action="store_true",
                       help="under torchrun, let each process normalise with its own share of the batch")
    train.add_argument("--lock-timeout", type=_seconds, metavar="S",
                       help="give up after S seconds when another process writes the same run")
    train.add_argument("--quiet", action="store_true", help="no training progress bars")

    runs = commands.add_parser(
        "runs", help="list the runs in the results store",
        description="List stored runs: method, dataset, profile, seed, metrics, how many processes trained "
                    "them, and whether they are complete.",
    )
    runs.add_argument("--method", choices=methods.names(), metavar="METHOD", help="only this method's runs")
    runs.add_argument("--results", metavar="DIR", help=f"the results store (default: ${RESULTS_ENV_VAR} or "
                      "<repo>/results)")
    runs.add_argument("--verify", action="store_true",
                      help="check every file's SHA-256 (slower; by default only sizes are checked)")
    return parser


# ------------------------------------------------------------------------------------------------- --set
def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_settings(pairs: Sequence[str], recipe: Recipe) -> tuple[dict[str, Any], dict[str, Any]]:
    """``--set`` pairs -> (profile overrides, method options).

    Raises:
        ValueError: for a pair without ``=``, or a name that is neither a profile field, a world knob
            (``world.<knob>``) nor an option of the method (naming the valid ones), or is both unprefixed.
    """
    fields = ", ".join(PROFILE_FIELDS)
    valid_options = ", ".join(sorted(recipe.options)) or "it has none"
    overrides: dict[str, Any] = {}
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {pair!r}")
        value = _value(text)
        scope, dot, name = key.partition(".")
        if not dot:
            in_profile, in_options = key in PROFILE_FIELDS, key in recipe.options
            if in_profile and in_options:
                raise ValueError(f"{key!r} is both a profile field and an option of {recipe.name!r}: write "
                                 f"profile.{key}=... or option.{key}=...")
            scope, name = ("profile" if in_profile else "option" if in_options else ""), key
        if scope == "world":
            overrides.setdefault("world", {})[name] = value
        elif scope == "profile" and name in PROFILE_FIELDS:
            overrides[name] = value
        elif scope == "option" and name in recipe.options:
            options[name] = value
        else:
            raise ValueError(f"unknown setting {key!r}: not a profile field ({fields}), not world.<knob>, "
                             f"and not an option of {recipe.name!r} ({valid_options})")
    return overrides, options


# ------------------------------------------------------------------------------------------------ train
def _scores(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{label} {100 * float(metrics[key]):.1f}%" for key, label in SCORES if key in metrics)


def train_command(args: argparse.Namespace) -> int:
    """Exit status 0 when every run is stored, 1 when a run or the dataset could not be had, 2 for a bad
    setting."""
    recipe = methods.get(args.method)
    try:
        overrides, options = parse_settings(args.set, recipe)
        profile = get_profile(args.profile, device=args.device, **overrides)
        recipe.resolve_options(options)
    except ValueError as error:
        print(f"{PROG} train: error: {error}", file=sys.stderr)
        return 2
    store = ResultsStore(args.results, lock_timeout=args.lock_timeout)
    if args.force:
        os.environ[FORCE_ENV_VAR] = "1"
    try:
        distributed.init_from_env(args.device)
    except ValueError as error:
        print(f"{PROG} train: error: {error}", file=sys.stderr)
        return 2
    main = distributed.is_main_process()
    try:
        with contextlib.ExitStack() as stack:
            if not main:  # one voice: rank 0 prints
                stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
            runs = _train_runs(args, profile, options, store)
    except (LockTimeoutError, CorruptFileError, DatasetError) as error:
        print(f"{PROG} train: error: {error}", file=sys.stderr)
        return 1
    finally:
        distributed.close()
    if main:
        for run in runs:
            print(f"{run.name} seed {run.config['seed']}: {_scores(run.load_metrics()) or 'no metrics'}; "
                  f"stored in {run.dir} ({run.status()})")
    return 0


class DatasetError(RuntimeError):
    """The dataset could not be opened (missing folder, wrong layout); the cause says why."""


def _train_runs(args: argparse.Namespace, profile: Profile, options: dict[str, Any],
                store: ResultsStore) -> list[Run]:
    def open_data() -> Any:
        try:
            return experiment.open_dataset(args.dataset, args.data_root, world=profile.world,
                                           world_seed=args.world_seed)
        except (OSError, ValueError, KeyError) as error:
            raise DatasetError(str(error)) from error

    data = open_data() if distributed.is_main_process() else None  # rank 0 renders a missing world
    distributed.barrier()
    data = data if data is not None else open_data()
    seeds = args.seed or list(profile.seeds)
    return [experiment.train(args.method, data, profile, seed=seed, store=store, progress=not args.quiet,
                             sync_batchnorm=not args.no_sync_bn, **options) for seed in seeds]


# ------------------------------------------------------------------------------------------------- runs
def _read(run: Run, what: str) -> dict[str, Any]:
    try:
        return run.load_metrics() if what == "metrics" else run.read_json(what)
    except (CorruptFileError, ValueError):
        return {}


def runs_frame(store: ResultsStore, method: str | None = None, verify: bool = False) -> pd.DataFrame:
    """One row per stored run (complete or not): method, dataset, profile, seed, rank-1 / mAP / mINP (%),
    processes (how many trained it), status (:meth:`reidbook.results.Run.status`), key."""
    rows = []
    for run in store.runs(None if method is None else [method], include_incomplete=True):
        data = run.config.get("data", {})
        metrics = _read(run, "metrics")
        rows.append({
            "method": run.name,
            "dataset": data.get("built_in", {}).get("dataset", data.get("name", "?")),
            "profile": run.config.get("profile", {}).get("name", "?"),
            "seed": run.config.get("seed"),
            **{label: round(100 * float(metrics[k]), 1) if k in metrics else None for k, label in SCORES},
            "processes": _read(run, "training.json").get("world_size"),
            "status": run.status(verify=verify),
            "key": run.key,
        })
    return pd.DataFrame(rows)


def runs_command(args: argparse.Namespace) -> int:
    store = ResultsStore(args.results)
    frame = runs_frame(store, args.method, args.verify)
    if frame.empty:
        print(f"no runs{'' if args.method is None else ' of ' + args.method} in {store.root}")
        return 0
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(frame.to_string(index=False, na_rep="-"))
    print(f"{len(frame)} runs in {store.root}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return train_command(args)
    if args.command == "runs":
        return runs_command(args)
    parser.print_help()
    return 2
