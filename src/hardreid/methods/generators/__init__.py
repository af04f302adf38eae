"""Hard-sample generators; each module registers itself (``registry.register_hard_samples``)."""

from . import hng, hpf, hpi  # noqa: F401 - imported for their side effect: registering the generators
