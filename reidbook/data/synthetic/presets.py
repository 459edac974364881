"""Presets of the synthetic world and its knobs: world size, timeline and nuisance strengths.

A world is fully determined by (preset, seed, :data:`GENERATOR_VERSION`, knobs). Worlds are cached in a
folder named after the first three plus a short hash of the knobs that differ from the preset's
defaults, e.g. ``market-s0-v2`` or ``market-s0-v2-k3f2a9c``.

Presets and the real dataset reader that reads each (:data:`PRESET_READERS`): ``market`` and
``market-b`` (Market-1501 layout), ``sysu`` (SYSU-MM01), ``regdb`` (RegDB), ``veri`` (VeRi-776) and
``vehicleid`` (VehicleID). Some knobs belong to some presets only (:data:`PRESET_KNOBS`); setting one on
another preset is an error rather than a silent no-op.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields, replace

from .render import Nuisances

#: Bump when the generator's output changes, so cached worlds are regenerated.
GENERATOR_VERSION = 2

PRESETS = ("market", "market-b", "sysu", "regdb", "veri", "vehicleid")
#: Built-in world preset -> the name of the real dataset reader (:func:`reidbook.data.load_dataset`).
PRESET_READERS = {
    "market": "market1501",
    "market-b": "market1501",
    "sysu": "sysu",
    "regdb": "regdb",
    "veri": "veri776",
    "vehicleid": "vehicleid",
}
#: Knobs that only some presets use.
PRESET_KNOBS = {
    "domain_gap": ("market-b",),
    "num_cameras": ("veri", "vehicleid"),
    "test_sizes": ("vehicleid",),
    "modality_gap": ("sysu", "regdb"),
}
WORLD_SIZES = ("small", "default")
MAX_MODALITY_GAP = 2.0


@dataclass(frozen=True)
class WorldSpec:
    """Every knob of a world. Counts are identities unless said otherwise."""

    style: str = "market"
    num_train_ids: int = 200
    num_test_ids: int = 200
    num_val_ids: int = 0  # SYSU-MM01's exp/val_id.txt (training ids kept for validation)
    min_images: int = 3  # images per identity per camera it walks through (vehicles: per camera track)
    max_images: int = 8
    min_path: int = 2  # cameras on a group's path (Market-style presets; vehicles: cameras per vehicle)
    max_path: int = 5
    num_distractors: int = 250  # pid 0000 images in bounding_box_test, besides one per session end
    num_junk: int = 100  # pid -1 images (bad crops) in bounding_box_test
    confusable_fraction: float = 0.15  # share of identities that are near-copies of another
    sessions: int = 4  # recording sessions per camera
    session_seconds: float = 900.0  # length of every session
    images_per_modality: int = 10  # RegDB: images per person per modality
    trials: int = 10  # RegDB: random train/test splits
    # Nuisance strengths (see reidbook.data.synthetic.render.Nuisances): 1 = default, 0 = off.
    view: float = 1.0
    pose: float = 1.0
    scale: float = 1.0
    misalignment: float = 1.0
    occlusion: float = 1.0
    clutter: float = 1.0
    illumination: float = 1.0
    blur: float = 1.0
    # Knobs of some presets only (None elsewhere; see PRESET_KNOBS).
    domain_gap: float | None = None  # market-b: 0 = the market style ... 1 = the full market-b style
    num_cameras: int | None = None  # veri, vehicleid: cameras in the network
    test_sizes: tuple[int, int, int] | None = None  # vehicleid: vehicles in test_list_800/1600/2400
    # sysu, regdb: how far the infrared cameras' images are from what a visible camera would see of the same
    # shot: 0 = the visible image, 1 = the thermal rendering (default), 2 = twice as far (see render.py's
    # infrared_with_gap)
    modality_gap: float | None = None

    @property
    def nuisances(self) -> Nuisances:
        return Nuisances(**{name: getattr(self, name) for name in Nuisances.names()})

    @property
    def session_frames(self) -> int:
        return int(round(self.session_seconds * 25))

    def validate(self) -> None:
        cameras = 6 if self.num_cameras is None else self.num_cameras
        if self.num_train_ids < 2 or self.num_test_ids < 2:
            raise ValueError(
                f"num_train_ids and num_test_ids must be >= 2, got "
                f"{self.num_train_ids} and {self.num_test_ids}"
            )
        if not 2 <= self.min_images <= self.max_images:
            raise ValueError(
                f"need 2 <= min_images <= max_images (one query and one gallery image per "
                f"camera), got {self.min_images}, {self.max_images}"
            )
        if not 2 <= self.min_path <= self.max_path <= cameras:
            raise ValueError(
                f"need 2 <= min_path <= max_path <= {cameras} (cameras), got {self.min_path}, {self.max_path}"
            )
        if self.sessions < 1 or self.session_seconds < 60:
            raise ValueError(
                f"need sessions >= 1 and session_seconds >= 60, got {self.sessions}, {self.session_seconds}"
            )
        negative = [name for name in Nuisances.names() if getattr(self, name) < 0]
        if negative:
            raise ValueError(f"nuisance strengths must be >= 0, got negative {negative}")
        if not 1 <= self.trials <= 10 or self.images_per_modality < 1:
            raise ValueError(
                f"need 1 <= trials <= 10 and images_per_modality >= 1, got {self.trials}, "
                f"{self.images_per_modality}"
            )
        if self.domain_gap is not None and not 0.0 <= self.domain_gap <= 1.0:
            raise ValueError(
                f"domain_gap must be in [0, 1] (0: market style, 1: market-b), got {self.domain_gap}"
            )
        if self.modality_gap is not None and not 0.0 <= self.modality_gap <= MAX_MODALITY_GAP:
            raise ValueError(
                f"modality_gap must be in [0, {MAX_MODALITY_GAP:g}] (0: infrared cameras see the visible "
                f"image, 1: the thermal rendering), got {self.modality_gap}"
            )
        if self.num_cameras is not None and not 2 <= self.num_cameras <= 999:
            raise ValueError(f"num_cameras must be in 2..999 (3-digit camera ids), got {self.num_cameras}")
        sizes = self.test_sizes
        if sizes is not None and not (
            len(sizes) == 3 and 1 <= sizes[0] < sizes[1] < sizes[2] <= self.num_test_ids
        ):
            raise ValueError(
                f"test_sizes must be 3 increasing vehicle counts (small, medium, large) of at most "
                f"num_test_ids={self.num_test_ids}, got {sizes}"
            )


_BASE = WorldSpec()
#: market-b's default: calibrated with ``benchmarks/calibrate_domain_gap.py`` so that the cpu profile's
#: baseline trained on ``market`` keeps about two fifths of its mAP on ``market-b`` (at 1.0: an eighth).
DEFAULT_DOMAIN_GAP = 0.6
_DEFAULTS: dict[str, WorldSpec] = {
    "market": _BASE,
    "market-b": replace(_BASE, style="market-b", domain_gap=DEFAULT_DOMAIN_GAP),
    "sysu": replace(
        _BASE,
        num_train_ids=160,
        num_val_ids=30,
        num_test_ids=96,
        min_images=4,
        max_images=8,
        modality_gap=1.0,
    ),
    "regdb": replace(_BASE, num_train_ids=100, num_test_ids=100, modality_gap=1.0),
    # VeRi-776 has 576 + 200 vehicles seen by 2-18 of 20 cameras; ours keeps the 20 cameras, fewer vehicles.
    "veri": replace(
        _BASE,
        num_train_ids=160,
        num_test_ids=100,
        num_cameras=20,
        min_path=2,
        max_path=6,
        min_images=2,
        max_images=5,
    ),
    # VehicleID's test lists hold 800 / 1600 / 2400 vehicles; ours are 10x smaller (test_sizes scales them).
    "vehicleid": replace(
        _BASE,
        num_train_ids=200,
        num_test_ids=240,
        num_cameras=12,
        min_path=2,
        max_path=3,
        min_images=2,
        max_images=4,
        test_sizes=(80, 160, 240),
    ),
}
_SMALL = {
    "market": dict(
        num_train_ids=40, num_test_ids=40, min_images=2, max_images=5, num_distractors=40, num_junk=15
    ),
    "sysu": dict(num_train_ids=30, num_val_ids=6, num_test_ids=20, min_images=2, max_images=4),
    "regdb": dict(num_train_ids=20, num_test_ids=20, images_per_modality=4),
    "veri": dict(num_train_ids=30, num_test_ids=20, max_path=4, max_images=3),
    "vehicleid": dict(num_train_ids=30, num_test_ids=24, max_images=3, test_sizes=(8, 16, 24)),
}
_SMALL["market-b"] = _SMALL["market"]


def knob_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(WorldSpec) if f.name != "style")


def resolve_spec(preset: str, knobs: dict) -> WorldSpec:
    """The preset's defaults, then ``world_size`` ("small" | "default"), then explicit knobs.

    ``nuisances=Nuisances(...)`` sets all nuisance strengths at once (individual knobs still win).
    """
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; expected one of {PRESETS}")
    knobs = dict(knobs)
    size = knobs.pop("world_size", "default")
    if size not in WORLD_SIZES:
        raise ValueError(f"world_size must be one of {WORLD_SIZES}, got {size!r}")
    spec = _DEFAULTS[preset]
    if size == "small":
        spec = replace(spec, **_SMALL[preset])
    nuisances = knobs.pop("nuisances", None)
    if nuisances is not None:
        if not isinstance(nuisances, Nuisances):
            raise ValueError(f"nuisances must be a Nuisances instance, got {type(nuisances).__name__}")
        spec = replace(spec, **asdict(nuisances))
    unknown = sorted(set(knobs) - set(knob_names()))
    if unknown:
        raise ValueError(
            f"Unknown knobs {unknown} for generate_world; known knobs: "
            f"{', '.join(knob_names())}, world_size, nuisances"
        )
    for name, presets in PRESET_KNOBS.items():
        if name in knobs and preset not in presets:
            raise ValueError(
                f"knob {name}={knobs[name]!r} does not apply to preset {preset!r}; only to {presets}"
            )
    if knobs.get("test_sizes") is not None:
        knobs["test_sizes"] = tuple(int(n) for n in knobs["test_sizes"])
    spec = replace(spec, **knobs)
    spec.validate()
    return spec


def world_folder_name(preset: str, seed: int, spec: WorldSpec) -> str:
    """``<preset>-s<seed>-v<version>`` plus ``-k<hash>`` of the knobs differing from the preset's."""
    default = asdict(_DEFAULTS[preset])
    changed = {k: v for k, v in asdict(spec).items() if default[k] != v}
    name = f"{preset}-s{seed}-v{GENERATOR_VERSION}"
    if changed:
        digest = hashlib.sha1(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:7]
        name += f"-k{digest}"
    return name
