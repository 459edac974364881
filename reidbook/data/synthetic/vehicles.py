"""Vehicles of the synthetic world: a catalogue of models and per-vehicle identities, sampled from a seed.

A vehicle is a *model* (body type and its fixed geometry: proportions, headlights, grille, badge — the same
in every world, like a real make and model) painted in one colour, plus the small things that make one car
of a model different from the next: a number plate, windscreen stickers, roof items (rack, taxi sign, roof
box), side or rear markings, two-tone roof, rims. Colours follow real traffic (mostly white, black, silver
and grey), so many vehicles of the same model and colour exist; a fraction are *confusable twins*: exact
copies of the vehicle before them except for their own plate and one small cue (sticker, roof item or
marking) — the fine-grained negatives of vehicle ReID (VeRi-776, VehicleID).

Geometry (used by :mod:`.vehicle_render`): a vehicle is made of convex prisms, each a polygon in the
side-profile plane ``(x, z)`` (x from the rear bumper ``-L/2`` to the front ``+L/2``, z up from the road)
extruded across its width ``y``. The lower body and the cabin are always present; trucks add a cargo box.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import cache

import numpy as np

from .identities import RGB, _jitter, _pick

BODY_TYPES = ("sedan", "hatchback", "suv", "van", "pickup", "truck", "bus")
BODY_WEIGHTS = (0.3, 0.14, 0.18, 0.12, 0.08, 0.1, 0.08)
MODELS_PER_BODY = 3
HEADLIGHTS = ("rect", "slim", "round")
GRILLES = ("wide", "narrow", "split")
BADGES = ("circle", "diamond", "bar")
ROOF_ITEMS = ("rack", "sign", "box")
STICKER_SPOTS = ("top_left", "top_right", "bottom_left", "bottom_right")  # corners of the windscreen
MARKINGS = ("stripe", "panel")  # a band along the sides and the rear, or a decal on the doors / rear glass
#: The attribute fields a confusable twin may change, per cue (besides its own ``plate``).
VEHICLE_CUE_FIELDS: dict[str, frozenset[str]] = {
    "sticker": frozenset({"sticker", "sticker_color"}),
    "roof": frozenset({"roof_item", "roof_item_color"}),
    "marking": frozenset({"marking", "marking_color"}),
}

# Paint colours and their shares in traffic (achromatic colours dominate, as in VeRi's colour labels).
PAINTS: tuple[RGB, ...] = (
    (232, 232, 228),  # white
    (22, 22, 25),  # black
    (172, 175, 180),  # silver
    (98, 100, 104),  # grey
    (160, 25, 30),  # red
    (30, 60, 140),  # blue
    (26, 36, 70),  # dark blue
    (158, 138, 108),  # champagne / brown
    (220, 178, 30),  # yellow
    (40, 98, 60),  # green
    (215, 110, 30),  # orange
    (120, 160, 200),  # light blue
)
PAINT_WEIGHTS = (22, 14, 10, 8, 9, 8, 4, 6, 5, 4, 3, 4)
STICKER_COLORS: tuple[RGB, ...] = ((240, 240, 236), (60, 160, 80), (230, 200, 50), (70, 120, 200))
ROOF_ITEM_COLORS: dict[str, tuple[RGB, ...]] = {
    "rack": ((45, 45, 48), (180, 182, 186)),
    "sign": ((240, 200, 40), (240, 240, 240), (200, 40, 40)),
    "box": ((30, 30, 32), (205, 205, 210)),
}
MARKING_COLORS: tuple[RGB, ...] = (
    (200, 30, 30),
    (30, 80, 190),
    (240, 200, 40),
    (30, 140, 70),
    (240, 240, 240),
)
RIM_COLORS: tuple[RGB, ...] = ((178, 180, 184), (55, 55, 58))
CARGO_COLORS: tuple[RGB, ...] = ((225, 225, 222), (170, 172, 176), (40, 80, 150), (170, 40, 40))


@dataclass(frozen=True)
class Prism:
    """A convex polygon in the side-profile plane (x, z), counter-clockwise, extruded over
    ``|y - y_center| <= half_width``. ``roles[i]`` names the face between profile points i and i+1 (what
    is painted on it: "front", "windscreen", "roof", ...); ``side`` names the two profile faces."""

    profile: tuple[tuple[float, float], ...]
    half_width: float
    roles: tuple[str, ...]
    side: str
    y_center: float = 0.0


@dataclass(frozen=True)
class VehicleModel:
    """The fixed geometry and styling of one model (metres; x = 0 at mid-length, z = 0 on the road)."""

    body: str
    index: int
    length: float
    width: float
    height: float
    lower: Prism  # bumpers, bonnet, boot, doors below the windows
    cabin: Prism  # the glasshouse (a truck's cab)
    cargo: Prism | None  # a truck's box
    windows: int  # side windows per side (split by pillars)
    wheel_radius: float
    axles: tuple[float, ...]  # x of each axle
    headlights: str  # one of HEADLIGHTS
    grille: str  # one of GRILLES
    badge: str  # one of BADGES
    glass_front: float  # share of the cabin's front face that is glass, from its top (trucks: < 1)


# Face roles (bottom, front, top, rear) of the upper boxes: a glasshouse, a truck's cab, a cargo box.
CABIN_ROLES = ("bottom", "windscreen", "roof", "rear_glass")
CAB_ROLES = ("bottom", "cab_front", "roof", "paint")
CARGO_ROLES = ("bottom", "cargo", "cargo", "cargo_rear")


def _box(
    x0: float,
    x1: float,
    z0: float,
    z1: float,
    half_width: float,
    roles: tuple[str, str, str, str],
    side: str,
    slope: float = 0.0,
) -> Prism:
    """A box from x0 (rear) to x1 (front), z0 to z1, its front face leaning back by ``slope`` at the top.
    ``roles``: (bottom, front, top, rear) faces."""
    return Prism(((x0, z0), (x1, z0), (x1 - slope, z1), (x0, z1)), half_width, roles, side)


@cache
def vehicle_model(body: str, index: int) -> VehicleModel:
    """Model ``index`` of a body type: deterministic (the same catalogue in every world and seed)."""
    if body not in BODY_TYPES:
        raise ValueError(f"body must be one of {BODY_TYPES}, got {body!r}")
    if not 0 <= index < MODELS_PER_BODY:
        raise ValueError(f"index must be in 0..{MODELS_PER_BODY - 1}, got {index}")
    rng = np.random.default_rng(np.random.SeedSequence([BODY_TYPES.index(body), index, 909]))

    def vary(value: float, spread: float = 0.05) -> float:
        return float(value * (1 + rng.uniform(-spread, spread)))

    styling = dict(
        headlights=HEADLIGHTS[(index + BODY_TYPES.index(body)) % 3],
        grille=GRILLES[int(rng.integers(3))],
        badge=BADGES[int(rng.integers(3))],
    )
    if body in ("truck", "bus"):
        return _large_model(body, index, vary, styling)
    # Cars: (length, width, height, clearance, belt, hood, windscreen run, boot deck, rear glass run,
    # cabin width share, wheel radius)
    base = {
        "sedan": (4.7, 1.8, 1.45, 0.17, 0.82, 1.2, 0.72, 0.95, 0.55, 0.86, 0.32),
        "hatchback": (4.1, 1.75, 1.48, 0.17, 0.84, 1.0, 0.68, 0.1, 0.25, 0.88, 0.31),
        "suv": (4.6, 1.86, 1.72, 0.24, 0.98, 1.05, 0.6, 0.05, 0.14, 0.9, 0.36),
        "van": (4.9, 1.86, 1.95, 0.2, 0.95, 0.6, 0.62, 0.04, 0.08, 0.95, 0.33),
        "pickup": (5.2, 1.86, 1.8, 0.26, 1.0, 1.25, 0.55, 1.75, 0.08, 0.92, 0.37),
    }[body]
    length, width, height, clear, belt, hood, screen, deck, rear_run, share, radius = base
    length, height, hood, screen = vary(length), vary(height, 0.04), vary(hood, 0.1), vary(screen, 0.15)
    belt = vary(belt, 0.04)
    front, rear = length / 2, -length / 2
    nose = 0.72 * belt + 0.28 * clear  # top of the front face, where the bonnet starts to curve
    lower = Prism(
        (
            (rear, clear),
            (front, clear),
            (front, nose),
            (front - 0.18, belt),
            (rear + 0.08, belt),
            (rear, belt - 0.06),
        ),
        width / 2,
        ("bottom", "front", "paint", "top", "paint", "rear"),
        "lower_side",
    )
    cab_front, cab_rear = front - hood, rear + deck
    cabin = Prism(
        ((cab_rear, belt), (cab_front, belt), (cab_front - screen, height), (cab_rear + rear_run, height)),
        width / 2 * share,
        CABIN_ROLES,
        "cabin_side",
    )
    overhang = 0.85 if body != "van" else 0.7
    return VehicleModel(
        body=body,
        index=index,
        length=length,
        width=width,
        height=height,
        lower=lower,
        cabin=cabin,
        cargo=None,
        windows=3 if body == "van" else 2,
        wheel_radius=radius,
        axles=(front - overhang, rear + overhang * 1.1),
        glass_front=1.0,
        **styling,
    )


def _large_model(body: str, index: int, vary, styling: dict) -> VehicleModel:
    """Trucks (a cab and a cargo box on a chassis) and buses (one long box with a band of windows)."""
    if body == "truck":
        length, width, height = vary(7.0), 2.3, vary(3.2, 0.06)
        front, rear, chassis = length / 2, -length / 2, 1.15
        cab_len = vary(1.8)
        lower = _box(
            rear, front, 0.45, chassis, width / 2, ("bottom", "front", "paint", "rear"), "chassis_side"
        )
        cab_top = chassis + vary(1.6)
        cabin = _box(front - cab_len, front, chassis, cab_top, width / 2, CAB_ROLES, "cab_side", slope=0.12)
        cargo = _box(rear, front - cab_len - 0.15, chassis, height, width / 2, CARGO_ROLES, "cargo_side")
        axles = (front - 0.9, rear + 1.3, rear + 2.5)
        windows, glass_front = 1, 0.5
    else:
        length, width, height = vary(10.5), 2.5, vary(3.1, 0.04)
        front, rear, belt = length / 2, -length / 2, 1.15
        lower = _box(rear, front, 0.3, belt, width / 2, ("bottom", "front", "paint", "rear"), "lower_side")
        cabin = _box(rear, front, belt, height, width / 2, CABIN_ROLES, "cabin_side", slope=0.15)
        cargo = None
        axles = (front - 2.4, rear + 2.6)
        windows, glass_front = 7, 0.9
    return VehicleModel(
        body=body,
        index=index,
        length=length,
        width=width,
        height=height,
        lower=lower,
        cabin=cabin,
        cargo=cargo,
        windows=windows,
        wheel_radius=0.5,
        axles=axles,
        glass_front=glass_front,
        **styling,
    )


@dataclass(frozen=True)
class Vehicle:
    """The visual attributes of one vehicle. Colours are RGB triples in 0..255."""

    pid: int  # the vehicle id (the datasets' identity column)
    body: str  # one of BODY_TYPES
    model: int  # index into the body type's models (see :func:`vehicle_model`)
    color: RGB  # paint
    plate: str  # 5 digits; every vehicle has its own
    large_plate: bool  # yellow plate with dark digits (trucks, buses) instead of blue with white digits
    rim_color: RGB
    roof_color: RGB | None = None  # two-tone roof
    cargo_color: RGB | None = None  # trucks: the box's colour
    sticker: str | None = None  # one of STICKER_SPOTS (windscreen sticker)
    sticker_color: RGB = (240, 240, 236)
    roof_item: str | None = None  # one of ROOF_ITEMS
    roof_item_color: RGB = (45, 45, 48)
    marking: str | None = None  # one of MARKINGS
    marking_color: RGB = (200, 30, 30)
    twin_of: int | None = None  # pid of the vehicle this one copies (confusable pair)
    twin_cue: str | None = None  # the one cue it differs in: a key of VEHICLE_CUE_FIELDS

    @property
    def geometry(self) -> VehicleModel:
        return vehicle_model(self.body, self.model)

    def to_dict(self) -> dict:
        return asdict(self)

    def differing_fields(self, other: Vehicle) -> set[str]:
        """Attribute names whose values differ (identity bookkeeping fields excluded)."""
        skip = {"pid", "twin_of", "twin_cue"}
        a, b = self.to_dict(), other.to_dict()
        return {k for k in a if k not in skip and a[k] != b[k]}


def _plate(rng: np.random.Generator) -> str:
    return "".join(str(int(d)) for d in rng.integers(0, 10, 5))


def _roof_item(rng: np.random.Generator, exclude: str | None = None) -> tuple[str, RGB]:
    kinds = [k for k in ROOF_ITEMS if k != exclude]
    kind = kinds[int(rng.integers(len(kinds)))]
    colours = ROOF_ITEM_COLORS[kind]
    return kind, colours[int(rng.integers(len(colours)))]


def sample_vehicle(pid: int, rng: np.random.Generator) -> Vehicle:
    """Draw one vehicle: a model, a paint and its individual details."""
    body = BODY_TYPES[int(rng.choice(len(BODY_TYPES), p=np.asarray(BODY_WEIGHTS) / sum(BODY_WEIGHTS)))]
    large = body in ("truck", "bus")
    roof_item, roof_item_color = _roof_item(rng)
    has_roof_item = not large and rng.random() < 0.2
    marking_p = 0.6 if body == "bus" else 0.15
    return Vehicle(
        pid=pid,
        body=body,
        model=int(rng.integers(MODELS_PER_BODY)),
        color=_jitter(rng, _pick(rng, PAINTS, PAINT_WEIGHTS), 0.035),
        plate=_plate(rng),
        large_plate=large,
        rim_color=RIM_COLORS[int(rng.integers(len(RIM_COLORS)))],
        roof_color=_pick(rng, ((20, 20, 22), (235, 235, 232))) if not large and rng.random() < 0.1 else None,
        cargo_color=_jitter(rng, _pick(rng, CARGO_COLORS), 0.03) if body == "truck" else None,
        sticker=STICKER_SPOTS[int(rng.integers(4))] if rng.random() < 0.45 else None,
        sticker_color=_pick(rng, STICKER_COLORS),
        roof_item=roof_item if has_roof_item else None,
        roof_item_color=roof_item_color,
        marking=MARKINGS[int(rng.integers(2))] if rng.random() < marking_p else None,
        marking_color=_pick(rng, MARKING_COLORS),
    )


def make_vehicle_twin(original: Vehicle, pid: int, cue: str, rng: np.random.Generator) -> Vehicle:
    """A vehicle of the same model and paint as ``original``, with its own plate, differing in ``cue``."""
    if cue == "sticker":
        spots = [s for s in STICKER_SPOTS if s != original.sticker]
        moved = spots[int(rng.integers(len(spots)))]
        change: dict = {"sticker": None if original.sticker is not None and rng.random() < 0.4 else moved}
    elif cue == "roof":
        if original.roof_item is not None and rng.random() < 0.5:
            change = {"roof_item": None}
        else:
            kind, colour = _roof_item(rng, exclude=original.roof_item)
            change = {"roof_item": kind, "roof_item_color": colour}
    elif cue == "marking":
        if original.marking is not None:
            change = {"marking": None}
        else:
            change = {"marking": MARKINGS[int(rng.integers(2))]}
    else:
        raise ValueError(f"cue must be one of {sorted(VEHICLE_CUE_FIELDS)}, got {cue!r}")
    return replace(original, pid=pid, plate=_plate(rng), twin_of=original.pid, twin_cue=cue, **change)


def _vehicle_cue_for(vehicle: Vehicle, rng: np.random.Generator) -> str:
    """Roof items are not fitted to trucks and buses; every other cue fits every vehicle."""
    cues = ["sticker", "marking"] + ([] if vehicle.body in ("truck", "bus") else ["roof"])
    return cues[int(rng.integers(len(cues)))]


def sample_vehicles(
    n: int, seed: int = 0, confusable_fraction: float = 0.15, first_pid: int = 1
) -> list[Vehicle]:
    """Sample ``n`` vehicles with ids ``first_pid..first_pid+n-1`` from ``seed``.

    About ``confusable_fraction`` of them are twins of the vehicle just before them (adjacent ids).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= confusable_fraction <= 0.5:
        raise ValueError(
            f"confusable_fraction must be in [0, 0.5] (twins come in pairs), got {confusable_fraction}"
        )
    twin_probability = confusable_fraction / (1.0 - confusable_fraction)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 111]))
    vehicles: list[Vehicle] = []
    while len(vehicles) < n:
        pid = first_pid + len(vehicles)
        last = vehicles[-1] if vehicles else None
        if last is not None and last.twin_of is None and rng.random() < twin_probability:
            vehicles.append(make_vehicle_twin(last, pid, _vehicle_cue_for(last, rng), rng))
        else:
            vehicles.append(sample_vehicle(pid, rng))
    return vehicles
