"""``SyntheticConfig``, the size and randomness of the synthetic data set with its validation, and the fixed
choices every set shares: the views, the shirt patterns and the supersampling of the drawings.
"""

from __future__ import annotations

from dataclasses import dataclass

from hardreid.data.synthetic.colours import MAX_OUTFITS
from hardreid.errors import UserError


VIEWS = ("front", "back", "side")
PATTERNS = ("plain", "hstripes", "vstripes", "checks")
SUPERSAMPLE = 2


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
