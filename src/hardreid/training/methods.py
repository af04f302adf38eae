"""Methods: what a training step computes. The trainer owns the loop (STYLE.md).

A method receives the epoch's pseudo labels in ``start_epoch``, computes the
loss of one P x K batch in ``training_step`` and updates its memory in
``after_step`` (called after the optimiser step, never inside backward).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from ..config import Config
from ..errors import UserError
from ..memory import ClusterMemory


@dataclass
class Batch:
    images: torch.Tensor
    labels: torch.Tensor  # pseudo labels 0..Nc-1
    camids: torch.Tensor
    indices: torch.Tensor  # positions in the clustered training list


@dataclass
class EpochData:
    """Everything known before an epoch's steps: features of all training images and their pseudo labels."""

    epoch: int
    features: torch.Tensor  # N x D, L2-normalised
    labels: torch.Tensor  # N, -1 = outlier
    camids: torch.Tensor  # N
    num_clusters: int


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    features: torch.Tensor | None = None  # batch features, for the memory update
    batch: Batch | None = None


class Method:
    """Interface of a training method; see module docstring."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device

    def start_epoch(self, data: EpochData) -> None:
        raise NotImplementedError

    def training_step(self, model: nn.Module, batch: Batch) -> StepOutput:
        raise NotImplementedError

    def after_step(self, out: StepOutput) -> None:
        """State changes after the optimiser step (memory updates)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ClusterContrast(Method):
    """Cluster Contrast (Dai et al. 2022): InfoNCE against momentum-updated cluster prototypes."""

    memory: ClusterMemory

    def start_epoch(self, data: EpochData) -> None:
        features = data.features.to(self.device)
        labels = data.labels.to(self.device)
        self.memory = ClusterMemory.from_clusters(features, labels, data.num_clusters,
                                                  self.cfg.memory.temperature, self.cfg.memory.momentum)

    def training_step(self, model: nn.Module, batch: Batch) -> StepOutput:
        features = model(batch.images)
        loss = self.memory.loss(features, batch.labels)
        return StepOutput(loss=loss, logs={"loss_contrast": loss.item()}, features=features, batch=batch)

    def after_step(self, out: StepOutput) -> None:
        self.memory.update(out.features, out.batch.labels)


BASES: dict[str, Callable[[Config, torch.device], Method]] = {
    "cluster_contrast": ClusterContrast,
}


def build_method(cfg: Config, device: torch.device) -> Method:
    """The configured base method (hard-sample generators are added by later modules)."""
    if cfg.method.base not in BASES:
        raise UserError(f"unknown method.base '{cfg.method.base}'; choose one of {', '.join(BASES)}")
    if cfg.method.hard_samples:
        raise UserError(f"method.hard_samples {cfg.method.hard_samples} are not available in this version; leave the list empty")
    return BASES[cfg.method.base](cfg, device)
