"""Moved to ``hardreid.methods.generators.hpf``; this old path works for one release (a DeprecationWarning)."""

from .._deprecated import alias_module

alias_module(__name__, "hardreid.methods.generators.hpf")
