"""Moved to ``hardreid.methods`` (``contract``, ``compose``, ``registry``, ``bases.cluster_contrast``); this old
path works for one release (a DeprecationWarning)."""

from .._deprecated import warn_module

warn_module(__name__, "hardreid.methods")

from ..methods.bases.cluster_contrast import MEMORY_KINDS, ClusterContrast, build_cluster_memory  # noqa: E402
from ..methods.compose import ComposedMethod, Method, build_method, gather_step  # noqa: E402
from ..methods.contract import (BaseMethod, Batch, Component, EpochData, EpochMeans, LogitAdjuster,  # noqa: E402
                                StepContext, StepOutput)
from ..methods.registry import BASES, HARD_SAMPLES  # noqa: E402
from ..methods.registry import load_builtin as _register_builtin  # noqa: E402, F401

__all__ = ["BASES", "HARD_SAMPLES", "MEMORY_KINDS", "BaseMethod", "Batch", "ClusterContrast", "ComposedMethod",
           "Component", "EpochData", "EpochMeans", "LogitAdjuster", "Method", "StepContext", "StepOutput",
           "build_cluster_memory", "build_method", "gather_step"]
