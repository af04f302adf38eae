"""Hard-sample generators and add-ons; each module registers itself in ``hardreid.training.methods.HARD_SAMPLES``."""

from . import camera_proxy, hng, hpf, hpi, mean_teacher  # noqa: F401 - imported to register the components
