"""Training: the epoch loop (trainer.py) and methods composed of a base and hard-sample generators (methods.py)."""

from .methods import (BASES, HARD_SAMPLES, BaseMethod, Batch, ComposedMethod, Component, EpochData, Method,
                      StepContext, StepOutput, build_method)
from .trainer import Trainer, TrainResult, model_from_config, resolve_device, train

__all__ = ["BASES", "HARD_SAMPLES", "BaseMethod", "Batch", "ComposedMethod", "Component", "EpochData", "Method",
           "StepContext", "StepOutput", "build_method", "Trainer", "TrainResult", "model_from_config",
           "resolve_device", "train"]
