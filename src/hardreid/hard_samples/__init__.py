"""Hard-sample generators and add-ons; each module registers itself in ``methods.HARD_SAMPLES``."""

from . import camera_proxy, mean_teacher  # noqa: F401
