"""Cameras of the synthetic data set: ``Camera`` (the fixed style of one camera: gain, colour cast, gamma,
saturation, preferred view, framing, blur, noise) and its wide background of wall, floor, texture and props,
muted toward grey by ``background_strength``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from hardreid.data.synthetic.colours import NEUTRALS, Colour, _hsv, _jitter, _pick, _rng
from hardreid.data.synthetic.config import SUPERSAMPLE, SyntheticConfig


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
