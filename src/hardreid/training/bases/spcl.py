"""Moved to ``hardreid.methods.bases.spcl``; this old path works for one release (a DeprecationWarning)."""

from ..._deprecated import alias_module

alias_module(__name__, "hardreid.methods.bases.spcl")
