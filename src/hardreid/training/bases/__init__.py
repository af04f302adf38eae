"""Base methods beyond Cluster Contrast; each module registers itself in ``methods.BASES``."""

from . import ice, spcl, strong_baseline  # noqa: F401 - imported for their side effect: registering the bases
