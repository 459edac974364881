"""Run profiles: how big a world, model and training budget a notebook uses.

A profile is plain data (a frozen dataclass) so that a notebook can print it, override a few fields and hand
it to the results store, which hashes its JSON form. Three profiles ship with the book:

- ``smoke``: every notebook runs in about 90 s on 2 CPU cores (tiny world, few steps); used by ``make test``.
- ``cpu``: the default of ``make book``; the published book on the built-in world on a 2-core CPU.
- ``paper``: the strong-baseline settings of Luo et al. (ResNet-50, 256x128, ImageNet weights, 120 epochs,
  Adam 3.5e-4 with a 10-epoch linear warm-up and x0.1 decays at epochs 40 and 70, P=16 identities x K=4
  images per batch), meant for a real dataset on a GPU. Method chapters override what their paper changes.

Example::

    profile = get_profile("cpu", epochs=4, world={"num_train_ids": 60})
    profile.batch_size  # P * K
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .budgets import CPU_BUDGETS, SMOKE_BUDGETS

PROFILE_ENV_VAR = "REIDBOOK_PROFILE"
#: Test split of the stress worlds (trained models evaluated as a nuisance grows): only the test images are
#: used, so two training identities suffice.
STRESS_TEST_WORLD = {"num_train_ids": 2, "num_test_ids": 60, "num_distractors": 40, "num_junk": 0}
DEFAULT_PROFILE = "cpu"


@dataclass(frozen=True)
class Profile:
    """Every knob a chapter reads to build its world, model and training run.

    ``init`` says how a backbone starts: ``"random"``, ``"imagenet"`` (torchvision's weights, used only if
    already in the local torch cache) or ``"world"`` (the backbone of a strong baseline trained once on the
    larger built-in pretraining world ``pretrain``, with identities disjoint from the default world's: the
    book's stand-in for ImageNet on a CPU). ``stem_pool=False`` drops the backbone stem's max-pooling, which
    doubles every feature map's height and width. ``milestones`` and ``warmup_epochs`` are in epochs;
    ``batch_p`` identities x ``batch_k`` images form a batch; ``world`` holds the knobs passed to
    ``reidbook.data.synthetic.generate_world``; ``seeds`` lists the seeds of a multi-seed comparison (the
    first one is used for single runs); ``max_steps_per_epoch`` caps an epoch (``None`` = the whole
    sampler). ``stress_world`` holds the knobs of the stress curves' test worlds. ``amp`` (bf16 autocast
    on a CPU, fp16 on CUDA) and ``channels_last`` take True, False or ``"auto"`` (on with CUDA).
    ``test_flip=False`` skips the flip averaging of test features that a method's evaluator asks for
    (it halves the test images' forward passes; a few tenths of a point of mAP).
    ``budgets`` gives each chapter's time budget in seconds, by file name.
    """

    name: str
    backbone: str = "resnet18"
    init: str = "random"
    stem_pool: bool = True
    last_stride: int = 1
    height: int = 128
    width: int = 64
    epochs: int = 6
    batch_p: int = 8
    batch_k: int = 4
    optimizer: str = "adam"
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    warmup_epochs: int = 1
    milestones: tuple[int, ...] = (4,)
    gamma: float = 0.1
    max_steps_per_epoch: int | None = None
    eval_every: int = 0
    world: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    num_workers: int = 0
    device: str = "auto"
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"
    test_flip: bool = True
    pretrain: dict[str, Any] = field(default_factory=dict)
    stress_world: dict[str, Any] = field(default_factory=lambda: dict(STRESS_TEST_WORLD))
    budgets: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.init == "world" and not self.pretrain:
            raise ValueError("init='world' needs a pretrain spec (method, dataset, world_seed, world, "
                             "epochs, milestones)")

    @property
    def batch_size(self) -> int:
        """Images per batch: P identities x K instances."""
        return self.batch_p * self.batch_k

    @property
    def seed(self) -> int:
        """The seed of a single run: the first of ``seeds``."""
        return self.seeds[0]

    def replace(self, **overrides: Any) -> Profile:
        """A copy with some fields changed; ``world`` is merged key by key and always copied.

        Raises:
            ValueError: if an override names no field of :class:`Profile`.
        """
        _check_field_names(overrides)
        world = {**self.world, **overrides.pop("world", {})}
        changes = {
            name: _normalise_value(name, value) for name, value in {**overrides, "world": world}.items()
        }
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        return json.loads(self.to_json())

    def to_json(self) -> str:
        """Canonical JSON text: sorted keys, so equal profiles give equal text."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Profile:
        """Inverse of :meth:`to_dict` (lists become tuples again)."""
        _check_field_names(data)
        return cls(**{name: _normalise_value(name, value) for name, value in data.items()})

    @classmethod
    def from_json(cls, text: str) -> Profile:
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(text))


_TUPLE_FIELDS = ("milestones", "seeds")
_DICT_FIELDS = ("world", "pretrain", "stress_world", "budgets")
INITS = ("random", "imagenet", "world")


def _normalise_value(name: str, value: Any) -> Any:
    if name in _TUPLE_FIELDS:
        return tuple(value)
    if name in _DICT_FIELDS:
        return copy.deepcopy(dict(value))
    return value


def _check_field_names(names: Mapping[str, Any]) -> None:
    valid = [f.name for f in dataclasses.fields(Profile)]
    unknown = sorted(set(names) - set(valid))
    if unknown:
        raise ValueError(f"unknown profile field(s) {unknown}; valid fields are: {', '.join(valid)}")


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke",
        backbone="resnet18",
        height=64,
        width=32,
        epochs=2,
        batch_p=4,
        batch_k=2,
        warmup_epochs=0,
        milestones=(),
        max_steps_per_epoch=4,
        world={"world_size": "small"},
        stress_world={"num_train_ids": 2, "num_test_ids": 12, "num_distractors": 10, "num_junk": 0},
        budgets=SMOKE_BUDGETS,
        seeds=(0,),
    ),
    # The published book on 2 cores (see benchmarks/bench_training.py and bench_fair_start.py for the
    # measurements behind these choices): every backbone starts from the world-pretrained one and is
    # fine-tuned briefly; channels_last is the one numerical setting that speeds training on this CPU.
    "cpu": Profile(
        name="cpu",
        backbone="resnet18",
        init="world",
        height=64,
        width=32,
        epochs=2,
        max_steps_per_epoch=35,
        batch_p=16,
        batch_k=4,
        warmup_epochs=0,
        milestones=(),
        eval_every=0,
        world={},
        seeds=(0, 1),
        channels_last=True,
        test_flip=False,
        pretrain={
            "method": "baseline",
            "dataset": "synthetic-market",
            "world_seed": 1,
            "world": {"num_train_ids": 300, "num_test_ids": 40, "num_distractors": 20, "num_junk": 0},
            "epochs": 6,
            "max_steps_per_epoch": None,
            "milestones": [5],
            "warmup_epochs": 1,
        },
        budgets=CPU_BUDGETS,
    ),
    "paper": Profile(
        name="paper",
        backbone="resnet50",
        init="imagenet",
        last_stride=1,
        height=256,
        width=128,
        epochs=120,
        batch_p=16,
        batch_k=4,
        optimizer="adam",
        lr=3.5e-4,
        weight_decay=5e-4,
        warmup_epochs=10,
        milestones=(40, 70),
        gamma=0.1,
        eval_every=10,
        seeds=(0,),
        num_workers=8,
        device="auto",
    ),
}


def available_profiles() -> list[str]:
    """Names accepted by :func:`get_profile`."""
    return sorted(PROFILES)


def default_profile_name() -> str:
    """The profile named by the ``REIDBOOK_PROFILE`` environment variable, else ``"cpu"``."""
    return os.environ.get(PROFILE_ENV_VAR, DEFAULT_PROFILE)


def get_profile(name: str | None = None, **overrides: Any) -> Profile:
    """The named profile (default: :func:`default_profile_name`) with ``overrides`` applied.

    Raises:
        ValueError: for an unknown profile name or an unknown field name.
    """
    name = default_profile_name() if name is None else name
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; available profiles: {', '.join(available_profiles())}")
    return PROFILES[name].replace(**overrides)
