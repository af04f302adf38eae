"""Self-guided hard negative generation (SHNG, IJCAI 2022): ``method.hard_samples: [hng]``."""

from ...training.methods import HARD_SAMPLES
from .component import HardNegativeGeneration

HARD_SAMPLES["hng"] = HardNegativeGeneration

__all__ = ["HardNegativeGeneration"]
