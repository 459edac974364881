"""Identities of the synthetic world: what a person wears and carries, sampled from a seed.

An identity is a small record of visual attributes (body, skin, hair, garments, shoes, accessories).
Two visual domains (:class:`Style`) draw those attributes from different palettes, so that a model
trained on one domain can be tested on the other; :func:`blend_styles` builds the styles in between
(the ``domain_gap`` knob of the ``market-b`` preset). A fraction of identities are *confusable twins*:
exact copies of another identity except for one small cue (shoes, bag or chest logo) — the
fine-grained negatives every ReID method must learn to separate.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass, replace

import numpy as np

RGB = tuple[int, int, int]

PATTERNS = ("solid", "stripes", "checks", "logo")
LOWER_TYPES = ("trousers", "shorts", "skirt")
LOGO_SHAPES = ("circle", "square", "triangle")
#: The attribute fields a confusable twin may change, per cue.
CUE_FIELDS: dict[str, frozenset[str]] = {
    "shoes": frozenset({"shoe_color"}),
    "bag": frozenset({"handbag", "handbag_side", "backpack"}),
    "logo": frozenset({"upper_pattern", "upper_second", "logo_shape"}),
}


@dataclass(frozen=True)
class Style:
    """A visual domain: the palettes clothes, skin and scenes are drawn from, and how cameras look."""

    name: str
    clothes: tuple[RGB, ...]  # base garment colours; jittered per identity
    clothes_weights: tuple[float, ...]
    walls: tuple[RGB, ...]  # background upper part
    grounds: tuple[RGB, ...]  # background lower part
    indoor: float  # 0: outdoor (trees, poles, kerbs); 1: indoor (shop fronts, tiled floors); between: a mix
    cast_spread: float  # std of per-camera RGB gain around 1 (colour cast)
    gain_range: tuple[float, float]  # per-camera brightness gain
    resolution: float = 1.0  # < 1: rendered small and upsampled (a blurrier, lower-resolution domain)
    pattern_weights: tuple[float, float, float, float] = (0.5, 0.2, 0.12, 0.18)


_MARKET_CLOTHES: tuple[RGB, ...] = (
    (25, 25, 28),
    (60, 60, 65),
    (120, 120, 125),
    (225, 225, 220),
    (30, 40, 90),
    (70, 110, 180),
    (170, 30, 35),
    (40, 110, 60),
    (230, 200, 60),
    (220, 120, 170),
    (120, 70, 40),
    (240, 130, 40),
    (110, 60, 140),
    (60, 160, 170),
)
_MARKET_B_CLOTHES: tuple[RGB, ...] = (
    (200, 185, 150),
    (150, 140, 90),
    (110, 120, 70),
    (95, 60, 45),
    (120, 35, 50),
    (40, 110, 115),
    (235, 215, 210),
    (170, 190, 215),
    (80, 80, 95),
    (215, 160, 130),
    (180, 150, 200),
    (45, 45, 40),
)

STYLES: dict[str, Style] = {
    "market": Style(
        name="market",
        clothes=_MARKET_CLOTHES,
        clothes_weights=(3, 2, 1.5, 2, 2, 1.5, 1, 1, 0.7, 0.7, 1, 0.5, 0.5, 0.5),
        walls=((150, 142, 135), (160, 135, 120), (125, 130, 125), (180, 176, 168), (105, 108, 112)),
        grounds=((115, 115, 110), (135, 128, 118), (100, 105, 95), (145, 145, 145)),
        indoor=0.0,
        cast_spread=0.04,
        gain_range=(0.88, 1.1),
    ),
    "market-b": Style(
        name="market-b",
        clothes=_MARKET_B_CLOTHES,
        clothes_weights=(2, 1.5, 1, 1.5, 1, 1, 1.5, 1, 2, 1, 0.7, 2),
        walls=((225, 220, 205), (200, 205, 215), (235, 200, 160), (180, 175, 190)),
        grounds=((200, 190, 175), (160, 150, 150), (185, 195, 200)),
        indoor=1.0,
        cast_spread=0.1,
        gain_range=(0.85, 1.25),
        resolution=0.5,
        pattern_weights=(0.35, 0.35, 0.1, 0.2),
    ),
}


def blend_styles(source: Style, target: Style, t: float) -> Style:
    """The style a fraction ``t`` of the way from ``source`` to ``target``: ``source`` itself at 0,
    ``target`` itself at 1 (so those worlds are byte for byte the pure styles' worlds).

    In between, every ingredient of the difference moves with ``t``: garments are drawn from the union
    of both palettes, ``target``'s with total probability ``t``; pattern shares, colour-cast spread,
    brightness gains, the indoor share of scene objects and the resolution factor (the blur of a
    low-resolution domain) are interpolated linearly, and wall and floor colours are blended pairwise
    (the shorter list repeated). The result is named ``"<target>@<t>"``, which :func:`get_style` reads back.
    """
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    if t == 0.0:
        return source
    if t == 1.0:
        return target

    def lerp(a: float, b: float) -> float:
        return (1.0 - t) * a + t * b

    def blend(a: tuple[RGB, ...], b: tuple[RGB, ...]) -> tuple[RGB, ...]:
        n = max(len(a), len(b))
        return tuple(
            tuple(int(round(lerp(x, y))) for x, y in zip(a[i % len(a)], b[i % len(b)]))  # type: ignore[misc]
            for i in range(n)
        )

    source_share = np.asarray(source.clothes_weights, float) / sum(source.clothes_weights)
    target_share = np.asarray(target.clothes_weights, float) / sum(target.clothes_weights)
    return Style(
        name=f"{target.name}@{t!r}",
        clothes=source.clothes + target.clothes,
        clothes_weights=tuple(float(w) for w in np.concatenate([(1 - t) * source_share, t * target_share])),
        walls=blend(source.walls, target.walls),
        grounds=blend(source.grounds, target.grounds),
        indoor=lerp(source.indoor, target.indoor),
        cast_spread=lerp(source.cast_spread, target.cast_spread),
        gain_range=(
            lerp(source.gain_range[0], target.gain_range[0]),
            lerp(source.gain_range[1], target.gain_range[1]),
        ),
        resolution=lerp(source.resolution, target.resolution),
        pattern_weights=tuple(lerp(a, b) for a, b in zip(source.pattern_weights, target.pattern_weights)),  # type: ignore[arg-type]
    )


def get_style(name: str) -> Style:
    """A style by name: a key of :data:`STYLES`, or ``"<style>@<t>"`` for the blend
    ``blend_styles(STYLES["market"], STYLES[<style>], t)``."""
    base, at, t = name.partition("@")
    if base not in STYLES or (at and not _is_float(t)):
        raise ValueError(
            f"Unknown style {name!r}; expected one of {sorted(STYLES)} or '<style>@<t in [0, 1]>'"
        )
    return blend_styles(STYLES["market"], STYLES[base], float(t)) if at else STYLES[base]


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class Identity:
    """The visual attributes of one person. Colours are RGB triples in 0..255."""

    pid: int
    sex: str  # "male" | "female" (used by RegDB file names)
    height: float  # relative body height, ~0.9..1.05
    build: float  # relative body width, ~0.85..1.2
    skin: RGB
    hair_color: RGB
    hair_long: bool
    upper_color: RGB
    upper_pattern: str  # one of PATTERNS
    upper_second: RGB  # stripe / check / logo colour
    logo_shape: str  # one of LOGO_SHAPES (drawn when upper_pattern == "logo")
    short_sleeves: bool
    lower_color: RGB
    lower_type: str  # one of LOWER_TYPES
    shoe_color: RGB
    backpack: RGB | None = None
    handbag: RGB | None = None
    handbag_side: str = "right"  # the person's own side: "left" | "right"
    hat: RGB | None = None
    twin_of: int | None = None  # pid of the identity this one copies (confusable pair)
    twin_cue: str | None = None  # the one cue it differs in: a key of CUE_FIELDS

    def to_dict(self) -> dict:
        return asdict(self)

    def differing_fields(self, other: Identity) -> set[str]:
        """Attribute names whose values differ (identity bookkeeping fields excluded)."""
        skip = {"pid", "twin_of", "twin_cue"}
        a, b = self.to_dict(), other.to_dict()
        return {k for k in a if k not in skip and a[k] != b[k]}


def _jitter(rng: np.random.Generator, rgb: RGB, amount: float = 0.06) -> RGB:
    """Perturb a colour in HSV so two people rarely wear exactly the same shade."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + rng.normal(0, amount * 0.3)) % 1.0
    s = float(np.clip(s + rng.normal(0, amount), 0, 1))
    v = float(np.clip(v + rng.normal(0, amount), 0.05, 1))
    return tuple(int(round(255 * c)) for c in colorsys.hsv_to_rgb(h, s, v))  # type: ignore[return-value]


def _pick(
    rng: np.random.Generator, colours: tuple[RGB, ...], weights: tuple[float, ...] | None = None
) -> RGB:
    p = None if weights is None else np.asarray(weights, float) / np.sum(weights)
    return colours[int(rng.choice(len(colours), p=p))]


def _garment(rng: np.random.Generator, style: Style) -> RGB:
    return _jitter(rng, _pick(rng, style.clothes, style.clothes_weights))


def _contrasting(rng: np.random.Generator, style: Style, base: RGB) -> RGB:
    """A garment colour far enough from ``base`` for a pattern or logo to be visible."""
    for _ in range(20):
        c = _garment(rng, style)
        if sum(abs(x - y) for x, y in zip(c, base)) > 180:
            return c
    return tuple(255 - x for x in base)  # type: ignore[return-value]


_SKINS: tuple[RGB, ...] = ((250, 215, 190), (225, 180, 145), (190, 140, 100), (140, 95, 65), (95, 65, 45))
_HAIRS: tuple[RGB, ...] = ((20, 18, 15), (60, 40, 25), (110, 75, 40), (190, 160, 100), (150, 150, 150))


def sample_identity(pid: int, rng: np.random.Generator, style: Style | str = "market") -> Identity:
    """Draw one identity's attributes from the style's palettes."""
    style = get_style(style) if isinstance(style, str) else style
    sex = "female" if rng.random() < 0.5 else "male"
    upper = _garment(rng, style)
    pattern = PATTERNS[int(rng.choice(4, p=np.asarray(style.pattern_weights) / sum(style.pattern_weights)))]
    lower_p = (0.55, 0.2, 0.25) if sex == "female" else (0.8, 0.2, 0.0)
    return Identity(
        pid=pid,
        sex=sex,
        height=float(rng.uniform(0.9, 1.05)),
        build=float(rng.uniform(0.85, 1.2)),
        skin=_jitter(rng, _pick(rng, _SKINS), 0.03),
        hair_color=_jitter(rng, _pick(rng, _HAIRS, (4, 3, 2, 1, 0.5)), 0.03),
        hair_long=bool(rng.random() < (0.7 if sex == "female" else 0.1)),
        upper_color=upper,
        upper_pattern=pattern,
        upper_second=_contrasting(rng, style, upper),
        logo_shape=LOGO_SHAPES[int(rng.integers(len(LOGO_SHAPES)))],
        short_sleeves=bool(rng.random() < 0.4),
        lower_color=_garment(rng, style),
        lower_type=LOWER_TYPES[int(rng.choice(3, p=lower_p))],
        shoe_color=_garment(rng, style),
        backpack=_garment(rng, style) if rng.random() < 0.3 else None,
        handbag=_garment(rng, style) if rng.random() < 0.25 else None,
        handbag_side="left" if rng.random() < 0.5 else "right",
        hat=_garment(rng, style) if rng.random() < 0.12 else None,
    )


def make_confusable(
    original: Identity, pid: int, cue: str, rng: np.random.Generator, style: Style | str = "market"
) -> Identity:
    """A twin of ``original`` that differs only in ``cue`` ("shoes", "bag" or "logo")."""
    style = get_style(style) if isinstance(style, str) else style
    if cue == "shoes":
        change = {"shoe_color": _contrasting(rng, style, original.shoe_color)}
    elif cue == "bag":
        if original.handbag is not None:
            change = (
                {"handbag": None}
                if rng.random() < 0.5
                else {"handbag_side": "left" if original.handbag_side == "right" else "right"}
            )
        elif original.backpack is not None:
            change = {"backpack": None}
        else:
            change = {"handbag": _garment(rng, style)}
    elif cue == "logo":
        if original.upper_pattern == "logo":
            shapes = [s for s in LOGO_SHAPES if s != original.logo_shape]
            change = {
                "logo_shape": shapes[int(rng.integers(len(shapes)))],
                "upper_second": _contrasting(rng, style, original.upper_color),
            }
        else:
            change = {"upper_pattern": "logo"}
    else:
        raise ValueError(f"cue must be one of {sorted(CUE_FIELDS)}, got {cue!r}")
    return replace(original, pid=pid, twin_of=original.pid, twin_cue=cue, **change)


def _cue_for(identity: Identity, rng: np.random.Generator) -> str:
    """Pick a cue that is meaningful for this identity (a logo twin needs a plain or logo top)."""
    cues = ["shoes", "bag"] + (["logo"] if identity.upper_pattern in ("solid", "logo") else [])
    return cues[int(rng.integers(len(cues)))]


def sample_identities(
    n: int,
    seed: int = 0,
    style: Style | str = "market",
    confusable_fraction: float = 0.15,
    first_pid: int = 1,
) -> list[Identity]:
    """Sample ``n`` identities with pids ``first_pid..first_pid+n-1`` from ``seed``.

    About ``confusable_fraction`` of them are twins of the identity just before them (pairs are
    therefore adjacent in pid order; the caller decides how pids are shuffled or split).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= confusable_fraction <= 0.5:
        raise ValueError(
            f"confusable_fraction must be in [0, 0.5] (twins come in pairs), got {confusable_fraction}"
        )
    twin_probability = confusable_fraction / (1.0 - confusable_fraction)  # twins / all = q / (1 + q)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 101]))
    people: list[Identity] = []
    while len(people) < n:
        pid = first_pid + len(people)
        last = people[-1] if people else None
        if last is not None and last.twin_of is None and rng.random() < twin_probability:
            people.append(make_confusable(last, pid, _cue_for(last, rng), rng, style))
        else:
            people.append(sample_identity(pid, rng, style))
    return people
