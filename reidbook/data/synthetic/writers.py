"""Plan a world (who is seen where, when, how) and write it in a real dataset's on-disk format.

Planning draws every random choice in the main process from the world's seed, so an image's bytes
depend only on its job (:class:`ImageJob`, :class:`VehicleJob`); rendering is then spread over processes
in fixed chunks and the files are identical whatever the number of processes.

Layouts written (the readers in :mod:`reidbook.data.readers` are the only way they are read back):

- Market-1501: ``bounding_box_train/ bounding_box_test/ query/`` with ``PPPP_cCsS_FFFFFF_BB.jpg``;
- SYSU-MM01: ``cam1..cam6/PPPP/NNNN.jpg`` and ``exp/{train,val,test}_id.txt`` (cameras 3, 6 infrared);
- RegDB: ``Visible/<pid>/*.bmp``, ``Thermal/<pid>/*.bmp`` and ``idx/{train,test}_{visible,thermal}_<t>.txt``;
- VeRi-776: ``image_train/ image_query/ image_test/`` with ``VVVV_cCCC_TTTTTTTT_N.jpg`` and
  ``name_{train,query,test}.txt``;
- VehicleID: ``image/NNNNNNN.jpg`` and ``train_test_split/{train_list,test_list_800,test_list_1600,
  test_list_2400}.txt``.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image

from ...progress import tqdm
from .identities import STYLES, Identity, Style, blend_styles, get_style, sample_identities, sample_identity
from .presets import WorldSpec
from .render import (
    Camera,
    Shot,
    infrared_with_gap,
    make_cameras,
    render_shot,
    sample_scale,
    sample_shot,
    sample_view,
)
from .timeline import FPS, frame_times, make_network, session_frame, simulate_groups
from .vehicle_render import (
    RoadCamera,
    VehicleShot,
    make_road_cameras,
    render_vehicle_shot,
    sample_margin,
    sample_vehicle_shot,
    sample_vehicle_view,
)
from .vehicles import Vehicle, sample_vehicles

MARKET_CAMERAS = 6
SYSU_VISIBLE, SYSU_INFRARED = (1, 2, 4, 5), (3, 6)
CHUNK = 48  # images per rendering task
MANIFEST = "synthetic_images.csv"
WORLD_INFO = "synthetic_world.json"


@dataclass(frozen=True)
class ImageJob:
    """Everything needed to render and save one file of a person, plus its row in the manifest."""

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "file",
        "split",
        "pid",
        "camera",
        "infrared",
        "time",
        "view",
        "occluder",
        "cut_top",
        "cut_bottom",
    )
    relpath: str
    person: Identity
    shot: Shot
    camera: Camera
    split: str
    pid: int
    world_time: float | None = None
    modality_gap: float = 1.0  # infrared cameras only (see render.infrared_with_gap)

    def render(self) -> Image.Image:
        if self.camera.infrared and self.modality_gap != 1.0:
            return infrared_with_gap(self.person, self.shot, self.camera, self.modality_gap).image
        return render_shot(self.person, self.shot, self.camera).image

    def row(self) -> list:
        s = self.shot
        return [
            self.relpath,
            self.split,
            self.pid,
            self.camera.index,
            int(self.camera.infrared),
            "" if self.world_time is None else f"{self.world_time:.2f}",
            s.view,
            s.occluder or "",
            f"{s.cut_top:.2f}",
            f"{s.cut_bottom:.2f}",
        ]


@dataclass(frozen=True)
class VehicleJob:
    """Everything needed to render and save one file of a vehicle, plus its row in the manifest."""

    COLUMNS: ClassVar[tuple[str, ...]] = (
        "file",
        "split",
        "pid",
        "camera",
        "time",
        "view",
        "azimuth",
        "occluder",
        "body",
        "twin_of",
    )
    relpath: str
    vehicle: Vehicle
    shot: VehicleShot
    camera: RoadCamera
    split: str
    pid: int
    world_time: float | None = None

    def render(self) -> Image.Image:
        return render_vehicle_shot(self.vehicle, self.shot, self.camera).image

    def row(self) -> list:
        return [
            self.relpath,
            self.split,
            self.pid,
            self.camera.index,
            "" if self.world_time is None else f"{self.world_time:.2f}",
            self.shot.view,
            f"{self.shot.azimuth:.1f}",
            self.shot.occluder or "",
            self.vehicle.body,
            "" if self.vehicle.twin_of is None else self.vehicle.twin_of,
        ]


@dataclass(frozen=True)
class Sighting:
    """A person (or a distractor / junk crop) seen by a camera at a world frame (25 fps)."""

    kind: str  # "train" | "test" | "distractor" | "junk"
    person: Identity
    camera: Camera
    world_frame: int
    shot: Shot


@dataclass
class WorldPlan:
    jobs: list[ImageJob] | list[VehicleJob]
    info: dict  # written to synthetic_world.json
    text_files: dict[str, str]  # relative path -> content (id lists, RegDB idx files)


# ----------------------------------------------------------------------------------------------------
# Market-1501 layout


def _units(people: list[Identity] | list[Vehicle]) -> list[list[int]]:
    """Indices of people grouped so that confusable twins stay together (same split)."""
    units: list[list[int]] = []
    for i, person in enumerate(people):
        if person.twin_of is not None and units and people[units[-1][0]].pid == person.twin_of:
            units[-1].append(i)
        else:
            units.append([i])
    return units


def split_people(people: list[Identity] | list[Vehicle], num_test: int, rng: np.random.Generator) -> set[int]:
    """Indices of the test identities: ``num_test`` people drawn in whole twin units."""
    chosen: set[int] = set()
    for u in rng.permutation(len(units := _units(people))):
        if len(chosen) + len(units[u]) <= num_test:
            chosen.update(units[u])
    return chosen


def world_style(spec: WorldSpec) -> Style:
    """The spec's style, moved ``domain_gap`` of the way from the market style when the knob is set."""
    style = get_style(spec.style)
    return style if spec.domain_gap is None else blend_styles(STYLES["market"], style, spec.domain_gap)


def plan_market(spec: WorldSpec, seed: int) -> WorldPlan:
    """Groups walking through 6 cameras; train / query / gallery / distractors / junk as in Market-1501."""
    style = world_style(spec)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 606]))
    cams = make_cameras(MARKET_CAMERAS, style, seed)
    network = make_network(MARKET_CAMERAS, seed)
    nuis = spec.nuisances
    people = sample_identities(spec.num_train_ids + spec.num_test_ids, seed, style, spec.confusable_fraction)
    test = split_people(people, spec.num_test_ids, rng)
    walk_order = rng.permutation(len(people))
    L, total = spec.session_frames, spec.sessions * spec.session_seconds
    visits = simulate_groups(len(people), network, total, rng, (spec.min_path, spec.max_path))

    sightings: list[Sighting] = []
    for visit in visits:
        person = people[walk_order[visit.person]]
        cam = cams[visit.camera - 1]
        view, scale = sample_view(rng, nuis, cam), sample_scale(rng, nuis)
        for g in frame_times(visit, int(rng.integers(spec.min_images, spec.max_images + 1)), rng):
            if g >= spec.sessions * L:
                raise ValueError(
                    f"session_seconds={spec.session_seconds} x sessions={spec.sessions} is too "
                    "short for the people's walks; use more or longer sessions"
                )
            kind = "test" if walk_order[visit.person] in test else "train"
            sightings.append(Sighting(kind, person, cam, g, sample_shot(rng, nuis, cam, style, view, scale)))

    def extra(kind: str, cam: Camera, g: int) -> None:
        person = sample_identity(0, rng, style)
        shot = sample_shot(rng, nuis, cam, style)
        if kind == "junk":
            shot = _junk_shot(shot, rng)
        sightings.append(Sighting(kind, person, cam, g, shot))

    for cam in cams:
        for s in range(1, spec.sessions + 1):
            extra("distractor", cam, s * L)  # frame L of every session: pins the reader's session length
    for kind, count in (("distractor", spec.num_distractors), ("junk", spec.num_junk)):
        for _ in range(count):
            extra(kind, cams[int(rng.integers(MARKET_CAMERAS))], int(rng.integers(1, spec.sessions * L)))

    jobs = _market_jobs(sightings, L, rng)
    info = {
        "cameras": [asdict(c) for c in cams],
        "transit_seconds": network.transit.round(2).tolist(),
        "fps": FPS,
        "session_frames": L,
        "sessions": spec.sessions,
        "identities": [
            dict(p.to_dict(), split="test" if i in test else "train") for i, p in enumerate(people)
        ],
    }
    return WorldPlan(jobs, info, {})


def _junk_shot(shot: Shot, rng: np.random.Generator) -> Shot:
    """A bad detection: mostly background, or a fragment of a person at the box's edge."""
    if rng.random() < 0.5:
        return replace(
            shot, win_dx=float(rng.choice([-1, 1]) * rng.uniform(0.55, 0.8)), cut_top=0, cut_bottom=0
        )
    return replace(
        shot, cut_top=float(rng.uniform(0.55, 0.7)), cut_bottom=0.0, win_dy=float(rng.uniform(0, 0.2))
    )


def _market_jobs(sightings: list[Sighting], L: int, rng: np.random.Generator) -> list[ImageJob]:
    """File names ``PPPP_cCsS_FFFFFF_BB.jpg``; one query per test identity per camera, rest gallery."""
    by_pid_cam: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, s in enumerate(sightings):
        if s.kind == "test":
            by_pid_cam[(s.person.pid, s.camera.index)].append(i)
    queries = {members[int(rng.integers(len(members)))] for members in by_pid_cam.values()}
    boxes_in_frame: dict[tuple[int, int], int] = defaultdict(int)
    jobs = []
    for i, s in enumerate(sightings):
        cam = s.camera.index
        session, frame = session_frame(s.world_frame, L)
        bb = boxes_in_frame[(cam, s.world_frame)]
        boxes_in_frame[(cam, s.world_frame)] += 1
        pid = {"distractor": 0, "junk": -1}.get(s.kind, s.person.pid)
        split = (
            "query" if i in queries else ("bounding_box_train" if s.kind == "train" else "bounding_box_test")
        )
        name = f"{pid:04d}" if pid >= 0 else "-1"
        relpath = f"{split}/{name}_c{cam}s{session}_{frame:06d}_{bb:02d}.jpg"
        jobs.append(ImageJob(relpath, s.person, s.shot, s.camera, split, pid, s.world_frame / FPS))
    return jobs


# ----------------------------------------------------------------------------------------------------
# SYSU-MM01 layout


def _visit_shots(rng: np.random.Generator, spec: WorldSpec, cam: Camera, count: int) -> list[Shot]:
    """``count`` shots of one pass through a camera: one walking direction and distance, varying gait."""
    nuis = spec.nuisances
    view, scale = sample_view(rng, nuis, cam), sample_scale(rng, nuis)
    return [sample_shot(rng, nuis, cam, cam.style, view, scale) for _ in range(count)]


def _gap(spec: WorldSpec) -> float:
    return 1.0 if spec.modality_gap is None else spec.modality_gap


def plan_sysu(spec: WorldSpec, seed: int) -> WorldPlan:
    """Each person meets 1-3 visible cameras (1, 2, 4, 5) and 1-2 infrared ones (3, 6)."""
    style = get_style(spec.style)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 707]))
    cams = make_cameras(6, style, seed, infrared=SYSU_INFRARED)
    n = spec.num_train_ids + spec.num_val_ids + spec.num_test_ids
    people = sample_identities(n, seed, style, spec.confusable_fraction)
    order = rng.permutation(n)
    splits = {
        "train": order[: spec.num_train_ids],
        "val": order[spec.num_train_ids : spec.num_train_ids + spec.num_val_ids],
        "test": order[spec.num_train_ids + spec.num_val_ids :],
    }
    split_of = {int(i): name for name, idx in splits.items() for i in idx}
    jobs = []
    for i, person in enumerate(people):
        visible = rng.choice(SYSU_VISIBLE, size=int(rng.integers(1, 4)), replace=False)
        infrared = rng.choice(SYSU_INFRARED, size=int(rng.integers(1, 3)), replace=False)
        for c in sorted(int(c) for c in (*visible, *infrared)):
            cam = cams[c - 1]
            count = int(rng.integers(spec.min_images, spec.max_images + 1))
            for k, shot in enumerate(_visit_shots(rng, spec, cam, count), start=1):
                jobs.append(
                    ImageJob(
                        f"cam{c}/{person.pid:04d}/{k:04d}.jpg",
                        person,
                        shot,
                        cam,
                        split_of[i],
                        person.pid,
                        modality_gap=_gap(spec),
                    )
                )
    text_files = {
        f"exp/{name}_id.txt": ",".join(str(people[int(i)].pid) for i in sorted(idx)) + "\n"
        for name, idx in splits.items()
    }
    info = {
        "cameras": [asdict(c) for c in cams],
        "identities": [dict(p.to_dict(), split=split_of[i]) for i, p in enumerate(people)],
    }
    return WorldPlan(jobs, info, text_files)


# ----------------------------------------------------------------------------------------------------
# RegDB layout


def plan_regdb(spec: WorldSpec, seed: int) -> WorldPlan:
    """A co-located visible / thermal camera pair: each visible image has a thermal twin of the same
    instant (same shot). Ten random half/half identity splits ("trials") are written to ``idx/``.

    idx line format (as read by the AGW/DDAG authors' loaders): ``<path relative to the RegDB folder>
    <label>``, one space, the label being the identity's 0-based index in that trial's split, e.g.
    ``Visible/285/male_back_v_05528_285.bmp 0``; file names are ``<sex>_<front|back>_<v|t>_<5-digit
    index>_<pid>.bmp``.
    """
    style = get_style(spec.style)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 808]))
    visible_cam = make_cameras(1, style, seed)[0]
    thermal_cam = replace(visible_cam, index=2, infrared=True)
    people = sample_identities(spec.num_train_ids + spec.num_test_ids, seed, style, spec.confusable_fraction)
    jobs: list[ImageJob] = []
    files_of: dict[int, tuple[list[str], list[str]]] = {}
    index = 1  # RegDB's 5-digit image number, shared by a visible image and its thermal twin
    for person in people:
        files_of[person.pid] = visible_files, thermal_files = [], []
        for shot in _visit_shots(rng, spec, visible_cam, spec.images_per_modality):
            view = shot.view if shot.view != "side" else ("front" if rng.random() < 0.5 else "back")
            shot = replace(shot, view=view)
            for cam, folder, letter, files in (
                (visible_cam, "Visible", "v", visible_files),
                (thermal_cam, "Thermal", "t", thermal_files),
            ):
                relpath = f"{folder}/{person.pid}/{person.sex}_{view}_{letter}_{index:05d}_{person.pid}.bmp"
                jobs.append(
                    ImageJob(relpath, person, shot, cam, folder.lower(), person.pid, modality_gap=_gap(spec))
                )
                files.append(relpath)
            index += 1
    text_files = {}
    pids = [p.pid for p in people]
    for trial in range(1, spec.trials + 1):
        perm = np.random.default_rng(np.random.SeedSequence([seed, 809, trial])).permutation(pids)
        for split, chosen in (("train", perm[: spec.num_train_ids]), ("test", perm[spec.num_train_ids :])):
            for m, modality in enumerate(("visible", "thermal")):
                lines = [
                    f"{path} {label}" for label, pid in enumerate(chosen) for path in files_of[int(pid)][m]
                ]
                text_files[f"idx/{split}_{modality}_{trial}.txt"] = "\n".join(lines) + "\n"
    info = {
        "cameras": [asdict(visible_cam), asdict(thermal_cam)],
        "identities": [p.to_dict() for p in people],
    }
    return WorldPlan(jobs, info, text_files)


# ----------------------------------------------------------------------------------------------------
# VeRi-776 layout


def _vehicle_track(
    rng: np.random.Generator, spec: WorldSpec, cam: RoadCamera, count: int
) -> list[VehicleShot]:
    """``count`` shots of one vehicle passing one camera: one direction of travel and distance."""
    nuis = spec.nuisances
    view, margin = sample_vehicle_view(rng, nuis, cam), sample_margin(rng, nuis)
    return [sample_vehicle_shot(rng, nuis, cam, view, margin) for _ in range(count)]


def _vehicle_info(cams: list[RoadCamera], vehicles: list[Vehicle], test: set[int]) -> dict:
    return {
        "cameras": [asdict(c) for c in cams],
        "vehicles": [
            dict(v.to_dict(), split="test" if i in test else "train") for i, v in enumerate(vehicles)
        ],
    }


def plan_veri(spec: WorldSpec, seed: int) -> WorldPlan:
    """Vehicles drive, in small platoons, through a network of ``num_cameras`` cameras (2-18 per vehicle in
    VeRi-776; here ``min_path``..``max_path``), each pass a track of ``min_images``..``max_images`` images.

    As in VeRi-776: ``image_query`` holds one image per (test vehicle, camera), drawn from that track, and
    ``image_test`` holds every test image, the queries included (the evaluation drops same-camera
    gallery images, the query's own copy with them). Names ``VVVV_cCCC_TTTTTTTT_0.jpg`` carry the world
    frame (25 fps) as the time stamp.
    """
    if spec.num_cameras is None:
        raise ValueError("plan_veri needs spec.num_cameras (the veri preset sets it)")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 910]))
    cams = make_road_cameras(spec.num_cameras, seed)
    network = make_network(spec.num_cameras, seed)
    vehicles = sample_vehicles(spec.num_train_ids + spec.num_test_ids, seed, spec.confusable_fraction)
    test = split_people(vehicles, spec.num_test_ids, rng)
    drive_order = rng.permutation(len(vehicles))
    visits = simulate_groups(
        len(vehicles), network, spec.sessions * spec.session_seconds, rng, (spec.min_path, spec.max_path)
    )
    jobs: list[VehicleJob] = []
    lists: dict[str, list[str]] = {"train": [], "query": [], "test": []}
    for visit in visits:
        index = int(drive_order[visit.person])
        vehicle, cam = vehicles[index], cams[visit.camera - 1]
        count = int(rng.integers(spec.min_images, spec.max_images + 1))
        frames = frame_times(visit, count, rng)
        shots = _vehicle_track(rng, spec, cam, count)
        split = "test" if index in test else "train"
        query = int(rng.integers(count)) if split == "test" else -1
        for k, (g, shot) in enumerate(zip(frames, shots)):
            name = f"{vehicle.pid:04d}_c{cam.index:03d}_{g:08d}_0.jpg"
            folders = ["test", "query"] if k == query else [split]
            for folder in folders:
                job = VehicleJob(f"image_{folder}/{name}", vehicle, shot, cam, folder, vehicle.pid, g / FPS)
                jobs.append(job)
                lists[folder].append(name)
    text_files = {
        f"name_{folder}.txt": "".join(f"{n}\n" for n in sorted(names)) for folder, names in lists.items()
    }
    return WorldPlan(jobs, _vehicle_info(cams, vehicles, test), text_files)


# ----------------------------------------------------------------------------------------------------
# VehicleID layout


def plan_vehicleid(spec: WorldSpec, seed: int) -> WorldPlan:
    """Each vehicle passes ``min_path``..``max_path`` of ``num_cameras`` cameras that look along the road,
    so its images are mostly fronts or rears (as in VehicleID), ``min_images``..``max_images`` per camera.

    Images are numbered ``0000001.jpg``... in a random order; ``train_list.txt`` lists the training
    vehicles' images and ``test_list_800/1600/2400.txt`` those of the first ``test_sizes`` vehicles of one
    random order of the test vehicles (so the lists are nested). Lines are ``<image name> <vehicle id>``.
    """
    if spec.num_cameras is None or spec.test_sizes is None:
        raise ValueError(
            "plan_vehicleid needs spec.num_cameras and spec.test_sizes (the vehicleid preset sets them)"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 920]))
    cams = make_road_cameras(spec.num_cameras, seed, front_rear=True)
    vehicles = sample_vehicles(spec.num_train_ids + spec.num_test_ids, seed, spec.confusable_fraction)
    test = split_people(vehicles, spec.num_test_ids, rng)
    sightings: list[tuple[int, RoadCamera, VehicleShot]] = []
    for index in range(len(vehicles)):
        passes = int(rng.integers(spec.min_path, spec.max_path + 1))
        for c in sorted(rng.choice(len(cams), size=min(passes, len(cams)), replace=False)):
            count = int(rng.integers(spec.min_images, spec.max_images + 1))
            sightings += [(index, cams[c], shot) for shot in _vehicle_track(rng, spec, cams[c], count)]
    numbers = rng.permutation(len(sightings)) + 1
    images_of: dict[int, list[str]] = defaultdict(list)
    jobs = []
    for (index, cam, shot), number in zip(sightings, numbers):
        vehicle, name = vehicles[index], f"{int(number):07d}"
        split = "test" if index in test else "train"
        jobs.append(VehicleJob(f"image/{name}.jpg", vehicle, shot, cam, split, vehicle.pid))
        images_of[index].append(name)

    def list_file(indices) -> str:
        lines = sorted(f"{name} {vehicles[i].pid}" for i in indices for name in images_of[i])
        return "".join(f"{line}\n" for line in lines)

    order = [int(i) for i in rng.permutation(sorted(test))]
    text_files = {
        "train_test_split/train_list.txt": list_file(i for i in range(len(vehicles)) if i not in test)
    }
    for size, real in zip(spec.test_sizes, (800, 1600, 2400)):
        text_files[f"train_test_split/test_list_{real}.txt"] = list_file(order[:size])
    info = dict(_vehicle_info(cams, vehicles, test), test_sizes=dict(zip((800, 1600, 2400), spec.test_sizes)))
    return WorldPlan(jobs, info, text_files)


PLANNERS = {
    "market": plan_market,
    "market-b": plan_market,
    "sysu": plan_sysu,
    "regdb": plan_regdb,
    "veri": plan_veri,
    "vehicleid": plan_vehicleid,
}


# ----------------------------------------------------------------------------------------------------
# Rendering and writing


def _render_chunk(args: tuple[list[ImageJob] | list[VehicleJob], str]) -> int:
    jobs, out_dir = args
    for job in jobs:
        image = job.render()
        path = Path(out_dir) / job.relpath
        if path.suffix == ".bmp":
            image.save(path, format="BMP")
        else:
            image.save(path, format="JPEG", quality=90)
    return len(jobs)


def render_jobs(
    jobs: list[ImageJob] | list[VehicleJob], out_dir: Path, workers: int, progress: bool, desc: str
) -> None:
    """Render and save every job under ``out_dir`` with ``workers`` processes (1: in this process)."""
    for folder in sorted({str(Path(job.relpath).parent) for job in jobs}):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    chunks = [(jobs[i : i + CHUNK], str(out_dir)) for i in range(0, len(jobs), CHUNK)]
    with tqdm(total=len(jobs), desc=desc, unit="img", disable=not progress) as bar:
        if workers <= 1 or len(chunks) < 4:
            for chunk in chunks:
                bar.update(_render_chunk(chunk))
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for done in pool.imap_unordered(_render_chunk, chunks):
                    bar.update(done)


def write_manifest(plan: WorldPlan, out_dir: Path, header: dict) -> None:
    """Write the plan's text files, ``synthetic_world.json`` (knobs, cameras, identities) and
    ``synthetic_images.csv`` (one row per image file)."""
    for relpath, text in plan.text_files.items():
        (out_dir / relpath).parent.mkdir(parents=True, exist_ok=True)
        (out_dir / relpath).write_text(text, encoding="utf-8")
    (out_dir / WORLD_INFO).write_text(json.dumps({**header, **plan.info}, indent=1), encoding="utf-8")
    with open(out_dir / MANIFEST, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(type(plan.jobs[0]).COLUMNS)
        for job in plan.jobs:
            writer.writerow(job.row())
