"""The output policy of every hardreid command: what a command may write into, and what it may delete.

A command writes only into what it owns:

- a path that does not exist yet (it creates it; a folder gets a marker file, ``.hardreid-output.json``,
  naming the command, the hardreid version and the files the command wrote there);
- a folder holding that command's marker (an earlier or unfinished output of the same command: it is
  resumed or refreshed), or a folder an earlier hardreid version wrote (recognised by the command's own
  files, e.g. a feature manifest or a run's checkpoints), which then gets the marker;
- an empty folder;
- an existing file or folder when the user passes ``--overwrite``: hardreid then replaces only the files
  it writes, by name, and deletes nothing else.

A command deletes only what its marker lists. An output that is one of the command's inputs, or lies
inside an input folder, is refused in one line, ``--overwrite`` or not: no command ever writes over what
it reads. Every refusal is a :class:`~hardreid.errors.UserError` that names the path and says what to do.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from .errors import UserError, printable
from .files import atomic_write_text, check_writable_dir, check_writable_file
from .version import __version__

MARKER = ".hardreid-output.json"
MARKER_FORMAT = "hardreid-output/1"
_SHOWN = 3  # entries named in a refusal


def _real(path: str | os.PathLike[str]) -> Path:
    """``path`` made absolute with every symbolic link resolved (also for a path that does not exist yet)."""
    return Path(os.path.realpath(os.path.expanduser(os.fspath(path))))


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def refuse_input_overlap(output: str | os.PathLike[str], option: str, inputs: Mapping[str, str | os.PathLike[str] | None],
                         containing: bool = False) -> None:
    """Refuse ``output`` when it is one of ``inputs`` (option name -> path) or lies inside an input folder, and with
    ``containing`` (an output folder, where the command writes and may delete its own entries) also when an input
    lies inside it.
    """
    out = _real(output)
    for name, path in inputs.items():
        if path is None or not os.fspath(path):
            continue
        source = _real(path)
        if out == source:
            raise UserError(f"{option} {printable(output)} is the same path as {name} {printable(path)}: hardreid never writes over what it "
                            f"reads; choose another {option}")
        if source.is_dir() and _is_within(out, source):
            raise UserError(f"{option} {printable(output)} lies inside {name} {printable(path)}: hardreid never writes into what it reads; "
                            f"choose an {option} outside {printable(path)}")
        if containing and _is_within(source, out):
            raise UserError(f"{name} {printable(path)} lies inside {option} {printable(output)}: hardreid never writes into a folder around what "
                            f"it reads; choose an {option} beside {printable(path)}, not above it")


def claim_file(path: str | os.PathLike[str], option: str, *, inputs: Mapping[str, str | os.PathLike[str] | None] = {},
               overwrite: bool = False) -> Path:
    """Check, before any work, that the command may write the file ``path`` (given with ``option``).

    Allowed: a new file, a special file such as ``/dev/stdout`` (written in place), or an existing regular
    file with ``overwrite``. Never one of ``inputs``.
    """
    check_writable_file(path, option)
    refuse_input_overlap(path, option, inputs)
    target = Path(path).expanduser()
    if target.is_file() and not overwrite:
        raise UserError(f"{option} {printable(path)} already exists: pass --overwrite to replace it, or choose another file name")
    return target


@dataclass
class OutputFolder:
    """A folder a command owns: it may write there, and delete only the entries its marker lists."""

    path: Path
    command: str
    files: list[str] = field(default_factory=list)  # entries (relative names) this command wrote here
    adopted: bool = False  # written by the user's --overwrite consent, not created by this command

    @property
    def marker(self) -> Path:
        return self.path / MARKER

    def owns(self, name: str) -> bool:
        return name in self.files

    def record(self, *names: str) -> None:
        """Add ``names`` to the entries the marker lists (before they are written, so that an interrupted
        command can clean them up when it runs again)."""
        new = [name for name in names if name not in self.files]
        if new:
            self.files.extend(new)
            self._write_marker()

    def remove(self, name: str) -> bool:
        """Delete the entry ``name`` (file or folder) if the marker lists it; True when something was deleted."""
        if not self.owns(name):
            return False
        target = self.path / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
        else:
            return False
        return True

    def unowned(self, *names: str) -> list[str]:
        """Those of ``names`` that exist here and are not the command's own."""
        return [name for name in names if (self.path / name).exists() and not self.owns(name)]

    def _write_marker(self) -> None:
        atomic_write_text(self.marker, json.dumps({"format": MARKER_FORMAT, "command": self.command,
                                                   "version": __version__, "files": self.files}, indent=1) + "\n")


def read_marker(folder: str | os.PathLike[str]) -> dict | None:
    """The marker in ``folder``, or None when there is none; a damaged marker is an error naming the file."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {printable(path)}: {exc}. It marks a folder hardreid wrote; delete it only if you are sure "
                        "the folder's other files are yours") from None
    if not isinstance(marker, dict) or marker.get("format") != MARKER_FORMAT or not isinstance(marker.get("command"), str) \
            or not isinstance(marker.get("files"), list) or not all(isinstance(f, str) for f in marker["files"]):
        raise UserError(f"{printable(path)} is not a hardreid output marker (expected format {MARKER_FORMAT} with command and files)")
    return marker


def _entries(folder: Path) -> list[str]:
    return sorted(entry.name for entry in folder.iterdir())


def claim_folder(path: str | os.PathLike[str], command: str, option: str = "--output", *,
                 inputs: Mapping[str, str | os.PathLike[str] | None] = {}, overwrite: bool = False,
                 earlier_version: Callable[[Path], list[str]] | None = None, work_names: tuple[str, ...] = ()) -> OutputFolder:
    """Check, before any work, that ``command`` may write into the folder ``path``, and take it.

    ``earlier_version(folder)`` recognises an output of this command from before markers existed and returns
    the entries that belong to it (or an empty list). ``work_names``: entries the command creates and later deletes
    as a whole (e.g. extract's ``shards/``); one that exists and is not the command's own is refused before the
    folder is marked. Returns the folder with the entries it owns; a new or empty folder is created and marked at once.
    """
    check_writable_dir(path, option)
    refuse_input_overlap(path, option, inputs, containing=True)
    folder = Path(path).expanduser()
    if not folder.exists():
        folder.mkdir(parents=True)
        return _marked(folder, command, [])
    marker = read_marker(folder)
    if marker is not None:
        if marker["command"] == command:
            return OutputFolder(folder, command, list(marker["files"]))
        if not overwrite:
            raise UserError(f"{option} {printable(path)} holds the output of 'hardreid {marker['command']}', not of "
                            f"'hardreid {command}': choose another {option}, or pass --overwrite to write into it "
                            "(hardreid then replaces only the files it writes)")
        _refuse_foreign_work_names(folder, command, work_names, [])
        return _marked(folder, command, [], adopted=True)
    entries = [name for name in _entries(folder) if name != MARKER]
    if not entries:
        return _marked(folder, command, [])
    earlier = earlier_version(folder) if earlier_version else []
    if earlier:
        return _marked(folder, command, earlier)
    if not overwrite:
        shown = ", ".join(printable(e) for e in entries[:_SHOWN]) + (f" and {len(entries) - _SHOWN} more" if len(entries) > _SHOWN else "")
        raise UserError(f"{option} {printable(path)} is a folder hardreid did not write ({len(entries)} entries: {shown}): choose a "
                        f"new or empty folder, or pass --overwrite to write into it (hardreid then replaces only the "
                        "files it writes and deletes nothing)")
    _refuse_foreign_work_names(folder, command, work_names, [])
    return _marked(folder, command, [], adopted=True)


def _refuse_foreign_work_names(folder: Path, command: str, names: tuple[str, ...], owned: list[str]) -> None:
    for name in names:
        if (folder / name).exists() and name not in owned:
            raise UserError(f"{printable(folder / name)} exists and was not written by 'hardreid {command}', which needs that name "
                            "for its work files: move it away or choose another --output")


def _marked(folder: Path, command: str, files: list[str], adopted: bool = False) -> OutputFolder:
    owned = OutputFolder(folder, command, list(files), adopted)
    owned._write_marker()
    return owned
