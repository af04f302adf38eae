"""Moved to ``hardreid.methods`` (``generators/``: hpf, hpi, hng; ``addons/``: camera_proxy, mean_teacher); this
old path works for one release (a DeprecationWarning)."""

from .._deprecated import warn_module

warn_module(__name__, "hardreid.methods.generators or hardreid.methods.addons")

from . import camera_proxy, hng, hpf, hpi, mean_teacher  # noqa: E402, F401 - the moved modules, as the old package held them
