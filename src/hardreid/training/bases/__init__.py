"""Moved to ``hardreid.methods.bases``; this old path works for one release (a DeprecationWarning)."""

from ..._deprecated import warn_module

warn_module(__name__, "hardreid.methods.bases")

from . import ice, spcl, strong_baseline  # noqa: E402, F401 - the moved modules, as the old package held them
