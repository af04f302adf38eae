"""Training: the epoch loop, methods and run files."""

from .methods import BASES, Batch, EpochData, Method, StepOutput, build_method
from .trainer import Trainer, TrainResult, model_from_config, resolve_device, train

__all__ = ["BASES", "Batch", "EpochData", "Method", "StepOutput", "build_method", "Trainer", "TrainResult",
           "model_from_config", "resolve_device", "train"]
