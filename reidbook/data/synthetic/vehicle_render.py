"""Render vehicle crops: shaded prisms seen by a traffic camera, with the person world's named nuisances.

The pipeline for one image (drawn at ``SS`` x the output size, then downsampled to ``OUT`` x ``OUT``)::

    camera's road background  ->  ground shadow  ->  tyres  ->  lower body  ->  near-side wheels
    ->  cabin / cargo box  ->  roof item  ->  occluder  ->  resize  ->  light / colour cast  ->  blur

The camera is orthographic, at an azimuth around the vehicle (0 = from the front, 90 = from its left,
180 = from behind) and an elevation (traffic cameras look down); faces turned away are culled, and the
parts are drawn back to front across the planes that separate them (the cabin sits above the body, a
truck's cab is in front of its box), which is exact for convex parts. The detection window is a square
around the vehicle's projected box, widened by a margin and moved by the misalignment nuisance.

The strengths of :class:`~reidbook.data.synthetic.render.Nuisances` mean here:

- ``view``: chance that the view follows the camera's view distribution (else a frontal view), and how
  far the camera's own elevation departs from a canonical 15 degrees;
- ``pose``: spread of the azimuth and elevation around the view (a vehicle turning, a camera's tilt);
- ``scale``: spread of the window's margin around the vehicle;
- ``misalignment``: window shift, and truncated boxes that cut off part of the vehicle;
- ``occlusion``: chance of a pole, another vehicle or foliage in front;
- ``clutter``: road markings, kerbs, parked cars and texture (0: a flat neutral background);
- ``illumination``: camera gain and colour cast, per-image brightness;
- ``blur``: defocus blur and low-resolution capture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from functools import cache, lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .identities import RGB
from .render import NEUTRAL_BG, Nuisances
from .vehicles import PAINT_WEIGHTS, PAINTS, Prism, Vehicle

OUT = 96  # output crop size (square)
SS = 2  # supersampling
CANVAS = OUT * SS
BG = 3 * CANVAS // 2  # a camera's background, of which a CANVAS-sized part is shown
VEHICLE_VIEWS = ("front", "front_side", "side", "rear_side", "rear")
VIEW_AZIMUTH = {"front": 0.0, "front_side": 45.0, "side": 90.0, "rear_side": 135.0, "rear": 180.0}
CANONICAL_ELEVATION = 15.0
OCCLUDERS = ("pole", "vehicle", "foliage")
GLASS: RGB = (42, 52, 62)
TYRE: RGB = (24, 24, 26)
DARK_TRIM: RGB = (36, 36, 38)
HEADLIGHT: RGB = (226, 228, 216)
TAIL_LIGHT: RGB = (175, 28, 30)
CHROME: RGB = (205, 205, 210)
PLATE_COLORS = {False: ((28, 58, 160), (235, 235, 235)), True: ((225, 185, 30), (25, 25, 25))}
# 3x5 bitmaps of the digits 0-9, rows top to bottom, for the number-plate-like block.
DIGITS = (
    ("111", "101", "101", "101", "111"),
    ("010", "110", "010", "010", "111"),
    ("111", "001", "111", "100", "111"),
    ("111", "001", "111", "001", "111"),
    ("101", "101", "111", "001", "001"),
    ("111", "100", "111", "001", "111"),
    ("111", "100", "111", "101", "111"),
    ("111", "001", "010", "010", "010"),
    ("111", "101", "111", "101", "111"),
    ("111", "101", "111", "001", "111"),
)


@dataclass(frozen=True)
class RoadCamera:
    """Fixed properties of one traffic camera: its road scene, light, colour cast and typical views."""

    index: int  # 1-based, as in file names
    seed: int  # seeds the road background
    gain: float  # brightness gain
    cast: tuple[float, float, float]  # RGB multipliers (colour cast)
    view_probs: tuple[float, ...]  # probabilities of VEHICLE_VIEWS
    elevation: float  # degrees the camera looks down


def make_road_cameras(n: int, seed: int, front_rear: bool = False) -> list[RoadCamera]:
    """``n`` traffic cameras. ``front_rear``: each looks along the road (VehicleID: mostly fronts or mostly
    rears); otherwise views are spread over all five directions (VeRi-776, cameras at crossings)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 222]))
    cams = []
    for i in range(1, n + 1):
        cast = np.exp(rng.normal(0, 0.05, 3))
        cast = cast / cast.mean() ** 0.5
        if front_rear:
            main = float(rng.uniform(0.72, 0.9))
            near, rest = 0.7 * (1 - main), 0.3 * (1 - main) / 3
            probs = np.array([main, near, rest, rest, rest])  # front, front_side, side, rear_side, rear
            if rng.random() < 0.5:  # a camera watching the traffic drive away
                probs = probs[::-1]
            elevation = float(rng.uniform(18, 35))
        else:
            probs = rng.dirichlet(np.ones(len(VEHICLE_VIEWS)))
            elevation = float(rng.uniform(8, 30))
        cams.append(
            RoadCamera(
                index=i,
                seed=int(rng.integers(2**31)),
                gain=float(rng.uniform(0.85, 1.12)),
                cast=tuple(float(c) for c in cast),
                view_probs=tuple(float(p) for p in probs / probs.sum()),
                elevation=elevation,
            )
        )
    return cams


@dataclass(frozen=True)
class VehicleShot:
    """Explicit settings of one vehicle image. Window fields are fractions of the window's side."""

    view: str = "front"  # one of VEHICLE_VIEWS
    azimuth: float = 0.0  # degrees: 0 from the front, +90 from the vehicle's left (+y), 180 from behind
    elevation: float = CANONICAL_ELEVATION  # degrees
    margin: float = 1.12  # window side / the vehicle's larger projected extent
    win_dx: float = 0.0  # window shift, fraction of its side
    win_dy: float = 0.0
    occluder: str | None = None  # None or one of OCCLUDERS
    occluder_pos: float = 0.0  # -1..1: which side of the window, how far out
    occluder_size: float = 0.0  # 0..1
    occluder_color: RGB = (90, 90, 90)
    bg_x: int = 0  # offset of the shown part of the camera background
    bg_y: int = 0
    brightness: float = 1.0  # per-image brightness jitter
    light_strength: float = 0.0  # how much of the camera's gain / cast applies (0: none)
    blur_radius: float = 0.0  # Gaussian blur radius in output pixels
    lowres: float = 1.0  # capture scale factor (< 1: captured small and upsampled)
    clutter: float = 0.0  # background clutter strength


@dataclass
class RenderedVehicle:
    """One rendered crop and where its cues are, in the crop's pixel coordinates (x, y)."""

    image: Image.Image
    parts: dict[str, tuple[float, float]] = field(default_factory=dict)
    shot: VehicleShot | None = None


# ----------------------------------------------------------------------------------------------------
# Sampling a shot from nuisance strengths


def sample_vehicle_view(
    rng: np.random.Generator, nuisances: Nuisances, camera: RoadCamera
) -> tuple[str, int]:
    """A view and the side it is seen from (+1: the vehicle's left, -1: its right)."""
    side = 1 if rng.random() < 0.5 else -1
    if rng.random() >= min(1.0, nuisances.view):
        return "front", side
    return VEHICLE_VIEWS[int(rng.choice(len(VEHICLE_VIEWS), p=camera.view_probs))], side


def sample_margin(rng: np.random.Generator, nuisances: Nuisances) -> float:
    return float(np.clip(1.12 * np.exp(rng.normal(0.0, 0.1 * nuisances.scale)), 0.92, 1.7))


def sample_vehicle_shot(
    rng: np.random.Generator,
    nuisances: Nuisances,
    camera: RoadCamera,
    view: tuple[str, int] | None = None,
    margin: float | None = None,
) -> VehicleShot:
    """Draw one image's settings; ``view`` (view, side) and ``margin`` may be fixed per track."""
    n = nuisances
    view_, side = view if view is not None else sample_vehicle_view(rng, n, camera)
    elevation = CANONICAL_ELEVATION + min(1.0, n.view) * (camera.elevation - CANONICAL_ELEVATION)
    mis = n.misalignment
    dx = float(np.clip(rng.normal(0, 0.05 * mis), -0.25, 0.25))
    dy = float(np.clip(rng.normal(0, 0.04 * mis), -0.2, 0.2))
    if rng.random() < min(1.0, 0.12 * mis):  # truncated detection: the box cuts part of the vehicle off
        push = float(rng.choice([-1, 1]) * rng.uniform(0.18, 0.32))
        if rng.random() < 0.7:
            dx += push
        else:
            dy += push
    occluder = None
    if rng.random() < min(1.0, 0.25 * n.occlusion):
        occluder = OCCLUDERS[int(rng.choice(3, p=(0.3, 0.45, 0.25)))]
    paint = PAINTS[int(rng.choice(len(PAINTS), p=np.asarray(PAINT_WEIGHTS) / sum(PAINT_WEIGHTS)))]
    lowres = float(rng.uniform(0.35, 0.6)) if rng.random() < min(1.0, 0.25 * n.blur) else 1.0
    return VehicleShot(
        view=view_,
        azimuth=float(side * (VIEW_AZIMUTH[view_] + rng.normal(0, 8.0 * n.pose))),
        elevation=float(max(2.0, elevation + rng.normal(0, 3.0 * n.pose))),
        margin=sample_margin(rng, n) if margin is None else margin,
        win_dx=dx,
        win_dy=dy,
        occluder=occluder,
        occluder_pos=float(rng.choice([-1, 1]) * rng.uniform(0.3, 0.9)),
        occluder_size=float(rng.uniform(0, 1)),
        occluder_color=paint,
        bg_x=int(rng.integers(0, BG - CANVAS + 1)),
        bg_y=int(rng.integers(0, BG - CANVAS + 1)),
        brightness=float(np.exp(rng.normal(0, 0.06 * n.illumination))),
        light_strength=n.illumination,
        blur_radius=float(rng.uniform(0, 0.8 * n.blur)),
        lowres=lowres,
        clutter=n.clutter,
    )


# ----------------------------------------------------------------------------------------------------
# Backgrounds


@lru_cache(maxsize=64)
def road_background(camera: RoadCamera, clutter_level: int) -> np.ndarray:
    """The camera's road scene, (BG, BG, 3) uint8, deterministic from its seed; ``clutter_level`` 0..10."""
    rng = np.random.default_rng(np.random.SeedSequence([camera.seed, 333]))
    grey = rng.uniform(88, 128)
    asphalt = tuple(int(grey + t) for t in rng.normal(0, 3, 3))
    img = Image.new("RGB", (BG, BG), asphalt)
    draw = ImageDraw.Draw(img)
    amount = clutter_level / 10.0
    if rng.random() < 0.7 * amount:  # pavement or verge along the top, behind a kerb
        top = int(rng.uniform(0.1, 0.35) * BG)
        verge = (150, 150, 145) if rng.random() < 0.6 else (85, 120, 70)
        draw.rectangle([0, 0, BG, top], fill=verge)
        draw.rectangle([0, top, BG, top + 6], fill=(175, 175, 170))
    angle = rng.uniform(-0.5, 0.5)  # lane markings run across the view, at an angle
    for _ in range(int(round(3 * amount))):
        y = rng.uniform(0.2, 1.0) * BG
        colour = (225, 225, 220) if rng.random() < 0.75 else (220, 180, 40)
        dash, gap = rng.integers(20, 60), rng.integers(0, 50)
        x = -rng.uniform(0, 60)
        while x < BG:
            x1 = x + dash
            draw.line([x, y + angle * x, x1, y + angle * x1], fill=colour, width=5)
            x = x1 + gap
    for _ in range(int(round(4 * amount))):  # stains, manhole covers, parked cars at the edges
        x, y = rng.uniform(0, BG, 2)
        if rng.random() < 0.6:
            r = rng.uniform(6, 22)
            draw.ellipse([x - r, y - 0.6 * r, x + r, y + 0.6 * r], fill=tuple(int(c * 0.8) for c in asphalt))
        else:
            w, h = rng.uniform(50, 110), rng.uniform(30, 60)
            colour = tuple(int(0.5 * c + 0.5 * a) for c, a in zip(rng.integers(20, 235, 3), asphalt))
            draw.rounded_rectangle([x, y, x + w, y + h], radius=8, fill=colour)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, 5 * amount, arr.shape[:2])[..., None]  # asphalt grain
    return np.clip(arr, 0, 255).astype(np.uint8)


def _background(camera: RoadCamera, shot: VehicleShot) -> Image.Image:
    if shot.clutter <= 0:
        return Image.new("RGB", (CANVAS, CANVAS), NEUTRAL_BG)
    bg = road_background(camera, int(round(min(1.0, shot.clutter) * 10)))
    y, x = min(shot.bg_y, BG - CANVAS), min(shot.bg_x, BG - CANVAS)
    return Image.fromarray(bg[y : y + CANVAS, x : x + CANVAS])


# ----------------------------------------------------------------------------------------------------
# Projection: vehicle coordinates (x forward, y to the vehicle's left, z up; metres) to canvas pixels

Vec = tuple[float, float, float]
Pixel = tuple[float, float]
SUN: Vec = (0.3215, 0.2297, 0.9186)  # unit vector towards the light: above, ahead and to the left


def _dot(a: Vec, b: Vec) -> float:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


class _Camera:
    """An orthographic camera at ``azimuth`` around the vehicle and ``elevation`` above the road."""

    def __init__(self, azimuth: float, elevation: float):
        a, e = math.radians(azimuth), math.radians(elevation)
        self.toward: Vec = (math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e))
        self.right: Vec = (-math.sin(a), math.cos(a), 0.0)
        self.up: Vec = (-math.sin(e) * math.cos(a), -math.sin(e) * math.sin(a), math.cos(e))
        self.origin = (0.0, 0.0)
        self.scale = 1.0

    def screen(self, p: Vec) -> Pixel:
        """Screen coordinates in metres, y pointing down."""
        return _dot(p, self.right), -_dot(p, self.up)

    def frame(self, bbox: tuple[float, float, float, float], shot: VehicleShot) -> None:
        """Fit the square detection window around ``bbox`` (screen metres): the shot's margin and shift."""
        x0, y0, x1, y1 = bbox
        side = max(x1 - x0, y1 - y0) * shot.margin
        cx = (x0 + x1) / 2 + shot.win_dx * side
        cy = (y0 + y1) / 2 + shot.win_dy * side
        self.origin = (cx - side / 2, cy - side / 2)
        self.scale = CANVAS / side

    def pixel(self, p: Vec) -> Pixel:
        x, y = self.screen(p)
        return (x - self.origin[0]) * self.scale, (y - self.origin[1]) * self.scale

    def vector(self, v: Vec) -> Pixel:
        x, y = self.screen(v)
        return x * self.scale, y * self.scale

    def faces(self, normal: Vec) -> bool:
        return _dot(normal, self.toward) > 1e-6


def _shade(colour: RGB, normal: Vec) -> RGB:
    light = 0.6 + 0.4 * max(0.0, _dot(normal, SUN))
    return tuple(int(min(255, c * light)) for c in colour)  # type: ignore[return-value]


@cache
def _circle(n: int) -> tuple[tuple[float, float], ...]:
    """(cos, sin) of ``n`` angles around the circle."""
    return tuple((math.cos(2 * math.pi * k / n), math.sin(2 * math.pi * k / n)) for k in range(n))


@dataclass(frozen=True)
class _Plane:
    """A face seen by the camera: plane coordinates (a, b) map to canvas pixels ``o + a da + b db``
    (orthographic projection is affine, so every decoration is placed with this map alone)."""

    o: Pixel
    da: Pixel
    db: Pixel
    normal: Vec

    def at(self, a: float, b: float) -> Pixel:
        return self.o[0] + a * self.da[0] + b * self.db[0], self.o[1] + a * self.da[1] + b * self.db[1]

    def poly(self, coords: list[tuple[float, float]]) -> list[Pixel]:
        return [self.at(a, b) for a, b in coords]

    def rect(self, a0: float, a1: float, b0: float, b1: float) -> list[Pixel]:
        return self.poly([(a0, b0), (a1, b0), (a1, b1), (a0, b1)])

    def ellipse(self, a: float, b: float, ra: float, rb: float, n: int = 12) -> list[Pixel]:
        return self.poly([(a + ra * c, b + rb * s) for c, s in _circle(n)])


def _strip_plane(cam: _Camera, prism: Prism, i: int) -> _Plane:
    """The face between profile points i and i+1: ``a`` across the width (0..1 towards +y), ``b`` along the
    edge (0..1) from its lower end up, or from rear to front when the edge is level."""
    (px, pz), (qx, qz) = prism.profile[i], prism.profile[(i + 1) % len(prism.profile)]
    length = math.hypot(qx - px, qz - pz)
    normal = ((qz - pz) / length, 0.0, -(qx - px) / length)  # outward for a counter-clockwise profile
    if qz < pz - 1e-9 or (abs(qz - pz) <= 1e-9 and qx < px):
        (px, pz), (qx, qz) = (qx, qz), (px, pz)
    origin = (px, prism.y_center - prism.half_width, pz)
    return _Plane(
        cam.pixel(origin),
        cam.vector((0.0, 2 * prism.half_width, 0.0)),
        cam.vector((qx - px, 0.0, qz - pz)),
        normal,
    )


def _side_plane(cam: _Camera, y: float, side: int) -> _Plane:
    """The vertical plane at ``y`` with plane coordinates (x, z) in metres, facing ``side`` (+1: +y)."""
    return _Plane(
        cam.pixel((0.0, y, 0.0)),
        cam.vector((1.0, 0.0, 0.0)),
        cam.vector((0.0, 0.0, 1.0)),
        (0.0, float(side), 0.0),
    )


# ----------------------------------------------------------------------------------------------------
# The vehicle


class _Painter:
    """Draws one vehicle's parts on the canvas and records where its cues land."""

    def __init__(self, draw: ImageDraw.ImageDraw, vehicle: Vehicle, cam: _Camera):
        self.draw, self.vehicle, self.cam = draw, vehicle, cam
        self.model = vehicle.geometry
        self.parts: dict[str, Pixel] = {}
        self.near = 1 if cam.toward[1] >= 0 else -1  # the side of the vehicle facing the camera

    def polygon(self, pixels: list[Pixel], colour: RGB, part: str | None = None) -> None:
        self.draw.polygon(pixels, fill=colour)
        if part is not None:
            self.parts[part] = (
                sum(p[0] for p in pixels) / len(pixels),
                sum(p[1] for p in pixels) / len(pixels),
            )

    def shadow(self) -> None:
        m = self.model
        hl, hw = m.length / 2 + 0.15, m.width / 2 + 0.12
        ground = [(-hl, -hw, 0.0), (hl, -hw, 0.0), (hl, hw, 0.0), (-hl, hw, 0.0)]
        self.polygon([self.cam.pixel(p) for p in ground], (34, 34, 37))

    @staticmethod
    def _disc(plane: _Plane, x: float, r: float, centre_z: float | None = None) -> list[Pixel]:
        z = r if centre_z is None else centre_z
        return plane.poly([(x + r * c, z + r * s) for c, s in _circle(16)])

    def tyres(self) -> None:
        """Every tyre as the convex hull of its two side discs (what shows below the body)."""
        m = self.model
        for s in (-1, 1):
            outer = _side_plane(self.cam, s * (m.width / 2 - 0.02), s)
            inner = _side_plane(self.cam, s * (m.width / 2 - 0.27), s)
            for x in m.axles:
                self.draw.polygon(
                    _hull(self._disc(outer, x, m.wheel_radius) + self._disc(inner, x, m.wheel_radius)),
                    fill=TYRE,
                )

    def near_wheels(self) -> None:
        """Tyre and rim faces of the wheels on the side facing the camera."""
        m = self.model
        plane = _side_plane(self.cam, self.near * (m.width / 2 + 0.01), self.near)
        if not self.cam.faces(plane.normal):
            return
        rim = _shade(self.vehicle.rim_color, plane.normal)
        for x in m.axles:
            self.polygon(self._disc(plane, x, m.wheel_radius), TYRE)
            self.polygon(self._disc(plane, x, 0.6 * m.wheel_radius, m.wheel_radius), rim)

    def prism(self, prism: Prism, colour: RGB) -> None:
        """The prism's faces that face the camera, each with what is painted on it."""
        for i, role in enumerate(prism.roles):
            if role == "bottom":
                continue
            plane = _strip_plane(self.cam, prism, i)
            if self.cam.faces(plane.normal):
                self.polygon(plane.rect(0, 1, 0, 1), _shade(colour, plane.normal))
                self.decorate(role, plane)
        side = _side_plane(self.cam, prism.y_center + self.near * prism.half_width, self.near)
        if self.cam.faces(side.normal):
            self.polygon(side.poly(list(prism.profile)), _shade(colour, side.normal))
            self.decorate_side(prism, side)

    # -------------------------------------------------------------------------------- faces' contents

    def decorate(self, role: str, face: _Plane) -> None:
        v, m, n = self.vehicle, self.model, face.normal
        if role == "front":
            self.polygon(face.rect(0, 1, 0, 0.16), _shade(DARK_TRIM, n))  # bumper
            grille = {"wide": (0.3, 0.7), "narrow": (0.4, 0.6), "split": (0.33, 0.67)}[m.grille]
            self.polygon(face.rect(grille[0], grille[1], 0.45, 0.82), _shade(DARK_TRIM, n))
            if m.grille == "split":
                self.polygon(face.rect(0.48, 0.52, 0.45, 0.82), _shade(v.color, n))
            self.lights(face, HEADLIGHT, 0.55, 0.9)
            self.badge(face, 0.5, 0.64, 0.035)
            self.plate(face, 0.2, "plate_front")
        elif role == "rear":
            self.polygon(face.rect(0, 1, 0, 0.14), _shade(DARK_TRIM, n))
            self.lights(face, TAIL_LIGHT, 0.55, 0.85)
            if v.marking == "stripe":
                self.polygon(face.rect(0, 1, 0.46, 0.53), _shade(v.marking_color, n), "marking_rear")
            self.badge(face, 0.5, 0.72, 0.03)
            self.plate(face, 0.22, "plate_rear")
        elif role in ("windscreen", "cab_front"):
            low = 0.06 if role == "windscreen" else 1 - m.glass_front
            self.polygon(face.rect(0.05, 0.95, low, 0.95), _shade(GLASS, n), "windscreen")
            if v.sticker is not None:
                a = 0.1 if v.sticker.endswith("left") else 0.82
                b = 0.76 if v.sticker.startswith("top") else low + 0.06
                self.polygon(face.rect(a, a + 0.08, b, b + 0.12 * (1 - low)), v.sticker_color, "sticker")
        elif role == "rear_glass":
            self.polygon(face.rect(0.06, 0.94, 0.08, 0.92), _shade(GLASS, n))
            if v.marking == "panel":
                self.polygon(face.rect(0.6, 0.82, 0.14, 0.32), _shade(v.marking_color, n), "marking_rear")
        elif role == "roof" and v.roof_color is not None:
            self.polygon(face.rect(0, 1, 0, 1), _shade(v.roof_color, n))
        elif role == "top" and m.body == "pickup":  # the load bed behind the cab
            (x0, _), (x1, _) = m.lower.profile[4], m.lower.profile[3]
            end = (m.cabin.profile[0][0] - 0.05 - x0) / (x1 - x0)
            self.polygon(face.rect(0.07, 0.93, 0.03, end), _shade(DARK_TRIM, n))
        elif role == "cargo_rear":
            self.polygon(face.rect(0.495, 0.505, 0.02, 0.98), DARK_TRIM)

    def lights(self, face: _Plane, colour: RGB, b0: float, b1: float) -> None:
        shape = self.model.headlights
        if shape == "slim":
            b0 = (b0 + b1) / 2
        for a0, a1 in ((0.05, 0.24), (0.76, 0.95)):
            if shape == "round":
                self.polygon(face.ellipse((a0 + a1) / 2, (b0 + b1) / 2, (a1 - a0) / 2, (b1 - b0) / 2), colour)
            else:
                self.polygon(face.rect(a0, a1, b0, b1), colour)

    def badge(self, face: _Plane, a: float, b: float, r: float) -> None:
        rb = r * 2.5
        if self.model.badge == "circle":
            pixels = face.ellipse(a, b, r, rb, 10)
        elif self.model.badge == "diamond":
            pixels = face.poly([(a - r, b), (a, b - rb), (a + r, b), (a, b + rb)])
        else:
            pixels = face.rect(a - 1.6 * r, a + 1.6 * r, b - 0.5 * rb, b + 0.5 * rb)
        self.polygon(pixels, CHROME)

    def plate(self, face: _Plane, b0: float, part: str) -> None:
        """The number-plate-like block: a coloured plate with the vehicle's five digits as 3x5 bitmaps
        (each row's runs of set bits drawn as one bar)."""
        plate, ink = PLATE_COLORS[self.vehicle.large_plate]
        a0, a1, b1 = 0.37, 0.63, b0 + 0.2
        self.polygon(face.rect(a0, a1, b0, b1), plate, part)
        cell_a, cell_b = (a1 - a0) / (5 * 4 + 1), (b1 - b0) / 7
        for k, digit in enumerate(self.vehicle.plate):
            for row, bits in enumerate(DIGITS[int(digit)]):
                b = b1 - cell_b * (row + 2)
                for start, run in _runs(bits):
                    a = a0 + cell_a * (1 + 4 * k + start)
                    self.polygon(face.rect(a, a + cell_a * run, b, b + cell_b), ink)

    def decorate_side(self, prism: Prism, face: _Plane) -> None:
        v, m, n = self.vehicle, self.model, face.normal
        xs = [x for x, _ in prism.profile]
        zs = [z for _, z in prism.profile]
        x0, x1, z0, z1 = min(xs), max(xs), min(zs), max(zs)
        if prism.side in ("cabin_side", "cab_side"):
            self.side_windows(prism, face)
        elif prism.side == "lower_side":
            cab_rear, cab_front = m.cabin.profile[0][0], m.cabin.profile[1][0]
            for x in (cab_front - 0.05, (cab_rear + cab_front) / 2):  # door gaps
                self.polygon(face.rect(x - 0.012, x + 0.012, z0 + 0.1, z1 - 0.04), _shade(DARK_TRIM, n))
            if v.marking == "stripe":
                za = z0 + 0.45 * (z1 - z0)
                self.polygon(face.rect(x0, x1, za, za + 0.09), _shade(v.marking_color, n), "marking_side")
            elif v.marking == "panel":
                mid, za = (cab_rear + cab_front) / 2, z0 + 0.3 * (z1 - z0)
                self.polygon(
                    face.rect(mid - 0.3, mid + 0.3, za, za + 0.28), _shade(v.marking_color, n), "marking_side"
                )
        elif prism.side == "cargo_side" and v.marking is not None:
            if v.marking == "panel":
                box = face.rect(
                    x0 + 0.25 * (x1 - x0), x0 + 0.75 * (x1 - x0), z0 + 0.3 * (z1 - z0), z0 + 0.7 * (z1 - z0)
                )
            else:
                box = face.rect(x0, x1, z0 + 0.2 * (z1 - z0), z0 + 0.28 * (z1 - z0))
            self.polygon(box, _shade(v.marking_color, n), "marking_side")

    def side_windows(self, prism: Prism, face: _Plane) -> None:
        """Side glass inset in the cabin's side, split by ``windows - 1`` pillars; a cab has a door window."""
        (rbx, bz), (fbx, _), (ftx, tz), (rtx, _) = prism.profile
        z_lo, z_hi = (bz + 0.5 * (tz - bz), tz - 0.12) if prism.side == "cab_side" else (bz + 0.06, tz - 0.07)

        def front(z: float) -> float:
            return fbx + (ftx - fbx) * (z - bz) / (tz - bz) - 0.07

        def rear(z: float) -> float:
            return rbx + (rtx - rbx) * (z - bz) / (tz - bz) + 0.07

        glass = [(rear(z_lo), z_lo), (front(z_lo), z_lo), (front(z_hi), z_hi), (rear(z_hi), z_hi)]
        self.polygon(face.poly(glass), _shade(GLASS, face.normal), "side_window")
        left, right = max(rear(z_lo), rear(z_hi)), min(front(z_lo), front(z_hi))
        paint = _shade(self.vehicle.color, face.normal)
        windows = self.model.windows
        for k in range(1, windows):
            x = left + (right - left) * k / windows
            self.polygon(face.rect(x - 0.05, x + 0.05, z_lo, z_hi), paint)

    def roof_item(self) -> None:
        """Roof bars, a taxi-style sign or a roof box on the cabin's roof (the far bar first)."""
        v, cabin = self.vehicle, self.model.cabin
        if v.roof_item is None:
            return
        (ftx, top), (rtx, _) = cabin.profile[2], cabin.profile[3]
        roles = ("bottom", "paint", "paint", "paint")
        if v.roof_item == "rack":
            bar = ((rtx + 0.1, top), (ftx - 0.1, top), (ftx - 0.1, top + 0.07), (rtx + 0.1, top + 0.07))
            items = [
                Prism(bar, 0.035, roles, "item", s * 0.75 * cabin.half_width) for s in (-self.near, self.near)
            ]
        elif v.roof_item == "sign":
            sign = ((ftx - 0.5, top), (ftx - 0.15, top), (ftx - 0.2, top + 0.2), (ftx - 0.45, top + 0.2))
            items = [Prism(sign, 0.3, roles, "item")]
        else:
            mid = (ftx + rtx) / 2
            box = (
                (mid - 0.7, top + 0.04),
                (mid + 0.7, top + 0.04),
                (mid + 0.45, top + 0.36),
                (mid - 0.6, top + 0.36),
            )
            items = [Prism(box, 0.38, roles, "item")]
        for item in items:
            self.prism(item, v.roof_item_color)
        self.parts["roof_item"] = self.cam.pixel(((ftx + rtx) / 2, 0.0, top + 0.1))

    def draw_vehicle(self) -> None:
        v, m = self.vehicle, self.model
        self.shadow()
        self.tyres()
        self.prism(m.lower, DARK_TRIM if m.body == "truck" else v.color)
        self.near_wheels()
        upper = [(m.cabin, v.color)]
        if m.cargo is not None:
            cargo = (m.cargo, v.cargo_color or v.color)
            # The cab is in front of the box: seen from ahead (toward[0] > 0) the box is drawn first.
            upper = [cargo, *upper] if self.cam.toward[0] > 0 else [*upper, cargo]
        for prism, colour in upper:
            self.prism(prism, colour)
        self.roof_item()


def _runs(bits: str) -> list[tuple[int, int]]:
    """(start, length) of each run of "1" in a bit string."""
    runs, start = [], None
    for i, bit in enumerate(bits + "0"):
        if bit == "1" and start is None:
            start = i
        elif bit != "1" and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def _hull(points: list[Pixel]) -> list[Pixel]:
    """Convex hull of 2-D points (Andrew's monotone chain), counter-clockwise."""
    pts = sorted(set(points))
    if len(pts) <= 2:
        return pts

    def cross(o: Pixel, a: Pixel, b: Pixel) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[Pixel] = []
    upper: list[Pixel] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def _vehicle_bbox(vehicle: Vehicle, cam: _Camera) -> tuple[float, float, float, float]:
    """The vehicle's projected extent in screen metres (body, cabin, cargo box and wheels)."""
    m = vehicle.geometry
    points = [
        (x, p.y_center + s * p.half_width, z)
        for p in (m.lower, m.cabin, m.cargo)
        if p is not None
        for s in (-1, 1)
        for x, z in p.profile
    ]
    points += [
        (x + d * m.wheel_radius, s * m.width / 2, 0.0) for x in m.axles for d in (-1, 1) for s in (-1, 1)
    ]
    xs, ys = zip(*(cam.screen(p) for p in points))
    return min(xs), min(ys), max(xs), max(ys)


# ----------------------------------------------------------------------------------------------------
# Occluders and the whole image


def _draw_occluder(draw: ImageDraw.ImageDraw, shot: VehicleShot) -> None:
    side = 1 if shot.occluder_pos >= 0 else -1
    cx = CANVAS / 2 + shot.occluder_pos * CANVAS * 0.45
    if shot.occluder == "pole":
        half = CANVAS * (0.04 + 0.05 * shot.occluder_size)
        metal = int(np.mean(shot.occluder_color) * 0.4 + 70)
        draw.rectangle([cx - half, 0, cx + half, CANVAS], fill=(metal, metal, metal + 6))
    elif shot.occluder == "vehicle":  # the corner of another vehicle in front
        reach = CANVAS * (0.18 + 0.3 * shot.occluder_size)
        top = CANVAS * (0.55 - 0.25 * shot.occluder_size)
        x0, x1 = (CANVAS - reach, 2 * CANVAS) if side > 0 else (-CANVAS, reach)
        draw.rounded_rectangle([x0, top, x1, 2 * CANVAS], radius=int(0.08 * CANVAS), fill=shot.occluder_color)
        draw.rectangle([x0, top + 0.06 * CANVAS, x1, top + 0.16 * CANVAS], fill=GLASS)
    elif shot.occluder == "foliage":  # branches and leaves hanging into the top corner
        r = CANVAS * (0.12 + 0.12 * shot.occluder_size)
        x = CANVAS if side > 0 else 0
        for k, (dx, dy) in enumerate(((0, 0), (-0.9, 0.3), (-0.4, 0.9), (0.3, 1.2), (-1.5, -0.2))):
            green = (48 + 9 * k, 86 + 11 * k, 44 + 5 * k)
            ex, ey = x + side * dx * r, dy * r
            draw.ellipse([ex - r, ey - r, ex + r, ey + r], fill=green)


def _apply_light(arr: np.ndarray, camera: RoadCamera, shot: VehicleShot) -> np.ndarray:
    gain = np.array(camera.cast, np.float32) * camera.gain
    factor = (1.0 + shot.light_strength * (gain - 1.0)) * shot.brightness
    return arr.astype(np.float32) * factor[None, None, :]


def render_vehicle_shot(vehicle: Vehicle, shot: VehicleShot, camera: RoadCamera) -> RenderedVehicle:
    """Draw ``vehicle`` as seen by ``camera`` with the explicit settings of ``shot``.

    Returns the ``OUT`` x ``OUT`` crop and where its visible cues are (plates, windscreen, sticker, side
    window, markings, roof item) in crop pixels.
    """
    cam = _Camera(shot.azimuth, shot.elevation)
    cam.frame(_vehicle_bbox(vehicle, cam), shot)
    scene = _background(camera, shot)
    draw = ImageDraw.Draw(scene)
    painter = _Painter(draw, vehicle, cam)
    painter.draw_vehicle()
    if shot.occluder is not None:
        _draw_occluder(draw, shot)
    crop = scene.resize((OUT, OUT), Image.Resampling.BILINEAR)
    if shot.lowres < 1.0:
        size = max(12, int(OUT * shot.lowres))
        crop = crop.resize((size, size), Image.Resampling.BILINEAR).resize(
            (OUT, OUT), Image.Resampling.BILINEAR
        )
    if shot.blur_radius > 0.05:
        crop = crop.filter(ImageFilter.GaussianBlur(shot.blur_radius))
    arr = _apply_light(np.asarray(crop), camera, shot)
    image = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    parts = {
        name: (round(x / SS, 1), round(y / SS, 1))
        for name, (x, y) in painter.parts.items()
        if 0 <= x < CANVAS and 0 <= y < CANVAS
    }
    return RenderedVehicle(image=image, parts=parts, shot=shot)


def render_vehicle(
    vehicle: Vehicle,
    camera: RoadCamera | None = None,
    nuisances: Nuisances | None = None,
    seed: int = 0,
    **shot_overrides,
) -> RenderedVehicle:
    """Render one image of ``vehicle``: sample a shot from ``nuisances`` (default: all on) and ``seed``, then
    override any :class:`VehicleShot` field by keyword (``view="rear", azimuth=180.0``, ``occluder="pole"``).

    ``camera`` defaults to camera 1 of a 20-camera VeRi-style network. Example, a vehicle from all views::

        for view, azimuth in VIEW_AZIMUTH.items():
            render_vehicle(vehicle, nuisances=Nuisances.off(), view=view, azimuth=azimuth).image
    """
    camera = camera if camera is not None else make_road_cameras(20, seed=0)[0]
    nuisances = nuisances if nuisances is not None else Nuisances()
    unknown = set(shot_overrides) - {f.name for f in fields(VehicleShot)}
    if unknown:
        raise ValueError(
            f"Unknown VehicleShot fields {sorted(unknown)}; expected names from "
            f"{[f.name for f in fields(VehicleShot)]}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 404]))
    shot = replace(sample_vehicle_shot(rng, nuisances, camera), **shot_overrides)
    return render_vehicle_shot(vehicle, shot, camera)
