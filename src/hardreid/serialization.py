"""Reading ``.pth`` files without running code from them.

A ``.pth`` file is a pickle, and a pickle can call any function while it is read (``os.system``, ...).
Every file hardreid reads with torch (checkpoints, backbone weights) goes through :func:`load_pth`:

1. the file's pickle is scanned, without running it, for the Python objects it would build; anything
   beyond what ``torch.load(weights_only=True)`` accepts (tensors, dicts, lists, tuples, numbers,
   strings) and the caller's explicit ``allowed`` list is refused with one line naming those objects;
2. it is then read with ``torch.load(weights_only=True)``, which builds nothing else either.

Errors are one line and never suggest switching the weights-only mode off.

Backbone weights files may hold a few globals more, :data:`WEIGHTS_FILE_GLOBALS`: numpy numbers and arrays
(:data:`NUMPY_GLOBALS`; published fine-tuned models store ``best_mAP`` as one) and the ``argparse.Namespace`` of the
training command that DINO-style pre-training checkpoints pickle as ``args`` (PASS, TransReID-SSL: ``main_dino.py``
saves ``{"student", "teacher", "optimizer", "epoch", "args", ...}``). It is a plain attribute container; the
values it holds are pickled objects of their own and scanned like any other. hardreid's checkpoints allow no
such class.

:func:`check_plain` is the other side: a checkpoint is refused at save time when a component puts in
something that step 2 would not read back.
"""

from __future__ import annotations

import argparse
import os
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import UserError

_NUMPY_CORE = np._core.multiarray  # numpy >= 2; files written with numpy 1 name numpy.core.multiarray
#: numpy arrays and scalars, as pickled by numpy (``_reconstruct``, ``scalar``, the dtypes of numbers): hardreid's
#: v1 checkpoints hold them, and so do published re-ID models (e.g. ``best_mAP`` as a numpy float). Rebuilding an
#: array or a number runs no code of the file's choosing.
NUMPY_GLOBALS: list[Any] = [np.ndarray, np.dtype, _NUMPY_CORE._reconstruct, _NUMPY_CORE.scalar,
                            (_NUMPY_CORE._reconstruct, "numpy.core.multiarray._reconstruct"),
                            (_NUMPY_CORE.scalar, "numpy.core.multiarray.scalar"),
                            *(type(np.dtype(code)) for code in ("u4", "i4", "i8", "f4", "f8", "?"))]
#: The only globals a backbone weights file may hold beyond tensors and containers (see the module doc).
WEIGHTS_FILE_GLOBALS: tuple[Any, ...] = (argparse.Namespace, *NUMPY_GLOBALS)
SCALARS = (str, bytes, int, float, bool, type(None), torch.dtype, torch.device, torch.Size)
_TORCH_ADVICE = re.compile(r"weights.only|trusted source|torch\.load|WeightsUnpickler|pytorch\.org|file an issue|"
                           r"In PyTorch 2\.6|add_safe_globals|safe_globals", re.IGNORECASE)


def _global_name(entry: Any) -> str:
    if isinstance(entry, tuple):
        return entry[1]
    return f"{entry.__module__}.{entry.__qualname__}"


def load_pth(path: str | os.PathLike[str], what: str, allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with one-line errors naming ``what`` and ``path``.

    ``allowed``: extra globals (objects, or ``(object, "module.name")`` pairs) the file may hold.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder, expected a .pth file")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist")
    extra = _foreign_globals(path, {_global_name(g) for g in allowed})
    if extra:
        raise UserError(f"refusing to load {what} {path}: it would build Python objects that no {what} holds "
                        f"({', '.join(extra[:5])}{', ...' if len(extra) > 5 else ''}), which can run code; nothing "
                        "from it was run. Use a file written by hardreid / torch.save of tensors")
    try:
        with torch.serialization.safe_globals(list(allowed)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols of foreign files
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file raises many kinds of errors
        raise UserError(f"cannot read {what} {path}: {_reason(exc)}") from None


def _foreign_globals(path: Path, allowed: set[str]) -> list[str]:
    """Globals of a zip-format torch file outside the weights-only set and ``allowed`` (scanned, not run)."""
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - not a zip-format torch file: torch.load (weights-only) refuses it below
        return []
    return sorted(set(found) - allowed)


def _reason(exc: BaseException) -> str:
    """The useful part of a torch.load error, without its advice to load unsafely."""
    text = str(exc)
    blocked = re.search(r"unsupported GLOBAL (\S+)|but got <class '([^']+)'>", text)
    if blocked:
        return f"it would build the Python object {blocked.group(1) or blocked.group(2)}, which no such file holds; nothing was run"
    if re.search(r"Unsupported operand|Expected input to be a checkpoint|invalid load key|could not find|"
                 r"failed finding central directory|not a zip", text, re.IGNORECASE):
        return "it is not a file written by torch.save, or it is damaged"
    lines = [line.strip() for line in text.splitlines() if line.strip() and not _TORCH_ADVICE.search(line)]
    detail = lines[0] if lines else type(exc).__name__
    return f"not a readable PyTorch file ({detail})"


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError if ``obj`` holds anything but tensors, containers, numbers and strings.

    Such a checkpoint could not be read back with ``weights_only=True``; finding it at save time points at
    the component that put it there (a programming error, not a user error).
    """
    kind = type(obj)
    if kind in (dict, OrderedDict):
        for key, value in obj.items():
            check_plain(key, where)
            check_plain(value, f"{where}[{key!r}]")
    elif kind in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    elif not (kind in SCALARS or isinstance(obj, torch.Tensor)):  # exact types: a numpy float is a float subclass
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; checkpoints hold only tensors, "
                        "containers, numbers and strings (convert it, e.g. numpy arrays with torch.from_numpy)")
