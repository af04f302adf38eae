"""Identities of the synthetic data set: ``Person`` (the appearance of one identity), independent random people,
look-alike groups that differ in one item, ``distinct_outfits`` dressing, and the cameras each identity appears
in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hardreid.data.synthetic.colours import (
    HAIRS,
    OUTFIT_COLOURS,
    SKINS,
    Colour,
    _cloth,
    _darker,
    _different,
    _jitter,
    _pick,
    _rng,
)
from hardreid.data.synthetic.config import PATTERNS, SyntheticConfig


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
