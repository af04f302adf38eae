"""Training: the epoch loop (trainer.py) and methods composed of a base and hard-sample generators (methods.py)."""

from typing import Any

from .methods import (BASES, HARD_SAMPLES, BaseMethod, Batch, ComposedMethod, Component, EpochData, Method,
                      StepContext, StepOutput, build_method)
from .trainer import RunHooks, Trainer, TrainResult, train

_MOVED = {"model_from_config": "hardreid.models", "resolve_device": "hardreid.runtime"}


def __getattr__(name: str) -> Any:
    """Old import paths (``hardreid.training.model_from_config``): they work for one release, with a warning."""
    if name in _MOVED:
        from .._deprecated import moved

        return moved(__name__, name, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["BASES", "HARD_SAMPLES", "BaseMethod", "Batch", "ComposedMethod", "Component", "EpochData", "Method",
           "StepContext", "StepOutput", "build_method", "RunHooks", "Trainer", "TrainResult", "train"]
