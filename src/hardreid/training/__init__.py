"""Training: the epoch loop (trainer.py), its checkpoints, resuming, preflight checks and run files. What a step
computes is the method's (``hardreid.methods``)."""

from typing import Any

from .trainer import RunHooks, Trainer, TrainResult, train

# old names of this package -> where they live now (they work for one release, with a DeprecationWarning)
_MOVED = {"model_from_config": "hardreid.models", "resolve_device": "hardreid.runtime",
          **{name: "hardreid.methods" for name in ("BASES", "HARD_SAMPLES", "BaseMethod", "Batch", "ComposedMethod",
                                                   "Component", "EpochData", "Method", "StepContext", "StepOutput",
                                                   "build_method")}}


def __getattr__(name: str) -> Any:
    """Old import paths (``hardreid.training.model_from_config``, ``hardreid.training.Batch``): they work for one
    release, with a warning."""
    if name in _MOVED:
        from .._deprecated import moved

        return moved(__name__, name, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RunHooks", "Trainer", "TrainResult", "train"]
