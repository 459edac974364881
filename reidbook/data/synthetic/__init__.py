"""The built-in synthetic world: procedural people and vehicles, cameras and time, written as real datasets.

Nobody needs Market-1501 or a GPU to run the book: :func:`generate_world` renders a world (numpy + PIL,
deterministic from a seed, a few seconds on 2 cores) in the on-disk format of a real dataset, which
:func:`reidbook.data.load_dataset` then reads like the real thing::

    from reidbook.data import load_dataset
    from reidbook.data.synthetic import generate_world

    path = generate_world("data", preset="market", seed=0)          # data/synthetic/market-s0-v2
    dataset = load_dataset("market1501", path)

Presets (each read by the real reader named in :data:`PRESET_READERS`): ``market`` (default) and
``market-b`` (a second visual domain) in the Market-1501 layout, ``sysu`` (SYSU-MM01: visible + infrared
cameras), ``regdb`` (RegDB: paired visible/thermal images), and the vehicle worlds ``veri`` (VeRi-776: 20
cameras at crossings, all views) and ``vehicleid`` (VehicleID: mostly fronts and rears; test lists of
80/160/240 vehicles under VehicleID's names ``test_list_800/1600/2400``, scaled by ``test_sizes``).
Knobs (see :class:`WorldSpec`): world size (``world_size="small"`` or explicit counts), timeline, every
nuisance strength (``occlusion=2.0``, ``nuisances=Nuisances.off()``, ...), and for ``market-b`` the
``domain_gap`` (0: the market style ... 1: the full second style; default :data:`DEFAULT_DOMAIN_GAP`;
:func:`domain_gap_proxy` measures it)::

    load_dataset("veri776", generate_world("data", preset="veri"))
    load_dataset("vehicleid", generate_world("data", preset="vehicleid"), test_size=1600)
    generate_world("data", preset="market-b", domain_gap=0.5)

Time coupling with the Market reader: every camera records ``sessions`` sessions of the same length
``L = 25 * session_seconds`` frames, session ``s`` of every camera starting at world time
``(s - 1) L / 25``, frame numbers 1..L, and ``bounding_box_test`` holds a distractor (pid 0000) at frame
exactly ``L`` of every (camera, session). A reader that, as TLift's authors did for Market, takes a
session's length to be the largest frame number seen in it and lays a camera's sessions back to back
(``time = (lengths of earlier sessions + frame) / 25``) therefore recovers the world clock exactly.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .domain_gap import DomainGap, domain_gap_proxy
from .identities import (
    CUE_FIELDS,
    STYLES,
    Identity,
    Style,
    blend_styles,
    get_style,
    make_confusable,
    sample_identities,
    sample_identity,
)
from .presets import (
    DEFAULT_DOMAIN_GAP,
    GENERATOR_VERSION,
    PRESET_KNOBS,
    PRESET_READERS,
    PRESETS,
    WorldSpec,
    knob_names,
    resolve_spec,
    world_folder_name,
)
from .render import Camera, Nuisances, Rendered, Shot, make_cameras, render_person, render_shot, sample_shot
from .timeline import FPS, make_network, session_frame
from .vehicle_render import (
    VEHICLE_VIEWS,
    VIEW_AZIMUTH,
    RenderedVehicle,
    RoadCamera,
    VehicleShot,
    make_road_cameras,
    render_vehicle,
    render_vehicle_shot,
    sample_vehicle_shot,
)
from .vehicles import (
    BODY_TYPES,
    VEHICLE_CUE_FIELDS,
    Vehicle,
    VehicleModel,
    make_vehicle_twin,
    sample_vehicle,
    sample_vehicles,
    vehicle_model,
)
from .writers import MANIFEST, PLANNERS, WORLD_INFO, render_jobs, write_manifest

__all__ = [
    "BODY_TYPES",
    "CUE_FIELDS",
    "FPS",
    "DEFAULT_DOMAIN_GAP",
    "GENERATOR_VERSION",
    "MANIFEST",
    "PRESETS",
    "PRESET_KNOBS",
    "PRESET_READERS",
    "STYLES",
    "VEHICLE_CUE_FIELDS",
    "VEHICLE_VIEWS",
    "VIEW_AZIMUTH",
    "WORLD_INFO",
    "Camera",
    "DomainGap",
    "Identity",
    "Nuisances",
    "Rendered",
    "RenderedVehicle",
    "RoadCamera",
    "Shot",
    "Style",
    "Vehicle",
    "VehicleModel",
    "VehicleShot",
    "WorldSpec",
    "blend_styles",
    "domain_gap_proxy",
    "generate_world",
    "get_style",
    "knob_names",
    "make_cameras",
    "make_confusable",
    "make_network",
    "make_road_cameras",
    "make_vehicle_twin",
    "render_person",
    "render_shot",
    "render_vehicle",
    "render_vehicle_shot",
    "sample_identities",
    "sample_identity",
    "sample_shot",
    "sample_vehicle",
    "sample_vehicle_shot",
    "sample_vehicles",
    "session_frame",
    "vehicle_model",
    "world_path",
]


def world_path(root: str | Path, preset: str = "market", seed: int = 0, **knobs) -> Path:
    """Where :func:`generate_world` caches this world (whether or not it exists yet)."""
    spec = resolve_spec(preset, knobs)
    return Path(root) / "synthetic" / world_folder_name(preset, seed, spec)


def generate_world(
    root: str | Path,
    preset: str = "market",
    seed: int = 0,
    *,
    workers: int | None = None,
    progress: bool = True,
    **knobs,
) -> Path:
    """Render the world ``preset`` / ``seed`` / ``knobs`` under ``root/synthetic/`` and return its folder.

    A world already on disk is returned at once. A new one is written into a temporary folder that is
    renamed when complete, so an interrupted run never leaves a half world behind. ``workers``
    processes render it (default: up to 2); the bytes do not depend on their number.
    """
    spec = resolve_spec(preset, knobs)
    final = Path(root) / "synthetic" / world_folder_name(preset, seed, spec)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    workers = min(2, os.cpu_count() or 1) if workers is None else workers
    started = time.perf_counter()
    plan = PLANNERS[preset](spec, seed)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    tmp.chmod(0o755)
    try:
        render_jobs(plan.jobs, tmp, workers, progress, desc=f"rendering {final.name}")
        header = {
            "preset": preset,
            "seed": seed,
            "generator_version": GENERATOR_VERSION,
            "knobs": asdict(spec),
            "images": len(plan.jobs),
            "seconds": round(time.perf_counter() - started, 2),
        }
        write_manifest(plan, tmp, header)
        try:
            tmp.rename(final)
        except OSError:  # another process finished the same world first
            if not final.is_dir():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
