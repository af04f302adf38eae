"""Colours and seeded randomness of the synthetic data set: the ``Colour`` type, the palettes people are dressed
from (``OUTFIT_COLOURS`` and its ``MAX_OUTFITS`` pairs for ``distinct_outfits``), the independent numpy
Generators every stream is drawn from, and the colour draws shared by people, cameras and drawing.
"""

from __future__ import annotations

import colorsys
from typing import Callable

import numpy as np


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


def _darker(colour: Colour, f: float = 0.75) -> Colour:
    return tuple(int(c * f) for c in colour)  # type: ignore[return-value]
