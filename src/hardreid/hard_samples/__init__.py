"""Hard-sample generators; each module registers itself in ``hardreid.training.methods.HARD_SAMPLES``."""

from . import hpf, hpi  # noqa: F401
