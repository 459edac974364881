"""Time in the synthetic world: small groups of people walk through a camera network.

Cameras sit on a plane; walking between two of them takes a typical transit time (20-150 s). People
enter in groups of 1-4 at random times and follow a path through a few cameras; a group walks
together (same transit times up to a small per-person jitter), so people who are near each other in
time in one camera tend to be near each other in the next — the regularity TLift exploits
(QAConv paper, Sec. 4).

Clock and file names (Market-1501 convention, ``PPPP_cCsS_FFFFFF_BB.jpg``): every camera records
``sessions`` sessions of the same length ``L`` frames at 25 fps, back to back, and session ``s`` of
every camera starts at world time ``(s - 1) * L / 25``. A sighting at world frame ``g = round(25 t)``
(``g >= 1``) is written as session ``s = (g - 1) // L + 1`` and frame ``f = g - (s - 1) L`` (1..L).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FPS = 25


@dataclass(frozen=True)
class CameraNetwork:
    """Camera positions and the mean walking time (seconds) between every pair."""

    transit: np.ndarray  # (C, C) seconds, 0 on the diagonal

    @property
    def num_cameras(self) -> int:
        return self.transit.shape[0]


def make_network(
    num_cameras: int, seed: int, min_transit: float = 20.0, max_transit: float = 150.0
) -> CameraNetwork:
    """Cameras scattered on a plane; transit time grows linearly with distance into [min, max] seconds."""
    if num_cameras < 2:
        raise ValueError(f"num_cameras must be >= 2, got {num_cameras}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 505]))
    pos = rng.uniform(0, 1, (num_cameras, 2))
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    off = dist[~np.eye(num_cameras, dtype=bool)]
    scaled = min_transit + (dist - off.min()) / max(off.max() - off.min(), 1e-9) * (max_transit - min_transit)
    np.fill_diagonal(scaled, 0.0)
    return CameraNetwork(transit=scaled)


@dataclass(frozen=True)
class Visit:
    """One person passing through one camera: seen from ``start`` for ``duration`` seconds."""

    person: int  # index into the caller's list of people
    group: int
    camera: int  # 1-based
    start: float  # world seconds
    duration: float


def simulate_groups(
    num_people: int,
    network: CameraNetwork,
    total_seconds: float,
    rng: np.random.Generator,
    path_lengths: tuple[int, int] = (2, 4),
    speed_spread: float = 0.08,
    person_jitter: float = 2.0,
) -> list[Visit]:
    """Walk ``num_people`` people, in groups of 1-4, through the network within ``[0, total_seconds]``.

    Each group picks a start camera and a path of ``path_lengths`` distinct cameras (near cameras more
    likely next); its transit times are the network's times scaled by a per-group speed factor
    (``speed_spread``) and each person's arrival is jittered by ``person_jitter`` seconds.
    """
    visits: list[Visit] = []
    person, group = 0, 0
    while person < num_people:
        size = min(int(rng.choice([1, 2, 3, 4], p=[0.4, 0.3, 0.2, 0.1])), num_people - person)
        path = _walk(network, rng, int(rng.integers(path_lengths[0], path_lengths[1] + 1)))
        dwell = rng.uniform(2.0, 6.0, len(path))
        speed = float(np.exp(rng.normal(0, speed_spread)))
        legs = [network.transit[a - 1, b - 1] * speed for a, b in zip(path[:-1], path[1:])]
        offsets = np.concatenate([[0.0], np.cumsum(np.asarray(legs) + dwell[:-1])])
        span = offsets[-1] + dwell[-1] + 4 * person_jitter
        if span >= total_seconds - 2:
            raise ValueError(f"total_seconds={total_seconds} is too short for paths of {span:.0f} s")
        start = float(rng.uniform(1.0 + 2 * person_jitter, total_seconds - span))
        for member in range(size):
            lag = float(rng.uniform(0, 1.5)) * member  # walking one behind another
            for cam, off, dw in zip(path, offsets, dwell):
                t = max(0.5, start + off + lag + float(rng.normal(0, person_jitter)))
                visits.append(
                    Visit(person=person + member, group=group, camera=cam, start=t, duration=float(dw))
                )
        person += size
        group += 1
    return visits


def _walk(network: CameraNetwork, rng: np.random.Generator, length: int) -> list[int]:
    """A path of ``length`` distinct 1-based cameras; the next camera is likelier when it is near."""
    length = min(length, network.num_cameras)
    path = [int(rng.integers(network.num_cameras)) + 1]
    while len(path) < length:
        here = path[-1] - 1
        options = [c for c in range(network.num_cameras) if c + 1 not in path]
        weights = np.exp(-network.transit[here, options] / 40.0)
        path.append(options[int(rng.choice(len(options), p=weights / weights.sum()))] + 1)
    return path


def frame_times(visit: Visit, count: int, rng: np.random.Generator) -> list[int]:
    """``count`` distinct world frame numbers (25 fps, >= 1) sampled inside the visit, sorted."""
    first = max(1, int(round(visit.start * FPS)))
    last = max(first + count, int(round((visit.start + visit.duration) * FPS)))
    return sorted(int(g) for g in rng.choice(np.arange(first, last + 1), size=count, replace=False))


def session_frame(world_frame: int, session_frames: int) -> tuple[int, int]:
    """World frame ``g >= 1`` -> (session 1-based, frame within the session 1..L)."""
    if world_frame < 1:
        raise ValueError(f"world frames start at 1, got {world_frame}")
    session = (world_frame - 1) // session_frames + 1
    return session, world_frame - (session - 1) * session_frames
