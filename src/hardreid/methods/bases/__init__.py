"""Base methods (memory + loss); each module registers itself (``registry.register_base``)."""

from . import cluster_contrast, ice, spcl, strong_baseline  # noqa: F401 - imported for their side effect: registering
