"""Cluster Contrast (Dai et al. 2022) as a base method, and the cluster memory that ACFL's variants swap in.

``memory.kind`` picks the prototypes: momentum-updated cluster features (Cluster Contrast), the means of an
instance memory (ACFL Section 3.1) or of a limited queue (ACFL Table 10); all three live in ``memory/``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...config import Config, choices_of
from ...memory import ClusterMemory, InstanceMemory, QueueMemory
from ..contract import BaseMethod, EpochData, StepContext
from ..registry import register_base


MEMORY_KINDS = choices_of("memory.kind")


def build_cluster_memory(cfg: Config, data: EpochData, device: torch.device) -> ClusterMemory | InstanceMemory | QueueMemory:
    """The memory named by ``memory.kind``: Cluster Contrast's momentum prototypes, ACFL's instance memory
    (person features = means of M, ACFL Section 3.1) or ACFL's limited queue memory (Table 10)."""
    m = cfg.memory
    features, labels = data.features.to(device), data.labels.to(device)
    if m.kind == "momentum":
        return ClusterMemory.from_clusters(features, labels, data.num_clusters, m.temperature, m.momentum)
    if m.kind == "instance":
        return InstanceMemory(features, labels, data.num_clusters, normalize=m.normalize_person_features)
    assert m.kind == "queue", m.kind  # the config allows nothing else (MemoryConfig.kind)
    generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + data.epoch)
    return QueueMemory(features, labels, data.num_clusters, m.queue_ratio,
                       normalize=m.normalize_person_features, generator=generator)


@register_base("cluster_contrast")
class ClusterContrast(BaseMethod):
    """Cluster Contrast (Dai et al. 2022): InfoNCE against cluster prototypes.

    ``memory.kind`` picks the prototypes: momentum-updated (Cluster Contrast, default), the means of an
    instance memory (ACFL) or of a limited queue (ACFL Table 10).
    """

    name = "cluster_contrast"
    memory: ClusterMemory | InstanceMemory | QueueMemory

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)  # memory.kind: checked with the config

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        self.memory = build_cluster_memory(self.cfg, data, self.device)

    def prototypes(self) -> torch.Tensor:
        return self.memory.prototypes

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logits = self.cluster_logits(ctx.features, ctx.batch.labels)
        return {"contrast": torch.nn.functional.cross_entropy(logits, ctx.batch.labels)}

    def after_step(self, ctx: StepContext) -> None:
        if isinstance(self.memory, ClusterMemory):
            self.memory.update(ctx.features, ctx.batch.labels)
        else:
            self.memory.update(ctx.features, ctx.batch.labels, ctx.batch.indices)

    def shared_state(self) -> dict[str, Any]:
        return {"memory": {k: v for k, v in vars(self.memory).items() if isinstance(v, torch.Tensor)}}
