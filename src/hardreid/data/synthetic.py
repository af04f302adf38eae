"""Deterministic synthetic multi-camera re-ID data set in Market-1501 layout.

Stylised pedestrians (body shape, skin, hair, clothing colours and patterns,
accessories, shoes) are drawn with PIL and seen by cameras that each have their
own illumination, colour cast, background, preferred viewpoint, framing, blur
and noise. Groups of "look-alike" identities share almost everything, so the
task stays non-trivial for clustering. Everything is derived from
``SyntheticConfig.seed`` through numpy Generators: two runs give the same bytes.
"""

from __future__ import annotations

import colorsys
import json
import shutil
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from hardreid.errors import UserError

FORMAT_VERSION = 1
README_MARKER = "hardreid synthetic re-identification data set"
SPLIT_DIRS = ("bounding_box_train", "query", "bounding_box_test")
VIEWS = ("front", "back", "side")
PATTERNS = ("plain", "hstripes", "vstripes", "checks")
SUPERSAMPLE = 2

Colour = tuple[int, int, int]

NEUTRALS: tuple[Colour, ...] = (
    (25, 25, 28), (55, 55, 60), (110, 110, 115), (170, 170, 172), (228, 226, 220),
    (30, 38, 75), (60, 85, 130), (200, 180, 140), (100, 70, 45), (95, 100, 55),
    (165, 145, 100), (110, 30, 40),
)
SKINS: tuple[Colour, ...] = (
    (240, 205, 180), (225, 185, 150), (200, 155, 120), (165, 115, 80), (120, 80, 55), (90, 60, 40),
)
HAIRS: tuple[Colour, ...] = (
    (20, 18, 18), (50, 35, 25), (95, 65, 40), (200, 170, 105), (150, 150, 150), (140, 60, 30),
)
# ``distinct_outfits``: clothing colours that differ in hue (or are black or white), so that no camera's gain, cast
# or saturation turns one into another: red, yellow, green, cyan, blue, purple, pink, white, black. No orange: under
# strong casts a trained network confused it with yellow and red more than all other colours together; no grey:
# white in a dark camera is as light as grey in a bright one.
OUTFIT_COLOURS: tuple[Colour, ...] = (
    (200, 35, 35), (230, 215, 50), (45, 150, 55), (40, 185, 205), (35, 65, 190),
    (125, 45, 165), (240, 130, 185), (235, 235, 230), (28, 28, 32),
)
MAX_OUTFITS = len(OUTFIT_COLOURS) * (len(OUTFIT_COLOURS) - 1)  # ordered pairs of two different colours


@dataclass
class SyntheticConfig:
    """Size and randomness of the synthetic data set (see ``generate_synthetic``).

    ``images_per_camera`` counts images per identity per camera it appears in;
    ``train_images_per_id`` > 0 replaces it for the *training* identities by a
    total per identity, spread over the identity's cameras in turn (few-shot
    sets: 2-4 images over 2 cameras; query and gallery keep
    ``images_per_camera``);
    ``lookalike_fraction`` of the identities come in groups of
    ``lookalike_group_size`` that differ in one item only (1 disables them);
    ``camera_colour_strength`` scales the illumination / colour differences
    between cameras (0 = none, 1 = default, 2-4 = strong casts, gains and
    saturation changes); ``background_strength`` scales
    how far each camera's background (walls, floor, props) departs from a
    plain mid-grey scene (0 = flat grey everywhere, 1 = default colourful
    scenes); ``person_width`` stretches the people horizontally (1 = default
    build, larger = broader people covering more of the crop);
    ``distinct_outfits`` dresses every identity in its own pair of upper-body
    and lower-body colours from ``OUTFIT_COLOURS`` (well apart in hue or
    lightness; no two identities of the training split, nor of the test
    split, share the pair; stripes and checks in a shade of the upper colour), so
    that identities differ in large, plainly visible areas while the cameras
    still differ as set above (it needs ``lookalike_fraction`` 0: look-alikes
    share their outfit; distractors keep free colours).
    """

    num_train_ids: int = 60
    num_test_ids: int = 40
    num_cameras: int = 4
    images_per_camera: int = 4
    train_images_per_id: int = 0
    min_cameras: int = 2
    height: int = 128
    width: int = 64
    lookalike_group_size: int = 3
    lookalike_fraction: float = 0.5
    num_distractors: int = 10
    camera_colour_strength: float = 1.0
    background_strength: float = 1.0
    person_width: float = 1.0
    distinct_outfits: bool = False
    seed: int = 0
    jpeg_quality: int = 90

    def validate(self) -> None:
        """Raise UserError for values the generator cannot honour."""
        checks = [
            (self.num_train_ids >= 1, "num_train_ids must be >= 1"),
            (self.num_test_ids >= 1, "num_test_ids must be >= 1"),
            (self.num_train_ids + self.num_test_ids <= 9999, "num_train_ids + num_test_ids must be <= 9999"),
            (2 <= self.num_cameras <= 9, "num_cameras must be between 2 and 9 (one digit in file names)"),
            (2 <= self.min_cameras <= self.num_cameras, "min_cameras must be between 2 and num_cameras"),
            (self.images_per_camera >= 1, "images_per_camera must be >= 1"),
            (self.train_images_per_id >= 0, "train_images_per_id must be >= 0 (0 = images_per_camera per camera)"),
            (self.height >= 32 and self.width >= 16, "image size must be at least 32x16 (height x width)"),
            (self.lookalike_group_size >= 1, "lookalike_group_size must be >= 1 (1 disables look-alikes)"),
            (0.0 <= self.lookalike_fraction <= 1.0, "lookalike_fraction must be between 0 and 1"),
            (self.num_distractors >= 0, "num_distractors must be >= 0"),
            (0.0 <= self.camera_colour_strength <= 4.0, "camera_colour_strength must be between 0 and 4"),
            (0.0 <= self.background_strength <= 1.0, "background_strength must be between 0 and 1"),
            (0.5 <= self.person_width <= 2.0, "person_width must be between 0.5 and 2"),
            (not self.distinct_outfits or max(self.num_train_ids, self.num_test_ids) <= MAX_OUTFITS,
             f"distinct_outfits allows at most {MAX_OUTFITS} identities per split (different colour pairs)"),
            (not self.distinct_outfits or self.lookalike_fraction == 0 or self.lookalike_group_size == 1,
             "distinct_outfits needs lookalike_fraction 0 (every identity has its own outfit, look-alikes share one)"),
            (self.seed >= 0, "seed must be >= 0"),
            (1 <= self.jpeg_quality <= 100, "jpeg_quality must be between 1 and 100"),
        ]
        for ok, message in checks:
            if not ok:
                raise UserError(f"Invalid synthetic data config: {message}.")


@dataclass
class Person:
    """Appearance of one identity; lengths are fractions of the person's height."""

    height: float
    shoulder: float
    head: float
    legs: float
    skin: Colour
    hair: Colour
    hair_long: bool
    upper: Colour
    pattern: str
    pattern_colour: Colour
    pattern_period: float
    long_sleeves: bool
    lower: Colour
    lower_kind: str
    shoes: Colour
    backpack: Colour | None
    bag: Colour | None
    bag_side: int
    hat: Colour | None


@dataclass
class Camera:
    """Fixed style of one camera."""

    gain: float
    cast: tuple[float, float, float]
    gamma: float
    saturation: float
    view_probs: tuple[float, float, float]
    mirror_prob: float
    squeeze: float
    scale: float
    top: float
    blur: float
    noise: float
    floor_colour: Colour
    wall_colour: Colour
    background: Image.Image


@dataclass
class Pose:
    """Per-image jitter of one appearance."""

    view: str
    mirror: bool
    stride: float
    swing: float
    dx: float
    dy: float
    scale: float
    light: float


# ----------------------------------------------------------------------------- randomness


def _rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent generator for one stream (``keys`` name the stream)."""
    return np.random.default_rng([seed, *keys])


def _pick(rng: np.random.Generator, items: tuple[Colour, ...]) -> Colour:
    return items[int(rng.integers(len(items)))]


def _jitter(rng: np.random.Generator, colour: Colour, amount: float = 12.0) -> Colour:
    values = np.clip(np.asarray(colour, float) + rng.normal(0.0, amount, 3), 0, 255)
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def _hsv(h: float, s: float, v: float) -> Colour:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return int(r * 255), int(g * 255), int(b * 255)


def _bright(rng: np.random.Generator) -> Colour:
    return _hsv(rng.random(), rng.uniform(0.45, 0.9), rng.uniform(0.45, 0.95))


def _cloth(rng: np.random.Generator, p_bright: float) -> Colour:
    base = _bright(rng) if rng.random() < p_bright else _pick(rng, NEUTRALS)
    return _jitter(rng, base, 10.0)


def _different(rng: np.random.Generator, colour: Colour, draw: Callable[[], Colour]) -> Colour:
    """A colour drawn by ``draw`` that is clearly different from ``colour``."""
    for _ in range(50):
        other = draw()
        if np.abs(np.subtract(other, colour)).sum() > 120:
            return other
    return tuple(255 - c for c in colour)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- identities


def _random_person(rng: np.random.Generator) -> Person:
    """Draw one independent identity (``_population`` applies ``distinct_outfits``)."""
    upper = _cloth(rng, 0.55)
    return Person(
        height=rng.uniform(0.9, 1.0),
        shoulder=rng.uniform(0.23, 0.31),
        head=rng.uniform(0.12, 0.145),
        legs=rng.uniform(0.44, 0.51),
        skin=_jitter(rng, _pick(rng, SKINS), 6.0),
        hair=_jitter(rng, _pick(rng, HAIRS), 6.0),
        hair_long=bool(rng.random() < 0.35),
        upper=upper,
        pattern=PATTERNS[int(rng.choice(4, p=[0.55, 0.2, 0.1, 0.15]))],
        pattern_colour=_different(rng, upper, lambda: _cloth(rng, 0.4)),
        pattern_period=rng.uniform(0.028, 0.045),
        long_sleeves=bool(rng.random() < 0.6),
        lower=_cloth(rng, 0.2),
        lower_kind=("trousers", "shorts", "skirt")[int(rng.choice(3, p=[0.65, 0.15, 0.2]))],
        shoes=_cloth(rng, 0.15),
        backpack=_cloth(rng, 0.5) if rng.random() < 0.35 else None,
        bag=_cloth(rng, 0.5) if rng.random() < 0.25 else None,
        bag_side=1 if rng.random() < 0.5 else -1,
        hat=_cloth(rng, 0.5) if rng.random() < 0.2 else None,
    )


def _mutate(rng: np.random.Generator, base: Person, item: str) -> Person:
    """A look-alike of ``base`` that differs in one item."""
    if item == "lower":
        return replace(base, lower=_different(rng, base.lower, lambda: _cloth(rng, 0.4)))
    if item == "pattern":
        options = [p for p in PATTERNS if p != base.pattern]
        return replace(base, pattern=options[int(rng.integers(len(options)))])
    if item == "backpack":
        return replace(base, backpack=None if base.backpack is not None else _cloth(rng, 0.6))
    if item == "bag":
        return replace(base, bag=None if base.bag is not None else _cloth(rng, 0.6))
    if item == "hat":
        return replace(base, hat=None if base.hat is not None else _cloth(rng, 0.6))
    if item == "shoes":
        return replace(base, shoes=_different(rng, base.shoes, lambda: _cloth(rng, 0.6)))
    raise ValueError(item)


def _outfits(cfg: SyntheticConfig, stream: int, count: int) -> list[tuple[int, int]]:
    """``distinct_outfits``: ``count`` different (upper, lower) pairs of ``OUTFIT_COLOURS`` indices."""
    n = len(OUTFIT_COLOURS)
    pairs = [(u, low) for u in range(n) for low in range(n) if u != low]
    rng = _rng(cfg.seed, stream, 1)
    return [pairs[i] for i in rng.permutation(len(pairs))[:count]]


def _shade(colour: Colour) -> Colour:
    """A darker (or, for dark colours, lighter) shade of ``colour``: stripes and checks that keep its hue."""
    if sum(colour) > 240:
        return _darker(colour, 0.6)
    return tuple(int(c + (255 - c) * 0.3) for c in colour)  # type: ignore[return-value]


def _dress(rng: np.random.Generator, person: Person, outfit: tuple[int, int]) -> Person:
    """``person`` in the outfit's colours (slightly jittered); a pattern in a shade of the upper colour, so that
    the pattern adds texture without mixing in the colour of another identity's outfit."""
    upper = _jitter(rng, OUTFIT_COLOURS[outfit[0]], 6.0)
    return replace(person, upper=upper, lower=_jitter(rng, OUTFIT_COLOURS[outfit[1]], 6.0), pattern_colour=_shade(upper))


def _population(cfg: SyntheticConfig, stream: int, count: int) -> tuple[list[Person], list[int]]:
    """``count`` people and their look-alike group index (-1 = no group)."""
    rng = _rng(cfg.seed, stream)
    size = cfg.lookalike_group_size
    n_groups = min(int(round(count * cfg.lookalike_fraction / size)), count // size) if size > 1 else 0
    people: list[Person] = []
    groups: list[int] = []
    items = ("lower", "pattern", "backpack", "hat", "bag", "shoes")
    for g in range(n_groups):
        base = _random_person(rng)
        order = [items[i] for i in rng.permutation(len(items))]
        people.append(base)
        for m in range(1, size):
            people.append(_mutate(rng, base, order[(m - 1) % len(order)]))
        groups.extend([g] * size)
    while len(people) < count:
        people.append(_random_person(rng))
        groups.append(-1)
    if cfg.distinct_outfits:  # own stream: the other draws (and the default data sets) stay as they were
        outfit_rng = _rng(cfg.seed, stream, 2)
        people = [_dress(outfit_rng, p, o) for p, o in zip(people, _outfits(cfg, stream, count))]
    order_ids = rng.permutation(count)
    return [people[i] for i in order_ids], [groups[i] for i in order_ids]


def _camera_sets(cfg: SyntheticConfig, rng: np.random.Generator, count: int) -> list[list[int]]:
    """Cameras (0-based, sorted) each identity appears in; fewer cameras are likelier."""
    sizes = np.arange(cfg.min_cameras, cfg.num_cameras + 1)
    weights = 1.0 / (sizes - cfg.min_cameras + 1)
    out = []
    for _ in range(count):
        k = int(rng.choice(sizes, p=weights / weights.sum()))
        out.append(sorted(int(c) for c in rng.choice(cfg.num_cameras, size=k, replace=False)))
    return out


# ----------------------------------------------------------------------------- cameras


def _background(rng: np.random.Generator, wall: Colour, floor: Colour, w: int, h: int) -> Image.Image:
    """Wide camera background: wall and floor, gradient, texture and a few shapes."""
    horizon = int(h * rng.uniform(0.5, 0.75))
    ys = np.linspace(0.0, 1.0, h)[:, None, None]
    img = np.empty((h, w, 3), float)
    shade = rng.uniform(-0.25, 0.25)
    img[:horizon] = np.asarray(wall, float) * (1.0 + shade * (ys[:horizon] - 0.5))
    img[horizon:] = np.asarray(floor, float) * (1.0 - 0.3 * (ys[horizon:] - ys[horizon]))
    texture = ("tiles", "bricks", "panels", "speckle")[int(rng.integers(4))]
    xs = np.arange(w)[None, :]
    yy = np.arange(h)[:, None]
    if texture == "tiles":
        period = int(rng.integers(14, 30))
        lines = ((xs % period) < 2) | (((yy - horizon) % (period // 2 + 4)) < 2)
        img[horizon:][lines[horizon:]] *= 0.8
    elif texture == "bricks":
        bh = int(rng.integers(8, 14))
        offset = ((yy // bh) % 2) * (bh * 2)
        mortar = ((yy % bh) < 2) | (((xs + offset) % (bh * 4)) < 2)
        img[:horizon][mortar[:horizon]] = img[:horizon][mortar[:horizon]] * 0.75 + 40
    elif texture == "panels":
        period = int(rng.integers(20, 50))
        img[:horizon] *= (1.0 + 0.12 * ((np.arange(w) // period) % 2))[None, :, None]
    img += rng.normal(0.0, rng.uniform(3.0, 10.0), (h, w, 1))
    out = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for _ in range(int(rng.integers(3, 7))):
        muted = _hsv(rng.random(), rng.uniform(0.15, 0.55), rng.uniform(0.25, 0.75))
        colour = _jitter(rng, muted if rng.random() < 0.6 else _pick(rng, NEUTRALS), 15.0)
        x0 = rng.uniform(0, w)
        bw = rng.uniform(0.03, 0.2) * w
        y0 = rng.uniform(0, horizon * 0.8)
        bh = rng.uniform(0.1, 0.5) * h
        if rng.random() < 0.7:
            draw.rectangle([x0, y0, x0 + bw, min(y0 + bh, horizon)], fill=colour)
        else:
            draw.ellipse([x0, y0, x0 + bw, y0 + bw], fill=colour)
    return out


BACKGROUND_GREY = 128.0


def _toward_grey(colour: Colour, strength: float) -> Colour:
    """``colour`` moved toward mid-grey: 1 keeps it, 0 gives grey."""
    if strength == 1.0:
        return colour
    return tuple(int(round(BACKGROUND_GREY + strength * (c - BACKGROUND_GREY))) for c in colour)  # type: ignore[return-value]


def _mute(img: Image.Image, strength: float) -> Image.Image:
    """A background with its colours and contrast scaled toward mid-grey (see ``background_strength``)."""
    if strength == 1.0:
        return img
    x = BACKGROUND_GREY + strength * (np.asarray(img, dtype=np.float32) - BACKGROUND_GREY)
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def _cameras(cfg: SyntheticConfig) -> list[Camera]:
    """One distinct style per camera."""
    rng = _rng(cfg.seed, 1)
    n = cfg.num_cameras
    k = cfg.camera_colour_strength
    gains = 1.0 + k * (np.linspace(0.85, 1.12, n)[rng.permutation(n)] * rng.uniform(0.95, 1.05, n) - 1.0)
    hue0 = rng.random()
    dominant = rng.permutation(3)
    cams = []
    for i in range(n):
        theta = 2 * np.pi * (i / n + rng.uniform(-0.08, 0.08))
        strength = k * rng.uniform(0.03, 0.08)
        cast = 1.0 + strength * np.cos(theta - np.array([0.0, 2.0, 4.0]) * np.pi / 3)
        probs = np.full(3, 0.2)
        probs[dominant[i % 3]] = 0.6
        wall = _hsv(hue0 + i / n + rng.uniform(-0.05, 0.05), rng.uniform(0.1, 0.45), rng.uniform(0.4, 0.85))
        floor = _hsv(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.3, 0.7))
        w, h = cfg.width * SUPERSAMPLE, cfg.height * SUPERSAMPLE
        cams.append(
            Camera(
                gain=float(gains[i]),
                cast=tuple(float(c) for c in cast / cast.mean()),  # type: ignore[arg-type]
                gamma=1.0 + k * rng.uniform(-0.08, 0.08),
                saturation=1.0 + k * rng.uniform(-0.15, 0.12),
                view_probs=tuple(float(p) for p in probs),  # type: ignore[arg-type]
                mirror_prob=0.85 if rng.random() < 0.5 else 0.15,
                squeeze=rng.uniform(0.85, 1.1),
                scale=rng.uniform(0.8, 0.94),
                top=rng.uniform(0.02, 0.1),
                blur=rng.uniform(0.0, 0.9),
                noise=rng.uniform(1.5, 7.0),
                floor_colour=_toward_grey(floor, cfg.background_strength),
                wall_colour=_toward_grey(wall, cfg.background_strength),
                background=_mute(_background(rng, wall, floor, w * 3, h), cfg.background_strength),
            )
        )
    return cams


# ----------------------------------------------------------------------------- drawing


class _Body:
    """Maps body coordinates (u: horizontal, v: 0 head top .. 1 sole, both in person heights) to pixels."""

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, top: float, hp: float, sx: float) -> None:
        self.draw, self.cx, self.top, self.hp, self.sx = draw, cx, top, hp, sx

    def pt(self, u: float, v: float) -> tuple[float, float]:
        return self.cx + u * self.sx, self.top + v * self.hp

    def poly(self, points: list[tuple[float, float]], fill: Colour) -> None:
        self.draw.polygon([self.pt(u, v) for u, v in points], fill=fill)

    def ellipse(self, u: float, v: float, ru: float, rv: float, fill: Colour) -> None:
        x, y = self.pt(u, v)
        dx, dy = abs(ru * self.sx), rv * self.hp
        self.draw.ellipse([x - dx, y - dy, x + dx, y + dy], fill=fill)

    def limb(self, a: tuple[float, float], b: tuple[float, float], width: float, fill: Colour) -> None:
        """A thick segment with rounded ends (``width`` in person heights)."""
        px = max(1, int(round(width * abs(self.sx))))
        self.draw.line([self.pt(*a), self.pt(*b)], fill=fill, width=px)
        for u, v in (a, b):
            self.ellipse(u, v, width / 2, width / 2 * abs(self.sx) / self.hp, fill)


def _darker(colour: Colour, f: float = 0.75) -> Colour:
    return tuple(int(c * f) for c in colour)  # type: ignore[return-value]


def _draw_legs(b: _Body, p: Person, pose: Pose, hip_w: float) -> None:
    v_hip = 1.0 - p.legs
    v_knee = v_hip + p.legs * 0.5
    lw = p.shoulder * 0.19
    side = pose.view == "side"
    for k, sign in enumerate((-1, 1)):
        u_hip = sign * (hip_w - lw) * (0.3 if side else 1.0)
        u_foot = u_hip + (sign * pose.stride if side else sign * pose.stride * 0.25)
        v_foot = 0.975 - (0.0 if side or k == 0 else abs(pose.stride) * 0.15)
        u_knee = (u_hip + u_foot) / 2
        leg_colour = p.lower if p.lower_kind == "trousers" else p.skin
        if side and k == 0:
            leg_colour = _darker(leg_colour, 0.85)
        b.limb((u_hip, v_hip + 0.02), (u_knee, v_knee), lw * 2, leg_colour)
        b.limb((u_knee, v_knee), (u_foot, v_foot - 0.02), lw * 1.7, leg_colour)
        if p.lower_kind == "shorts":
            b.limb((u_hip, v_hip + 0.02), (u_hip * 0.7 + u_knee * 0.3, v_knee - 0.05), lw * 2.2, p.lower)
        toe = 0.03 if side else 0.0
        b.ellipse(u_foot + toe, v_foot + 0.005, lw * 1.3 + toe, 0.018, p.shoes)


def _draw_lower_garment(b: _Body, p: Person, hip_w: float) -> None:
    v_hip = 1.0 - p.legs
    if p.lower_kind == "skirt":
        v_hem = v_hip + p.legs * 0.45
        b.poly([(-hip_w, v_hip - 0.01), (hip_w, v_hip - 0.01), (hip_w * 1.35, v_hem), (-hip_w * 1.35, v_hem)], p.lower)
    else:
        b.poly([(-hip_w, v_hip - 0.01), (hip_w, v_hip - 0.01), (hip_w, v_hip + 0.07), (-hip_w, v_hip + 0.07)], p.lower)


def _torso_points(p: Person, half: float) -> list[tuple[float, float]]:
    v_sh = p.head + 0.025
    v_end = 1.0 - p.legs + 0.035
    waist = half * 0.86
    return [
        (-half * 0.8, v_sh), (half * 0.8, v_sh), (half, v_sh + 0.035),
        (waist, v_end), (-waist, v_end), (-half, v_sh + 0.035),
    ]


def _draw_torso(canvas: Image.Image, b: _Body, p: Person, half: float) -> None:
    """Upper garment with its pattern (stripes follow the body)."""
    points = _torso_points(p, half)
    b.poly(points, p.upper)
    if p.pattern == "plain":
        return
    mask = Image.new("L", canvas.size, 0)
    ImageDraw.Draw(mask).polygon([b.pt(u, v) for u, v in points], fill=255)
    period = max(2.0, p.pattern_period * b.hp)
    ys = (np.arange(canvas.size[1])[:, None] - b.top) / period
    xs = (np.arange(canvas.size[0])[None, :] - b.cx) / period
    h = (np.floor(ys) % 2).astype(bool)
    w = (np.floor(xs + 0.5) % 2).astype(bool)
    stripes = {"hstripes": h & np.ones_like(w), "vstripes": w & np.ones_like(h), "checks": h ^ w}[p.pattern]
    keep = np.asarray(mask) * stripes
    canvas.paste(p.pattern_colour, (0, 0), Image.fromarray(keep.astype(np.uint8)))


def _draw_arm(b: _Body, p: Person, shoulder_u: float, hand_u: float, width: float, dark: float = 1.0) -> None:
    v_sh = p.head + 0.04
    v_hand = 1.0 - p.legs + 0.06
    v_elbow = (v_sh + v_hand) / 2
    u_elbow = (shoulder_u + hand_u) / 2
    sleeve = _darker(p.upper, dark)
    skin = _darker(p.skin, dark)
    b.limb((shoulder_u, v_sh), (u_elbow, v_elbow), width, sleeve)
    b.limb((u_elbow, v_elbow), (hand_u, v_hand), width * 0.85, sleeve if p.long_sleeves else skin)
    b.ellipse(hand_u, v_hand + 0.01, width * 0.5, 0.016, skin)


def _draw_head(b: _Body, p: Person, view: str) -> None:
    hd = p.head
    ru = hd * 0.37
    b.limb((0.0, hd * 0.8), (0.0, hd + 0.03), hd * 0.3, p.skin)
    if view == "back":
        b.ellipse(0.0, hd / 2, ru, hd / 2, p.hair)
        if p.hair_long:
            b.poly([(-ru, hd * 0.5), (ru, hd * 0.5), (ru * 1.05, hd + 0.06), (-ru * 1.05, hd + 0.06)], p.hair)
        return
    if p.hair_long:
        back = -ru * 0.4 if view == "side" else 0.0
        b.poly([(back - ru * 1.05, hd * 0.4), (back + ru * 1.05, hd * 0.4),
                (back + ru * 1.1, hd + 0.05), (back - ru * 1.1, hd + 0.05)], p.hair)
    b.ellipse(0.0, hd / 2, ru, hd / 2, p.hair)
    face_u = ru * 0.3 if view == "side" else 0.0
    b.ellipse(face_u, hd * 0.64, ru * (0.75 if view == "side" else 0.8), hd * 0.36, p.skin)
    eye_v = hd * 0.58
    for eu in ((ru * 0.55,) if view == "side" else (-ru * 0.4, ru * 0.4)):
        b.ellipse(eu, eye_v, ru * 0.12, hd * 0.05, (30, 25, 25))


def _draw_hat(b: _Body, p: Person, view: str) -> None:
    if p.hat is None:
        return
    hd = p.head
    ru = hd * 0.37
    b.poly([(-ru * 1.02, hd * 0.32), (-ru * 0.8, 0.0), (ru * 0.8, 0.0), (ru * 1.02, hd * 0.32)], p.hat)
    b.ellipse(0.0, hd * 0.05, ru * 0.8, hd * 0.1, p.hat)
    if view == "side":
        b.poly([(ru * 0.5, hd * 0.28), (ru * 1.6, hd * 0.33), (ru * 0.5, hd * 0.38)], _darker(p.hat, 0.8))
    elif view == "front":
        b.ellipse(0.0, hd * 0.33, ru * 1.15, hd * 0.06, _darker(p.hat, 0.8))


def _draw_backpack(b: _Body, p: Person, view: str, half: float) -> None:
    """Backpack drawn over the body: full pack from behind, straps from the front."""
    if p.backpack is None:
        return
    v_sh = p.head + 0.03
    v_hip = 1.0 - p.legs
    if view == "back":
        w = half * 0.75
        b.poly([(-w, v_sh + 0.02), (w, v_sh + 0.02), (w * 1.05, v_hip - 0.02), (-w * 1.05, v_hip - 0.02)], p.backpack)
        b.poly([(-w * 0.7, v_hip - 0.12), (w * 0.7, v_hip - 0.12), (w * 0.7, v_hip - 0.04), (-w * 0.7, v_hip - 0.04)],
               _darker(p.backpack, 0.8))
    elif view == "front":
        for s in (-1, 1):
            b.limb((s * half * 0.5, v_sh), (s * half * 0.55, v_sh + 0.16), half * 0.22, p.backpack)
    else:
        b.limb((half * 0.1, v_sh), (-half * 0.3, v_sh + 0.17), half * 0.3, _darker(p.backpack, 0.9))


def _draw_backpack_side(b: _Body, p: Person, half: float) -> None:
    """Pack seen from the side, behind the torso."""
    if p.backpack is None:
        return
    v_sh = p.head + 0.04
    v_hip = 1.0 - p.legs
    b.poly([(-half - 0.09, v_sh + 0.02), (-half * 0.5, v_sh), (-half * 0.5, v_hip - 0.01), (-half - 0.1, v_hip - 0.03)],
           p.backpack)


def _draw_bag(b: _Body, p: Person, view: str, half: float) -> None:
    if p.bag is None:
        return
    side = p.bag_side * (-1 if view == "back" else 1)
    v_sh = p.head + 0.03
    v_hip = 1.0 - p.legs
    if view == "side":
        bag_u = -half * 0.2
        b.limb((0.0, v_sh), (bag_u, v_hip - 0.02), 0.012, _darker(p.bag, 0.7))
    else:
        bag_u = side * (half + 0.035)
        b.limb((-side * half * 0.6, v_sh), (bag_u, v_hip - 0.02), 0.012, _darker(p.bag, 0.7))
    b.poly([(bag_u - 0.055, v_hip - 0.03), (bag_u + 0.055, v_hip - 0.03),
            (bag_u + 0.06, v_hip + 0.08), (bag_u - 0.06, v_hip + 0.08)], p.bag)


def _draw_person(canvas: Image.Image, b: _Body, p: Person, pose: Pose) -> None:
    """Paint the person in back-to-front order."""
    view = pose.view
    side = view == "side"
    half = p.shoulder / 2 * (0.62 if side else 1.0)
    hip_w = half * (0.9 if side else 0.82)
    arm_w = p.shoulder * 0.15
    if side:
        _draw_arm(b, p, 0.0, -pose.swing, arm_w, dark=0.8)
        _draw_backpack_side(b, p, half)
    _draw_legs(b, p, pose, hip_w)
    _draw_lower_garment(b, p, hip_w)
    if not side:
        for s in (-1, 1):
            _draw_arm(b, p, s * (half - arm_w * 0.5), s * (half + arm_w * 0.2) + s * abs(pose.swing) * 0.3, arm_w)
    _draw_torso(canvas, b, p, half)
    _draw_backpack(b, p, view, half)
    _draw_bag(b, p, view, half)
    if side:
        _draw_arm(b, p, 0.0, pose.swing, arm_w)
    _draw_head(b, p, view)
    _draw_hat(b, p, view)


def _draw_occluder(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cam: Camera, w: int, h: int) -> None:
    """A rectangle of background-like colour over part of the body."""
    colour = _jitter(rng, cam.floor_colour if rng.random() < 0.5 else cam.wall_colour, 20.0)
    kind = int(rng.integers(3))
    if kind == 0:  # something low in front: car, bench, other people
        y0 = h * rng.uniform(0.55, 0.8)
        draw.rectangle([-1, y0, w + 1, h + 1], fill=colour)
    elif kind == 1:  # from the left or right
        x = w * rng.uniform(0.25, 0.45)
        box = [-1, h * rng.uniform(0.0, 0.4), x, h + 1] if rng.random() < 0.5 else [w - x, h * rng.uniform(0.0, 0.4), w + 1, h + 1]
        draw.rectangle(box, fill=colour)
    else:  # a post or another pedestrian crossing
        x = w * rng.uniform(0.2, 0.6)
        draw.rectangle([x, -1, x + w * rng.uniform(0.15, 0.3), h + 1], fill=colour)


def _pose(rng: np.random.Generator, cam: Camera) -> Pose:
    view = VIEWS[int(rng.choice(3, p=cam.view_probs))]
    return Pose(
        view=view,
        mirror=bool(rng.random() < cam.mirror_prob),
        stride=rng.uniform(-0.12, 0.12),
        swing=rng.uniform(-0.07, 0.07),
        dx=rng.normal(0.0, 0.04),
        dy=rng.normal(0.0, 0.015),
        scale=rng.uniform(0.95, 1.05),
        light=rng.uniform(0.94, 1.06),
    )


def _finish(img: Image.Image, rng: np.random.Generator, cam: Camera, pose: Pose) -> Image.Image:
    """Camera optics and sensor: blur, gain, colour cast, gamma, saturation, noise."""
    if cam.blur > 0.05:
        img = img.filter(ImageFilter.GaussianBlur(cam.blur))
    x = np.asarray(img, dtype=np.float32) / 255.0
    grey = x.mean(axis=2, keepdims=True)
    x = grey + (x - grey) * cam.saturation
    x = np.clip(x, 0.0, 1.0) ** cam.gamma
    x = x * (cam.gain * pose.light) * np.asarray(cam.cast, np.float32)
    x = x * 255.0 + rng.normal(0.0, cam.noise, x.shape).astype(np.float32)
    return Image.fromarray(np.clip(x + 0.5, 0, 255).astype(np.uint8))


def _render(person: Person, cam: Camera, cfg: SyntheticConfig, rng: np.random.Generator) -> Image.Image:
    """One crop of ``person`` seen by ``cam`` (``rng`` drives pose, framing and noise)."""
    w, h = cfg.width * SUPERSAMPLE, cfg.height * SUPERSAMPLE
    pose = _pose(rng, cam)
    x0 = int(rng.integers(0, cam.background.size[0] - w + 1))
    canvas = cam.background.crop((x0, 0, x0 + w, h))
    draw = ImageDraw.Draw(canvas)
    hp = h * cam.scale * person.height * pose.scale
    top = h * (cam.top + pose.dy) + (h * cam.scale - hp) * 0.6
    top = min(top, h - hp - 1)
    cx = w * (0.5 + pose.dx)
    sx = hp * cam.squeeze * cfg.person_width * (-1.0 if pose.mirror else 1.0)
    shadow_y = top + hp
    half_shadow = hp * 0.16 * cfg.person_width
    draw.ellipse([cx - half_shadow, shadow_y - hp * 0.02, cx + half_shadow, shadow_y + hp * 0.02],
                 fill=_darker(cam.floor_colour, 0.55))
    _draw_person(canvas, _Body(draw, cx, top, hp, sx), person, pose)
    if rng.random() < 0.2:
        _draw_occluder(draw, rng, cam, w, h)
    small = canvas.resize((cfg.width, cfg.height), Image.Resampling.BOX)
    return _finish(small, rng, cam, pose)


# ----------------------------------------------------------------------------- plan and output


@dataclass(frozen=True)
class _Item:
    split: str
    pid: int
    cam: int
    key: tuple[int, ...]


def _plan(cfg: SyntheticConfig) -> tuple[list[_Item], dict[int, list[int]]]:
    """Every image to write, in order, and each identity's cameras (0-based)."""
    n_total = cfg.num_train_ids + cfg.num_test_ids
    cam_sets = _camera_sets(cfg, _rng(cfg.seed, 3), n_total)
    items: list[_Item] = []
    cams_of: dict[int, list[int]] = {}
    for idx in range(n_total):
        pid = idx + 1
        cams = cam_sets[idx]
        cams_of[pid] = cams
        is_train = idx < cfg.num_train_ids
        n_query_cams = min(2, len(cams) if cfg.images_per_camera > 1 else len(cams) - 1)
        if is_train and cfg.train_images_per_id > 0:  # a total per identity, over its cameras in turn
            for t in range(cfg.train_images_per_id):
                cam = cams[t % len(cams)]
                items.append(_Item("bounding_box_train", pid, cam, (4, idx, cam, t // len(cams))))
            continue
        for j, cam in enumerate(cams):
            for k in range(cfg.images_per_camera):
                if is_train:
                    split = "bounding_box_train"
                else:
                    split = "query" if (k == 0 and j < n_query_cams) else "bounding_box_test"
                items.append(_Item(split, pid, cam, (4, idx, cam, k)))
    for d in range(cfg.num_distractors):
        cam = int(_rng(cfg.seed, 6, d).integers(cfg.num_cameras))
        items.append(_Item("bounding_box_test", 0, cam, (5, d)))
    return items, cams_of


def _file_name(pid: int, cam: int, index: int) -> str:
    return f"{pid:04d}_c{cam + 1}s1_{index:06d}_00.jpg"


def _readme(cfg: SyntheticConfig, counts: dict[str, int], cameras: list[Camera]) -> str:
    lines = [
        README_MARKER,
        "=" * len(README_MARKER),
        "",
        "Generated by hardreid.data.synthetic.generate_synthetic (Market-1501 layout).",
        "Procedurally drawn pedestrians (body shape, skin, hair, clothing colours and patterns,",
        "backpack / bag / hat, shoes) seen by cameras with their own illumination, colour cast,",
        "background, preferred viewpoint, framing, blur and noise; per image pose, position and",
        "scale jitter and occasional occlusion. Groups of look-alike identities differ in one item.",
        "File names: PPPP_cCs1_NNNNNN_00.jpg (PPPP identity, 0000 = distractor; C camera, 1-based;",
        "NNNNNN running index). Query identities always have a gallery image in another camera.",
        "synthetic.json lists each identity's cameras and the look-alike groups.",
        "Delete this directory or call generate_synthetic again to regenerate it.",
        "",
        "Parameters:",
    ]
    lines += [f"  {k} = {v}" for k, v in asdict(cfg).items()]
    lines += ["", "Cameras:"]
    for i, c in enumerate(cameras, start=1):
        view = VIEWS[int(np.argmax(c.view_probs))]
        cast = "/".join(f"{x:.2f}" for x in c.cast)
        lines.append(f"  c{i}: gain {c.gain:.2f}, RGB cast {cast}, gamma {c.gamma:.2f}, mostly {view} view, "
                     f"person scale {c.scale:.2f}, blur {c.blur:.2f} px, noise {c.noise:.1f}")
    lines += ["", "Images:"] + [f"  {k}: {v}" for k, v in counts.items()]
    return "\n".join(lines) + "\n"


def _is_ours(out: Path) -> bool:
    readme = out / "README.txt"
    try:
        return readme.is_file() and readme.read_text(encoding="utf-8").startswith(README_MARKER)
    except (OSError, UnicodeDecodeError):
        return False


def _recorded(out: Path) -> dict | None:
    try:
        return json.loads((out / "synthetic.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _up_to_date(out: Path, cfg: SyntheticConfig) -> bool:
    """True when ``out`` holds a complete set generated with the same config."""
    meta = _recorded(out)
    if not meta or meta.get("format_version") != FORMAT_VERSION or meta.get("config") != asdict(cfg):
        return False
    counts = meta.get("counts", {})
    return all((out / d).is_dir() and len(list((out / d).glob("*.jpg"))) == counts.get(d) for d in SPLIT_DIRS)


def _prepare(out: Path) -> None:
    """Make ``out`` ready for writing; refuse foreign non-empty directories."""
    if out.exists() and not out.is_dir():
        raise UserError(f"Cannot write the synthetic data set to {out}: it is a file, expected a directory.")
    if out.is_dir() and any(out.iterdir()):
        if not _is_ours(out):
            raise UserError(
                f"Refusing to write the synthetic data set into {out}: the directory is not empty and has no "
                "README.txt from a previous synthetic set. Choose an empty or new directory."
            )
        for d in SPLIT_DIRS:
            shutil.rmtree(out / d, ignore_errors=True)
        for name in ("synthetic.json", "README.txt"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)


def generate_synthetic(out_dir: str | Path, config: SyntheticConfig | None = None, progress: bool = False) -> Path:
    """Write the synthetic data set to ``out_dir`` (Market-1501 layout) and return its path.

    Does nothing if ``out_dir`` already holds a complete set made with the same config.
    """
    cfg = config or SyntheticConfig()
    cfg.validate()
    out = Path(out_dir)
    if out.is_dir() and _is_ours(out) and _up_to_date(out, cfg):
        return out
    _prepare(out)
    items, cams_of = _plan(cfg)
    counts = {d: sum(1 for it in items if it.split == d) for d in SPLIT_DIRS}
    cameras = _cameras(cfg)
    (out / "README.txt").write_text(_readme(cfg, counts, cameras), encoding="utf-8")
    for d in SPLIT_DIRS:
        (out / d).mkdir()
    train_people, train_groups = _population(cfg, 2, cfg.num_train_ids)
    test_people, test_groups = _population(cfg, 7, cfg.num_test_ids)
    people = train_people + test_people
    groups = train_groups + [g + 10000 if g >= 0 else -1 for g in test_groups]
    for index, it in enumerate(items, start=1):
        rng = _rng(cfg.seed, *it.key)
        person = people[it.pid - 1] if it.pid > 0 else _random_person(rng)
        img = _render(person, cameras[it.cam], cfg, rng)
        img.save(out / it.split / _file_name(it.pid, it.cam, index), quality=cfg.jpeg_quality)
        if progress and (index % 100 == 0 or index == len(items)):
            print(f"\rsynthetic data: {index}/{len(items)} images", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    _write_meta(out, cfg, counts, cams_of, groups)
    return out


def _write_meta(out: Path, cfg: SyntheticConfig, counts: dict[str, int],
                cams_of: dict[int, list[int]], groups: list[int]) -> None:
    """synthetic.json: config, counts, identity cameras and look-alike groups (written last)."""
    by_group: dict[int, list[int]] = {}
    for idx, g in enumerate(groups):
        if g >= 0:
            by_group.setdefault(g, []).append(idx + 1)
    meta = {
        "format_version": FORMAT_VERSION,
        "config": asdict(cfg),
        "counts": counts,
        "train_ids": list(range(1, cfg.num_train_ids + 1)),
        "test_ids": list(range(cfg.num_train_ids + 1, cfg.num_train_ids + cfg.num_test_ids + 1)),
        "cameras": {str(pid): [c + 1 for c in cams] for pid, cams in cams_of.items()},
        "lookalike_groups": [sorted(v) for _, v in sorted(by_group.items())],
    }
    (out / "synthetic.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")
