"""Old import paths kept for one release (see CHANGELOG.md): each warns with a DeprecationWarning that names the
new path, then gives the object that now lives there. Nothing in hardreid itself uses an old path.

``moved`` serves a module's ``__getattr__`` (one name moved); ``alias_module`` makes a whole old module the new
one (``sys.modules``), so that an old ``import`` and the new one give the same module object (and the same
classes, registries and monkeypatch targets)."""

from __future__ import annotations

import importlib
import sys
import warnings
from typing import Any


def _warn(old: str, new: str, stacklevel: int) -> None:
    warnings.warn(f"{old} is deprecated: use {new} (the old path will be removed in the next release)",
                  DeprecationWarning, stacklevel=stacklevel + 1)


def moved(module: str, name: str, new_module: str) -> Any:
    """``getattr(new_module, name)``, after warning that ``module.name`` moved there (call from ``__getattr__``)."""
    _warn(f"{module}.{name}", f"{new_module}.{name}", stacklevel=3)
    return getattr(importlib.import_module(new_module), name)


def warn_module(old: str, new: str) -> None:
    """Warn that the module being imported as ``old`` moved to ``new`` (call at the top level of the old module)."""
    _warn(old, new, stacklevel=3)


def alias_module(old: str, new: str) -> None:
    """Replace the module being imported as ``old`` by ``new`` (call at the top level of the old module's file)."""
    _warn(old, new, stacklevel=3)
    sys.modules[old] = importlib.import_module(new)
