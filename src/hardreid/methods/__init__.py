"""Methods: everything a method is, in one package (docs/architecture.md, "Adding a method").

- ``contract.py``: the hooks of a method's parts (``Component``, ``BaseMethod``) and what they are given
  (``Batch``, ``EpochData``, ``StepContext``);
- ``compose.py``: ``ComposedMethod``, a base and its components as the trainer runs them; ``build_method``;
- ``registry.py``: names -> builders (``method.base``, ``method.hard_samples``); each module below registers itself;
- ``bases/``: memory + loss (Cluster Contrast, SpCL, ICE, the strong baseline);
- ``generators/``: hard-sample generators (ACFL's HPF, HPI and instance alignment; hard negative generation);
- ``addons/``: components that are not generators (ICE's camera proxies, a mean teacher).
"""

from .compose import ComposedMethod, Method, build_method, gather_step
from .contract import BaseMethod, Batch, Component, EpochData, EpochMeans, LogitAdjuster, StepContext, StepOutput
from .registry import BASES, HARD_SAMPLES, register_base, register_hard_samples

__all__ = ["BASES", "HARD_SAMPLES", "BaseMethod", "Batch", "ComposedMethod", "Component", "EpochData", "EpochMeans",
           "LogitAdjuster", "Method", "StepContext", "StepOutput", "build_method", "gather_step", "register_base",
           "register_hard_samples"]
