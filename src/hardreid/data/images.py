"""Reading image files with clear errors for broken ones."""

from __future__ import annotations

import os

from PIL import Image

from hardreid.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def is_image_name(name: str) -> bool:
    """True when ``name`` ends with one of :data:`IMAGE_EXTENSIONS` (any case)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_image(path: str | os.PathLike[str]) -> Image.Image:
    """Open ``path`` fully decoded as an RGB image.

    Unreadable, empty or truncated files raise :class:`UserError` naming the file.
    """
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = _reason(path, exc)
        raise UserError(
            f"cannot read image {os.fspath(path)}: {reason}. "
            "Replace or remove the file (expected a readable JPEG, PNG or BMP image)."
        ) from exc


def _reason(path: str | os.PathLike[str], exc: BaseException) -> str:
    """Short human reason for a failed read."""
    try:
        if os.path.getsize(path) == 0:
            return "the file is empty (0 bytes)"
    except OSError:
        return "the file does not exist or cannot be opened"
    text = str(exc).strip() or type(exc).__name__
    return text.replace(os.fspath(path), "").replace("''", "").strip(" :") or type(exc).__name__
