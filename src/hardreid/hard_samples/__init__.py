"""Hard-sample generators; each module registers itself in ``training.methods.HARD_SAMPLES``."""

from . import hng  # noqa: F401
