"""Moved to ``hardreid.methods.generators.hng``; this old path works for one release (a DeprecationWarning)."""

from ..._deprecated import warn_module

warn_module(__name__, "hardreid.methods.generators.hng")

from ...methods.generators.hng import HardNegativeGeneration  # noqa: E402

__all__ = ["HardNegativeGeneration"]
