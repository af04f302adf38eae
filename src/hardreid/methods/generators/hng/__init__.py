"""Self-guided hard negative generation (SHNG, IJCAI 2022): ``method.hard_samples: [hng]``."""

from .component import HardNegativeGeneration

__all__ = ["HardNegativeGeneration"]
