"""Writing output files safely: atomic replacement, normal file modes, writable-path checks.

Every file hardreid writes into a run directory (checkpoints, metrics, config.yaml) goes through
:func:`atomic_write`: the bytes go to a temporary file next to the target, named
``.<target name>.<random>.hardreid-tmp``, which is flushed to disk and then renamed over the target. A
crash or kill at any moment leaves either the old file or the new one, never a half-written one; the
only possible leftover is a temporary file of that recognisable pattern, which
:func:`remove_stale_temp_files` deletes when a run starts or resumes. Files are created with mode
0666 minus the umask (as ``open`` does; ``tempfile.mkstemp`` would give 0600).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Callable

if TYPE_CHECKING:
    import numpy as np

from .errors import UserError, printable

TEMP_SUFFIX = ".hardreid-tmp"
PAUSE_ENV = "HARDREID_TEST_PAUSE_WRITE"
_writes: Counter[str] = Counter()
_WRITE_FAILURE = re.compile(r"writ|space|fwrite|ferror|disk|quota|errno", re.IGNORECASE)


def temp_path_for(path: Path) -> Path:
    """A fresh temporary name next to ``path``: ``.<name>.<random>.hardreid-tmp``."""
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(handle)`` on a temporary file, flush it to disk, then rename it over ``path``.

    An error (disk full, no permission) removes the temporary file and raises a UserError naming
    ``path``; an interruption (KeyboardInterrupt, SIGTERM) removes it too and propagates. A target that
    exists and is not a regular file (``/dev/stdout``, a pipe, a device) is written in place, never
    replaced.
    """
    path = Path(path)
    if path.exists() and not path.is_file():
        _write_in_place(path, write)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # mode 0666 & ~umask
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            _pause_for_tests(path)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        _raise_write_error(path, exc)
    finally:
        if tmp.exists():
            tmp.unlink()


def _raise_write_error(path: Path, exc: BaseException) -> None:
    """A failed write as one line naming the file: an OSError, or a library's RuntimeError around one
    (``torch.save``: "PytorchStreamWriter failed writing file", faiss: "fwrite ... failed")."""
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc)
    elif _WRITE_FAILURE.search(str(exc)):
        reason = str(exc).strip().splitlines()[0][:200]
    else:
        raise exc
    raise UserError(f"cannot write {path}: {reason}. Check free disk space and permissions of {path.parent}") from None


def atomic_write_path(path: str | os.PathLike[str], write: Callable[[Path], None]) -> None:
    """Like :func:`atomic_write` for writers that take a file name, not a handle (``faiss.write_index``):
    ``write(temporary_path)``, then flush that file to disk and rename it over ``path``."""
    path = Path(path)
    if path.exists() and not path.is_file():
        raise UserError(f"cannot write {path}: it exists and is not a regular file")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        _pause_for_tests(path)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        _raise_write_error(path, exc)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_json(path: str | os.PathLike[str], value: object, indent: int | None = 1) -> None:
    atomic_write_text(path, json.dumps(value, indent=indent) + "\n")


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    import numpy

    atomic_write(path, lambda handle: numpy.save(handle, array))


def atomic_save_image(path: str | os.PathLike[str], image: object, **options: object) -> None:
    """A PIL image, in the format its file name's extension names (``.png``, ``.jpg``, ...)."""
    from PIL import Image

    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None:
        raise UserError(f"cannot write {path}: unknown picture extension {suffix!r} (use .png or .jpg)")
    atomic_write(path, lambda handle: image.save(handle, format=fmt, **options))  # type: ignore[attr-defined]


def atomic_save_figure(path: str | os.PathLike[str], figure: object, **options: object) -> None:
    """A matplotlib figure, in the format its file name's extension names."""
    fmt = Path(path).suffix.lower().lstrip(".") or "png"
    atomic_write(path, lambda handle: figure.savefig(handle, format=fmt, **options))  # type: ignore[attr-defined]


def _write_in_place(path: Path, write: Callable[[BinaryIO], None]) -> None:
    try:
        with open(path, "wb") as handle:
            write(handle)
    except (OSError, RuntimeError) as exc:
        _raise_write_error(path, exc)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def remove_stale_temp_files(folder: str | os.PathLike[str], older_patterns: tuple[str, ...] = ()) -> list[Path]:
    """Delete our own leftover temporary files (``.*.hardreid-tmp``, plus ``older_patterns``) in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = sorted({p for pattern in (f".*{TEMP_SUFFIX}", *older_patterns) for p in folder.glob(pattern) if p.is_file()})
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _pause_for_tests(path: Path) -> None:
    """Test hook for the kill tests: ``HARDREID_TEST_PAUSE_WRITE=NAME:N`` stops the N-th write of a file
    named NAME after its bytes are written and before the rename, and says so on stderr."""
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if path.name != name:
        return
    _writes[name] += 1
    if _writes[name] == int(count or 1):
        print(f"HARDREID_TEST_PAUSED {path}", file=sys.stderr, flush=True)
        time.sleep(3600)


# -- checks before any work starts --------------------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(".")


def check_writable_dir(path: str | os.PathLike[str], what: str) -> None:
    """Raise a UserError unless ``path`` is (or can be created as) a writable folder; creates nothing."""
    text = os.fspath(path)
    if not text.strip():
        raise UserError(f"{what} is empty: give a folder name")
    path = Path(text).expanduser()
    existing = _nearest_existing(path)
    if not existing.is_dir():
        raise UserError(f"{what} {printable(path)}: {printable(existing)} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {printable(path)}: no permission to write in {printable(existing)}")


def check_writable_file(path: str | os.PathLike[str], what: str) -> None:
    """Raise a UserError unless a file can be written at ``path`` (its folder may not exist yet); creates nothing."""
    text = os.fspath(path)
    if not text.strip():
        raise UserError(f"{what} is empty: give a file name")
    path = Path(text).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {printable(path)} is a folder: give a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"{what} {printable(path)}: no permission to write this file")
    check_writable_dir(path.parent, what)
