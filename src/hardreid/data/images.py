"""Reading image files with clear errors for broken ones."""

from __future__ import annotations

import errno
import os

import numpy as np
from PIL import Image

from hardreid.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
WIDE_GREY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit (and 32-bit integer) greyscale
MIN_IMAGE_SIDE = 8  # pixels: the smallest person crops of Market-1501 / CUHK03 / MSMT17 are several times larger


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` fully decoded as an 8-bit RGB image.

    16-bit greyscale (e.g. 16-bit PNG) is scaled to 8 bits (0..65535 -> 0..255); PIL's own conversion
    would clip it to white. Unreadable, empty or truncated files raise :class:`UserError` naming the file.
    """
    try:
        with Image.open(path) as img:
            if min(img.size) < MIN_IMAGE_SIDE:
                raise _TooSmall(img.size)
            img.load()
            if img.mode in WIDE_GREY_MODES:
                return _wide_grey_to_rgb(img)
            return img.convert("RGB")
    except _TooSmall as small:
        width, height = small.args[0]
        raise UserError(f"image {os.fspath(path)} is {width}x{height} pixels, below the {MIN_IMAGE_SIDE}-pixel minimum "
                        "side: it cannot show a person (a placeholder or a broken crop?). Remove the file") from None
    except Exception as exc:  # noqa: BLE001 - decoders raise many kinds of errors (OSError, SyntaxError, KeyError, ...)
        raise UserError(
            f"cannot read image {os.fspath(path)}: {_reason(path, exc)}. "
            "Replace or remove the file (expected a readable JPEG, PNG or BMP image)."
        ) from exc


class _TooSmall(Exception):
    """An image below MIN_IMAGE_SIDE (raised inside the reader, reported as a UserError)."""


def _wide_grey_to_rgb(img: Image.Image) -> Image.Image:
    """16-bit greyscale -> 8-bit RGB by value / 257 (65535 -> 255), rounded."""
    values = np.asarray(img, dtype=np.float64)
    grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _reason(path: str | os.PathLike[str], exc: BaseException) -> str:
    """A plain-words reason for a failed read, with the decoder's own words in brackets when they help."""
    try:
        if os.path.isdir(path):
            return "it is a folder, not an image file"
        if os.path.getsize(path) == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        return "the file does not exist or cannot be opened"
    if isinstance(exc, PermissionError) or getattr(exc, "errno", None) == errno.EACCES:
        return "no permission to read the file"
    if isinstance(exc, Image.DecompressionBombError):
        return f"the image is too large to decode safely ({exc})"
    text = str(exc).replace(os.fspath(path), "").replace("''", "").strip(" :")
    if "truncated" in text.lower():
        return "the file is truncated (an incomplete download or copy?)"
    if "cannot identify image file" in text:
        return "its content is not a JPEG, PNG or BMP image (damaged, or another format with an image extension)"
    detail = text or type(exc).__name__
    return f"the file is damaged or uses a variant of its format that cannot be decoded (decoder: {detail})"
