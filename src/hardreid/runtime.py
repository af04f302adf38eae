"""Where a run computes and what its BatchNorm normalises: two small helpers that the trainer, the preflight
checks, resuming, the command line and the library all need, kept here beside ``distributed.py`` so that none of
them imports the trainer for them (docs/architecture.md, "Layers")."""

from __future__ import annotations

import torch

from . import distributed
from .config import Config


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N`` for one process."""
    return distributed.single_device(name)


def batchnorm_group(cfg: Config, world: int) -> int:
    """How many images each BatchNorm normalises together in training mode (the setting results depend on)."""
    if cfg.train.sync_bn and world > 1:
        return cfg.data.batch_size
    share = cfg.data.batch_size // world
    return cfg.train.bn_chunk if 0 < cfg.train.bn_chunk < share else share


__all__ = ["resolve_device", "batchnorm_group"]
