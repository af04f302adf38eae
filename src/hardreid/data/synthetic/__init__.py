"""Deterministic synthetic multi-camera re-ID data set in Market-1501 layout.

Stylised pedestrians (body shape, skin, hair, clothing colours and patterns,
accessories, shoes) are drawn with PIL and seen by cameras that each have their
own illumination, colour cast, background, preferred viewpoint, framing, blur
and noise. Groups of "look-alike" identities share almost everything, so the
task stays non-trivial for clustering. Everything is derived from
``SyntheticConfig.seed`` through numpy Generators: two runs give the same bytes.

The package's modules, each importing only those above it: ``colours`` (palettes, seeded generators),
``config`` (``SyntheticConfig``), ``people`` (identities), ``cameras`` (camera styles and backgrounds),
``drawing`` (one crop of a person seen by a camera) and ``writer`` (the plan of every image, the files and
``generate_synthetic``).
"""

from __future__ import annotations

from hardreid.data.synthetic.cameras import BACKGROUND_GREY, Camera
from hardreid.data.synthetic.colours import HAIRS, MAX_OUTFITS, NEUTRALS, OUTFIT_COLOURS, SKINS, Colour
from hardreid.data.synthetic.config import PATTERNS, SUPERSAMPLE, VIEWS, SyntheticConfig
from hardreid.data.synthetic.drawing import Pose
from hardreid.data.synthetic.people import Person
from hardreid.data.synthetic.writer import FORMAT_VERSION, README_MARKER, SPLIT_DIRS, generate_synthetic

__all__ = [
    "BACKGROUND_GREY",
    "FORMAT_VERSION",
    "HAIRS",
    "MAX_OUTFITS",
    "NEUTRALS",
    "OUTFIT_COLOURS",
    "PATTERNS",
    "README_MARKER",
    "SKINS",
    "SPLIT_DIRS",
    "SUPERSAMPLE",
    "VIEWS",
    "Camera",
    "Colour",
    "Person",
    "Pose",
    "SyntheticConfig",
    "generate_synthetic",
]
