"""Render pedestrian crops with PIL drawing: a person, a camera's scene, and named nuisances.

The pipeline for one image (all in a 2x "scene" canvas, then cropped to a detection window)::

    camera background  ->  person (view, gait phase, scale)  ->  occluder  ->  crop window
    (misalignment, truncation)  ->  resize to 128x64  ->  camera illumination / colour cast  ->  blur

Every nuisance is a named strength in :class:`Nuisances` (1 = the world's default, 0 = switched off,
> 1 = harder). :func:`sample_shot` turns strengths into one image's explicit settings (a :class:`Shot`),
and :func:`render_shot` draws a shot, returning the image and the pixel locations of body parts.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from .identities import RGB, Identity, Style, get_style, sample_identity

OUT_H, OUT_W = 128, 64  # Market-1501 crop size
SS = 2  # supersampling: the scene is drawn at SS x the output resolution
SCENE_H, SCENE_W = 192 * SS, 112 * SS  # scene canvas; the nominal window is OUT_H*SS x OUT_W*SS in its centre
BG_H, BG_W = 240 * SS, 200 * SS  # a camera's background, of which a random SCENE-sized part is shown
VIEWS = ("front", "back", "side")
NEUTRAL_BG: RGB = (128, 128, 128)


@dataclass(frozen=True)
class Nuisances:
    """Strengths of the per-image nuisances: 1.0 is the default world, 0.0 switches one off."""

    view: float = 1.0  # chance that the view follows the camera's distribution (else frontal)
    pose: float = 1.0  # amplitude of leg / arm swing (gait phase)
    scale: float = 1.0  # spread of the person's size inside the crop
    misalignment: float = 1.0  # bounding-box shift / zoom jitter and truncated crops
    occlusion: float = 1.0  # chance of a pole, car or another person in front
    clutter: float = 1.0  # background scene objects (0: a flat neutral background)
    illumination: float = 1.0  # camera gain and colour cast, per-image brightness jitter
    blur: float = 1.0  # defocus blur and low-resolution capture

    @classmethod
    def off(cls) -> Nuisances:
        return cls(**{f.name: 0.0 for f in fields(cls)})

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    def only(self, name: str, strength: float = 1.0) -> Nuisances:
        """All nuisances off except ``name`` (for "one nuisance at a time" figures)."""
        if name not in self.names():
            raise ValueError(f"Unknown nuisance {name!r}; expected one of {self.names()}")
        return replace(Nuisances.off(), **{name: strength})

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"Nuisance strength {f.name} must be >= 0, got {getattr(self, f.name)}")


@dataclass(frozen=True)
class Camera:
    """Fixed properties of one camera: its scene, light, colour cast and typical viewpoints."""

    index: int  # 1-based, as in file names
    style: str
    seed: int  # seeds the background scene
    gain: float  # brightness gain
    cast: tuple[float, float, float]  # RGB multipliers (colour cast)
    view_probs: tuple[float, float, float]  # P(front), P(back), P(side)
    infrared: bool = False


def make_cameras(n: int, style: Style | str, seed: int, infrared: tuple[int, ...] = ()) -> list[Camera]:
    """``n`` cameras with their own scene, light and viewpoints; 1-based indices in ``infrared`` are IR."""
    style = get_style(style) if isinstance(style, str) else style
    rng = np.random.default_rng(np.random.SeedSequence([seed, 202]))
    cams = []
    for i in range(1, n + 1):
        cast = np.exp(rng.normal(0, style.cast_spread, 3))
        cast = cast / cast.mean() ** 0.5  # a tint, not only a brightness change
        views = rng.dirichlet((1.2, 1.2, 0.8))
        cams.append(
            Camera(
                index=i,
                style=style.name,
                seed=int(rng.integers(2**31)),
                gain=float(rng.uniform(*style.gain_range)),
                cast=tuple(float(c) for c in cast),
                view_probs=tuple(float(v) for v in views),
                infrared=i in infrared,
            )
        )
    return cams


@dataclass(frozen=True)
class Shot:
    """Explicit settings of one image. Window fields are fractions of the nominal crop window."""

    view: str = "front"  # "front" | "back" | "side"
    facing: int = 1  # side view: +1 walks to the right of the image, -1 to the left
    phase: float = 0.0  # gait phase in radians
    swing: float = 0.0  # leg swing amplitude in radians
    scale: float = 1.0  # person height relative to the nominal crop's
    win_dx: float = 0.0  # crop window shift, fraction of its width
    win_dy: float = 0.0  # crop window shift, fraction of its height
    win_zoom: float = 1.0  # > 1: a looser box (person smaller), < 1: a tighter one
    cut_top: float = 0.0  # fraction of the window cut off at the top (truncated detection)
    cut_bottom: float = 0.0  # fraction cut off at the bottom
    occluder: str | None = None  # None | "pole" | "car" | "person"
    occluder_pos: float = 0.0  # horizontal position of the occluder, -1..1 across the window
    occluder_size: float = 0.0  # its relative size, 0..1
    occluder_color: RGB = (90, 90, 90)
    occluder_person: Identity | None = None
    bg_x: int = 0  # offset of the shown part of the camera background
    bg_y: int = 0
    brightness: float = 1.0  # per-image brightness jitter
    light_strength: float = 0.0  # how much of the camera's gain / cast applies (0: none)
    blur_radius: float = 0.0  # Gaussian blur radius in output pixels
    lowres: float = 1.0  # capture scale factor (< 1: captured small and upsampled)
    clutter: float = 0.0  # background clutter strength
    seed: int = 0


@dataclass
class Rendered:
    """One rendered crop and where its body parts are, in the crop's pixel coordinates (x, y)."""

    image: Image.Image
    parts: dict[str, tuple[float, float]] = field(default_factory=dict)
    shot: Shot | None = None


# ----------------------------------------------------------------------------------------------------
# Sampling a shot from nuisance strengths


def sample_view(rng: np.random.Generator, nuisances: Nuisances, camera: Camera) -> tuple[str, int]:
    """A walking direction: from the camera's view distribution with probability ``nuisances.view``."""
    if rng.random() >= min(1.0, nuisances.view):
        return "front", 1
    return VIEWS[int(rng.choice(3, p=camera.view_probs))], (1 if rng.random() < 0.5 else -1)


def sample_scale(rng: np.random.Generator, nuisances: Nuisances) -> float:
    return float(np.clip(np.exp(rng.normal(-0.05 * nuisances.scale, 0.12 * nuisances.scale)), 0.55, 1.25))


def sample_shot(
    rng: np.random.Generator,
    nuisances: Nuisances,
    camera: Camera,
    style: Style | str = "market",
    view: tuple[str, int] | None = None,
    scale: float | None = None,
) -> Shot:
    """Draw one image's settings. ``view`` and ``scale`` may be fixed per visit by the caller."""
    style = get_style(style) if isinstance(style, str) else style
    n = nuisances
    view_, facing = view if view is not None else sample_view(rng, n, camera)
    mis = n.misalignment
    cut_top = cut_bottom = 0.0
    if rng.random() < min(1.0, 0.15 * mis):  # truncated detection: the box cuts the body
        if rng.random() < 0.7:
            cut_bottom = float(rng.uniform(0.2, 0.45))
        else:
            cut_top = float(rng.uniform(0.12, 0.3))
    occluder, occ_person = None, None
    if rng.random() < min(1.0, 0.3 * n.occlusion):
        occluder = ("pole", "car", "person")[int(rng.choice(3, p=(0.3, 0.3, 0.4)))]
        if occluder == "person":
            occ_person = sample_identity(0, rng, style)
    lowres = 1.0
    if rng.random() < min(1.0, 0.25 * n.blur):
        lowres = float(rng.uniform(0.35, 0.6))
    return Shot(
        view=view_,
        facing=facing,
        phase=float(rng.uniform(0, 2 * math.pi)),
        swing=0.38 * n.pose,
        scale=sample_scale(rng, n) if scale is None else scale,
        win_dx=float(np.clip(rng.normal(0, 0.05 * mis), -0.3, 0.3)),
        win_dy=float(np.clip(rng.normal(0, 0.04 * mis), -0.2, 0.2)),
        win_zoom=float(np.clip(np.exp(rng.normal(0, 0.08 * mis)), 0.75, 1.35)),
        cut_top=cut_top,
        cut_bottom=cut_bottom,
        occluder=occluder,
        occluder_pos=float(rng.choice([-1, 1]) * rng.uniform(0.25, 0.8)),
        occluder_size=float(rng.uniform(0, 1)),
        occluder_color=tuple(int(c) for c in rng.integers(30, 230, 3)),  # type: ignore[arg-type]
        occluder_person=occ_person,
        bg_x=int(rng.integers(0, BG_W - SCENE_W + 1)),
        bg_y=int(rng.integers(0, BG_H - SCENE_H + 1)),
        brightness=float(np.exp(rng.normal(0, 0.05 * n.illumination))),
        light_strength=n.illumination,
        blur_radius=float(rng.uniform(0, 0.8 * n.blur)),
        lowres=lowres,
        clutter=n.clutter,
        seed=int(rng.integers(2**31)),
    )


# ----------------------------------------------------------------------------------------------------
# Colours: visible and thermal


def _luma(rgb: RGB) -> float:
    return (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]) / 255.0


def thermal(rgb: RGB, part: str = "cloth") -> RGB:
    """Grey level of a surface in a thermal image: skin is warmest; dark fabric, warmed by the body and
    absorbing more, looks brighter than light fabric (a partial contrast inversion w.r.t. visible)."""
    if part == "skin":
        v = 0.95
    elif part == "hair":
        v = 0.55 + 0.1 * (1 - _luma(rgb))
    elif part == "cold":
        v = 0.12 + 0.25 * _luma(rgb)
    else:
        h, s, _ = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
        v = 0.5 + 0.32 * (1 - _luma(rgb)) + 0.08 * s * math.cos(2 * math.pi * h)
    g = int(round(255 * min(1.0, v)))
    return (g, g, g)


class _Paint:
    """Maps a named surface's colour to what the sensor sees (identity in visible light)."""

    def __init__(self, infrared: bool):
        self.infrared = infrared

    def __call__(self, rgb: RGB, part: str = "cloth") -> RGB:
        return thermal(rgb, part) if self.infrared else tuple(int(c) for c in rgb)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# Backgrounds


@lru_cache(maxsize=64)
def camera_background(camera: Camera, clutter_level: int) -> np.ndarray:
    """The camera's scene, (BG_H, BG_W, 3) uint8, deterministic from its seed; ``clutter_level`` 0..10."""
    style = get_style(camera.style)
    rng = np.random.default_rng(np.random.SeedSequence([camera.seed, 303]))
    wall = style.walls[int(rng.integers(len(style.walls)))]
    ground = style.grounds[int(rng.integers(len(style.grounds)))]
    img = Image.new("RGB", (BG_W, BG_H), wall)
    draw = ImageDraw.Draw(img)
    horizon = int(BG_H * rng.uniform(0.45, 0.65))
    draw.rectangle([0, horizon, BG_W, BG_H], fill=ground)
    amount = clutter_level / 10.0
    # Which objects are outdoor ones (trees) is drawn from its own stream, so the pure styles' scenes
    # (indoor 0 or 1) do not depend on it.
    mixer = np.random.default_rng(np.random.SeedSequence([camera.seed, 304]))
    for _ in range(int(round(5 * amount))):
        _draw_scene_object(draw, rng, bool(mixer.random() >= style.indoor), horizon, wall)
    if style.indoor > 0:  # floor tiles, fainter in a partly indoor style
        step = int(rng.integers(24, 48))
        line = tuple(int(c * (1 - 0.15 * style.indoor)) for c in ground)
        for y in range(horizon, BG_H, step):
            draw.line([0, y, BG_W, y], fill=line, width=2)
    arr = np.asarray(img, dtype=np.float32)
    arr += rng.normal(0, 4 * amount, arr.shape[:2])[..., None]  # surface texture
    if camera.infrared:
        grey = arr @ np.array([0.299, 0.587, 0.114], np.float32)
        arr = np.repeat((25 + 0.35 * grey)[..., None], 3, axis=2)  # cold scene
    return np.clip(arr, 0, 255).astype(np.uint8)


def _muted(rng: np.random.Generator, base: RGB, vividness: float = 0.12) -> RGB:
    """A random colour pulled towards a scene colour: real street scenes are mostly greyish."""
    vivid = rng.integers(20, 235, 3)
    return tuple(
        int(vividness * v + (1 - vividness) * b * rng.uniform(0.6, 1.2)) for v, b in zip(vivid, base)
    )


def _draw_scene_object(
    draw: ImageDraw.ImageDraw, rng: np.random.Generator, outdoor: bool, horizon: int, base: RGB
) -> None:
    colour = _muted(rng, base)
    x = int(rng.integers(-20, BG_W))
    kind = rng.integers(4)
    if kind == 0:  # window / shop front / poster on the wall
        w, h = int(rng.integers(30, 110)), int(rng.integers(30, 120))
        y = int(rng.integers(0, max(1, horizon - h)))
        draw.rectangle([x, y, x + w, y + h], fill=colour, outline=(40, 40, 40), width=3)
    elif kind == 1 and outdoor:  # tree
        r = int(rng.integers(30, 70))
        draw.rectangle([x - 5, horizon - 2 * r, x + 5, horizon], fill=(80, 60, 40))
        green = _muted(rng, (70, 110, 60), 0.15)
        draw.ellipse([x - r, horizon - 3 * r, x + r, horizon - r], fill=green)
    elif kind == 2:  # pole or door frame
        w = int(rng.integers(6, 30))
        draw.rectangle([x, 0, x + w, horizon + int(rng.integers(0, 40))], fill=colour)
    else:  # kerb / bench / planter on the ground
        w, h = int(rng.integers(40, 160)), int(rng.integers(10, 40))
        y = int(rng.integers(horizon, BG_H - h))
        draw.rectangle([x, y, x + w, y + h], fill=colour)


def _background(camera: Camera, shot: Shot) -> Image.Image:
    if shot.clutter <= 0:
        colour = thermal(NEUTRAL_BG, "cold") if camera.infrared else NEUTRAL_BG
        return Image.new("RGB", (SCENE_W, SCENE_H), colour)
    bg = camera_background(camera, int(round(min(1.0, shot.clutter) * 10)))
    y, x = min(shot.bg_y, BG_H - SCENE_H), min(shot.bg_x, BG_W - SCENE_W)
    return Image.fromarray(bg[y : y + SCENE_H, x : x + SCENE_W])


# ----------------------------------------------------------------------------------------------------
# The person


@dataclass(frozen=True)
class _Body:
    """Body geometry in scene pixels: ``u`` is the person's height, (cx, top) their head-top centre."""

    cx: float
    top: float
    u: float
    build: float

    def y(self, f: float) -> float:
        return self.top + f * self.u

    def w(self, f: float) -> float:
        return f * self.u * self.build


def draw_person(
    draw: ImageDraw.ImageDraw, person: Identity, body: _Body, shot: Shot, paint: _Paint
) -> dict[str, tuple[float, float]]:
    """Draw ``person`` seen from ``shot.view``; returns body-part centres in scene pixels."""
    view, d = shot.view, shot.facing
    side = view == "side"
    cx, y = body.cx, body.y
    shoulder = body.w(0.09 if side else 0.16)
    waist = body.w(0.085 if side else 0.14)
    leg_w = max(2, int(body.w(0.075)))
    arm_w = max(2, int(body.w(0.055)))
    parts: dict[str, tuple[float, float]] = {}
    skin, lower = paint(person.skin, "skin"), paint(person.lower_color)
    sleeve = paint(person.upper_color)

    # Legs: side view swings them forward/back, frontal views sway the feet.
    hip_y, ankle_y = y(0.52), y(0.93)  # knees bend half-way between them
    swing = shot.swing * math.sin(shot.phase)
    leg_tops = [cx] if side else [cx - body.w(0.065), cx + body.w(0.065)]
    feet = []
    for k, lx in enumerate(leg_tops * (2 if side else 1)):
        sign = 1 if k == 0 else -1
        if side:
            ankle = (
                lx + d * sign * math.sin(swing) * (ankle_y - hip_y),
                ankle_y - 0.02 * body.u * abs(swing),
            )
        else:
            lift = 0.035 * body.u * max(0.0, sign * swing) / 0.4
            ankle = (lx + 0.15 * sign * body.w(0.05) * abs(swing), ankle_y - lift)
        knee = ((lx + ankle[0]) / 2, (hip_y + ankle[1]) / 2)
        skirt_or_shorts_skin = person.lower_type in ("shorts", "skirt")
        draw.line(
            [lx, hip_y, knee[0], knee[1]], fill=skin if person.lower_type == "skirt" else lower, width=leg_w
        )
        draw.line(
            [knee[0], knee[1], ankle[0], ankle[1]], fill=skin if skirt_or_shorts_skin else lower, width=leg_w
        )
        feet.append(ankle)
    shoe = paint(person.shoe_color)
    for fx, fy in feet:
        front = body.w(0.07) * d if side else 0.0
        draw.ellipse(
            [
                fx - body.w(0.04) + min(0, front),
                fy - body.u * 0.012,
                fx + body.w(0.04) + max(0, front),
                fy + body.u * 0.035,
            ],
            fill=shoe,
        )
    parts["legs"] = (cx, (hip_y + ankle_y) / 2)
    parts["shoes"] = (float(np.mean([f[0] for f in feet])), ankle_y + 0.012 * body.u)
    if person.lower_type == "skirt":
        draw.polygon(
            [
                (cx - waist, hip_y - 0.02 * body.u),
                (cx + waist, hip_y - 0.02 * body.u),
                (cx + waist * 1.5, y(0.72)),
                (cx - waist * 1.5, y(0.72)),
            ],
            fill=lower,
        )

    # Arms: the far arm is drawn before the torso, the near one after it.
    arm_len = 0.34 * body.u
    arms = [(-1, -0.8 * swing), (1, 0.8 * swing)]

    def draw_arm(sx: int, angle: float) -> None:
        ax = cx + sx * shoulder * (0.2 if side else 0.95)
        ay = y(0.17)
        spread = 0.0 if side else sx * (0.08 + 0.1 * abs(swing))
        theta = angle * d if side else spread
        elbow = (ax + math.sin(theta) * arm_len / 2, ay + math.cos(theta) * arm_len / 2)
        hand = (ax + math.sin(theta) * arm_len, ay + math.cos(theta) * arm_len)
        draw.line([ax, ay, elbow[0], elbow[1]], fill=sleeve, width=arm_w)
        draw.line(
            [elbow[0], elbow[1], hand[0], hand[1]], fill=skin if person.short_sleeves else sleeve, width=arm_w
        )
        r = arm_w * 0.6
        draw.ellipse([hand[0] - r, hand[1] - r, hand[0] + r, hand[1] + r], fill=skin)

    if side:
        draw_arm(*arms[0])

    # Backpack behind the torso in side view.
    if person.backpack is not None and side:
        bx = cx - d * shoulder
        draw.rectangle(
            sorted_box(bx - d * body.w(0.09), y(0.18), bx + d * body.w(0.02), y(0.44)),
            fill=paint(person.backpack),
        )
        parts["bag"] = (bx - d * body.w(0.045), y(0.31))

    _draw_torso(draw, person, body, shoulder, waist, view, paint)
    parts["torso"] = (cx, y(0.34))
    if side:
        draw_arm(*arms[1])
    else:
        draw_arm(*arms[0])
        draw_arm(*arms[1])

    # Handbag: on the person's own side; hidden behind the body in the far side of a side view.
    if person.handbag is not None:
        own = 1 if person.handbag_side == "right" else -1
        sx = -own if view == "front" else own
        visible = not side or (own == -d)
        if visible:
            hx = cx + (sx * (shoulder + body.w(0.05)) if not side else d * body.w(0.02))
            hy = y(0.5)
            draw.line([cx + sx * shoulder * 0.6, y(0.16), hx, hy - body.w(0.05)], fill=(40, 30, 25), width=2)
            draw.rectangle(
                [hx - body.w(0.06), hy - body.w(0.05), hx + body.w(0.06), hy + body.w(0.08)],
                fill=paint(person.handbag),
            )
            parts["bag"] = (hx, hy)

    # Backpack over the back in back view; straps in front view.
    if person.backpack is not None and view == "back":
        draw.rectangle(
            [cx - shoulder * 0.75, y(0.18), cx + shoulder * 0.75, y(0.45)],
            fill=paint(person.backpack),
            outline=(30, 30, 30),
        )
        parts["bag"] = (cx, y(0.31))
    elif person.backpack is not None and view == "front":
        for sx in (-1, 1):
            draw.line(
                [cx + sx * shoulder * 0.6, y(0.15), cx + sx * shoulder * 0.55, y(0.4)],
                fill=paint(person.backpack),
                width=max(2, int(body.w(0.02))),
            )

    _draw_head(draw, person, body, view, d, paint)
    parts["head"] = (cx, y(0.075))
    return parts


def sorted_box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
    return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]


def _draw_torso(
    draw: ImageDraw.ImageDraw,
    person: Identity,
    body: _Body,
    shoulder: float,
    waist: float,
    view: str,
    paint: _Paint,
) -> None:
    cx, y0, y1 = body.cx, body.y(0.145), body.y(0.54)
    main, second = paint(person.upper_color), paint(person.upper_second)

    def half_width(yy: float) -> float:
        return shoulder + (waist - shoulder) * (yy - y0) / (y1 - y0)

    draw.polygon([(cx - shoulder, y0), (cx + shoulder, y0), (cx + waist, y1), (cx - waist, y1)], fill=main)
    if person.upper_pattern in ("stripes", "checks"):
        rows = 6
        cols = 1 if person.upper_pattern == "stripes" else 4
        for i in range(rows):
            ya, yb = y0 + (y1 - y0) * i / rows, y0 + (y1 - y0) * (i + 1) / rows
            ha, hb = half_width(ya), half_width(yb)
            for j in range(cols):
                if (i + j) % 2 == 0:
                    continue
                fa, fb = -1 + 2 * j / cols, -1 + 2 * (j + 1) / cols
                draw.polygon(
                    [(cx + fa * ha, ya), (cx + fb * ha, ya), (cx + fb * hb, yb), (cx + fa * hb, yb)],
                    fill=second,
                )
    elif person.upper_pattern == "logo" and view == "front":
        r, ly = body.w(0.045), body.y(0.26)
        box = [cx - r, ly - r, cx + r, ly + r]
        if person.logo_shape == "circle":
            draw.ellipse(box, fill=second)
        elif person.logo_shape == "square":
            draw.rectangle(box, fill=second)
        else:
            draw.polygon([(cx, ly - r), (cx + r, ly + r), (cx - r, ly + r)], fill=second)


def _draw_head(
    draw: ImageDraw.ImageDraw, person: Identity, body: _Body, view: str, d: int, paint: _Paint
) -> None:
    cx, cy = body.cx, body.y(0.075)
    rx, ry = body.u * 0.052, body.u * 0.066
    hair, skin = paint(person.hair_color, "hair"), paint(person.skin, "skin")
    if person.hair_long:
        top, bottom = cy - ry * 0.5, body.y(0.2 if view != "back" else 0.25)
        draw.rectangle([cx - rx * 1.1, top, cx + rx * 1.1, bottom], fill=hair)
    draw.ellipse([cx - rx * 1.05, cy - ry * 1.08, cx + rx * 1.05, cy + ry * 0.9], fill=hair)
    if view == "front":
        draw.ellipse([cx - rx * 0.85, cy - ry * 0.55, cx + rx * 0.85, cy + ry], fill=skin)
        eye = max(1.0, rx * 0.12)
        for sx in (-1, 1):
            ex, ey = cx + sx * rx * 0.35, cy - ry * 0.05
            draw.ellipse([ex - eye, ey - eye, ex + eye, ey + eye], fill=paint((30, 25, 20), "cold"))
    elif view == "side":
        fx = cx + d * rx * 0.25
        draw.ellipse([fx - rx * 0.75, cy - ry * 0.5, fx + rx * 0.75, cy + ry], fill=skin)
    if person.hat is not None:
        colour = paint(person.hat)
        draw.rectangle([cx - rx * 1.05, cy - ry * 1.25, cx + rx * 1.05, cy - ry * 0.45], fill=colour)
        brim = (cx - rx * 1.05, cx + rx * 1.6) if d > 0 or view != "side" else (cx - rx * 1.6, cx + rx * 1.05)
        draw.rectangle([brim[0], cy - ry * 0.55, brim[1], cy - ry * 0.4], fill=colour)


# ----------------------------------------------------------------------------------------------------
# Occluders


def _draw_occluder(
    draw: ImageDraw.ImageDraw,
    shot: Shot,
    window: tuple[float, float, float, float],
    body_u: float,
    paint: _Paint,
) -> None:
    x0, y0, x1, y1 = window
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2 + shot.occluder_pos * w * 0.45
    if shot.occluder == "pole":
        half = w * (0.06 + 0.07 * shot.occluder_size)
        metal = int(np.mean(shot.occluder_color))  # street furniture is grey metal or concrete
        draw.rectangle([cx - half, 0, cx + half, SCENE_H], fill=paint((metal, metal, metal + 8), "cold"))
    elif shot.occluder == "car":
        top = y1 - h * (0.22 + 0.25 * shot.occluder_size)
        draw.rounded_rectangle(
            [x0 - w, top, x1 + w, y1 + h], radius=int(0.05 * h), fill=paint(shot.occluder_color)
        )
        draw.rectangle([x0 - w, top + 0.03 * h, x1 + w, top + 0.08 * h], fill=paint((35, 45, 55), "cold"))
    elif shot.occluder == "person" and shot.occluder_person is not None:
        other = _Body(
            cx=(x0 + x1) / 2 + np.sign(shot.occluder_pos) * w * (0.55 + 0.25 * shot.occluder_size),
            top=y0 + 0.02 * h,
            u=body_u * 1.05,
            build=shot.occluder_person.build,
        )
        draw_person(draw, shot.occluder_person, other, replace(shot, view="front"), paint)


# ----------------------------------------------------------------------------------------------------
# The whole image


def crop_window(shot: Shot) -> tuple[float, float, float, float]:
    """The detection box in scene pixels (x0, y0, x1, y1): nominal box moved, zoomed and truncated."""
    w, h = OUT_W * SS * shot.win_zoom, OUT_H * SS * shot.win_zoom
    cx = SCENE_W / 2 + shot.win_dx * w
    cy = SCENE_H / 2 + shot.win_dy * h
    y0, y1 = cy - h / 2, cy + h / 2
    return cx - w / 2, y0 + shot.cut_top * h, cx + w / 2, y1 - shot.cut_bottom * h


def _fit_window(
    window: tuple[float, float, float, float],
) -> tuple[tuple[float, float, float, float], tuple[float, float]]:
    """Move a window that sticks out of the scene canvas back inside it; returns the moved window and
    the (dx, dy) by which the person must move too, so the crop shows the same thing."""
    x0, y0, x1, y1 = window
    dx = max(0.0, -x0) - max(0.0, x1 - SCENE_W)
    dy = max(0.0, -y0) - max(0.0, y1 - SCENE_H)
    return (x0 + dx, y0 + dy, x1 + dx, y1 + dy), (dx, dy)


def _apply_light(arr: np.ndarray, camera: Camera, shot: Shot) -> np.ndarray:
    """Camera gain and colour cast (scaled by ``light_strength``) and per-image brightness."""
    gain = np.array(camera.cast if not camera.infrared else (1.0, 1.0, 1.0), np.float32) * camera.gain
    factor = (1.0 + shot.light_strength * (gain - 1.0)) * shot.brightness
    return arr.astype(np.float32) * factor[None, None, :]


def render_shot(person: Identity, shot: Shot, camera: Camera, resolution: float | None = None) -> Rendered:
    """Draw ``person`` as seen by ``camera`` with the explicit settings of ``shot``.

    Returns the (OUT_H x OUT_W) crop and the centres of the visible body parts (head, torso, bag, legs,
    shoes) in crop pixels. ``resolution`` (default: the camera style's) < 1 renders a lower-resolution
    domain that is upsampled back to the crop size.
    """
    paint = _Paint(camera.infrared)
    scene = _background(camera, shot)
    draw = ImageDraw.Draw(scene)
    window, (sx, sy) = _fit_window(crop_window(shot))
    u = 0.86 * OUT_H * SS * person.height * shot.scale
    body = _Body(cx=SCENE_W / 2 + sx, top=SCENE_H / 2 - u / 2 + sy, u=u, build=person.build)
    parts = draw_person(draw, person, body, shot, paint)
    if shot.occluder is not None:
        _draw_occluder(draw, shot, window, u, paint)
    crop = scene.resize((OUT_W, OUT_H), Image.Resampling.BILINEAR, box=window)
    res = get_style(camera.style).resolution if resolution is None else resolution
    small = min(res, shot.lowres)
    if small < 1.0:
        size = (max(8, int(OUT_W * small)), max(16, int(OUT_H * small)))
        crop = crop.resize(size, Image.Resampling.BILINEAR).resize((OUT_W, OUT_H), Image.Resampling.BILINEAR)
    if shot.blur_radius > 0.05 or camera.infrared:
        crop = crop.filter(ImageFilter.GaussianBlur(shot.blur_radius + (0.6 if camera.infrared else 0.0)))
    arr = _apply_light(np.asarray(crop), camera, shot)
    if camera.infrared:
        arr = np.repeat(arr.mean(axis=2, keepdims=True), 3, axis=2)
    image = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
    return Rendered(image=image, parts=_to_crop_coords(parts, window), shot=shot)


def infrared_with_gap(person: Identity, shot: Shot, camera: Camera, modality_gap: float = 1.0) -> Rendered:
    """What an infrared ``camera`` records of ``shot`` when the modality gap has strength ``modality_gap``.

    With V the image a visible camera at the same place would record (same shot, scene, light and
    colour cast) and T the thermal rendering (grey, :func:`thermal` colours), the image is
    ``(1 - g) V + g T`` for ``g <= 1`` (0: the visible image, 1: T itself, byte for byte) and, beyond 1,
    ``T + (g - 1) (T - luma(V))``: a grey image pushed further from the visible one's brightness (a
    stronger contrast inversion). The body parts are those of T.
    """
    if modality_gap < 0:
        raise ValueError(f"modality_gap must be >= 0, got {modality_gap}")
    infrared = render_shot(person, shot, camera)
    if modality_gap == 1.0 or not camera.infrared:
        return infrared
    visible = np.asarray(render_shot(person, shot, replace(camera, infrared=False)).image, np.float32)
    thermal_image = np.asarray(infrared.image, np.float32)  # (H, W, 3), equal channels
    if modality_gap <= 1.0:
        mixed = (1.0 - modality_gap) * visible + modality_gap * thermal_image
    else:
        luma = visible @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
        mixed = thermal_image + (modality_gap - 1.0) * (thermal_image - luma[..., None])
    image = Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8))
    return Rendered(image=image, parts=infrared.parts, shot=shot)


def _to_crop_coords(
    parts: dict[str, tuple[float, float]], window: tuple[float, float, float, float]
) -> dict[str, tuple[float, float]]:
    x0, y0, x1, y1 = window
    out = {}
    for name, (x, y) in parts.items():
        u, v = (x - x0) / (x1 - x0) * OUT_W, (y - y0) / (y1 - y0) * OUT_H
        if 0 <= u < OUT_W and 0 <= v < OUT_H:
            out[name] = (round(u, 1), round(v, 1))
    return out


def render_person(
    person: Identity,
    camera: Camera | None = None,
    nuisances: Nuisances | None = None,
    seed: int = 0,
    style: str = "market",
    **shot_overrides,
) -> Rendered:
    """Render one image of ``person``: sample a shot from ``nuisances`` (default: all on) and ``seed``,
    then override any :class:`Shot` field by keyword (``view="back"``, ``occluder="car"``, ...).

    ``camera`` defaults to camera 1 of a 6-camera network of ``style``. Example: each nuisance alone::

        for name in Nuisances.names():
            render_person(person, nuisances=Nuisances().only(name), seed=1).image
    """
    camera = camera if camera is not None else make_cameras(6, style, seed=0)[0]
    nuisances = nuisances if nuisances is not None else Nuisances()
    unknown = set(shot_overrides) - {f.name for f in fields(Shot)}
    if unknown:
        raise ValueError(
            f"Unknown Shot fields {sorted(unknown)}; expected names from {[f.name for f in fields(Shot)]}"
        )
    rng = np.random.default_rng(np.random.SeedSequence([seed, 404]))
    shot = replace(sample_shot(rng, nuisances, camera, camera.style), **shot_overrides)
    return render_shot(person, shot, camera)
