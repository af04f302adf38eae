"""Cluster Contrast's memory: one prototype per pseudo identity.

Differences from the reference code, on purpose (STYLE.md): the update is an
explicit call after the optimiser step, not a side effect of a custom
backward, so extra backward passes (ACFL's ascent steps) cannot corrupt it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..precision import float32


@float32
def cluster_centroids(features: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean feature of each cluster (labels < 0 ignored), L2-normalised (Nc x D)."""
    keep = labels >= 0
    sums = torch.zeros(num_clusters, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, labels[keep], features[keep])
    return F.normalize(sums, dim=1)


@torch.no_grad()
def momentum_update_rows_(table: torch.Tensor, rows: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """table[r] <- m table[r] + (1 - m) f, renormalised, one feature after another (a row may repeat), in place."""
    features = features.detach().to(table.dtype)
    for feature, r in zip(features, rows.tolist()):
        row = momentum * table[r] + (1.0 - momentum) * feature
        table[r] = row / row.norm()


class ClusterMemory:
    """Prototypes C (Nc x D, unit rows), InfoNCE against them, momentum update."""

    @float32
    def __init__(self, prototypes: torch.Tensor, temperature: float = 0.05, momentum: float = 0.1) -> None:
        self.prototypes = F.normalize(prototypes.detach().clone(), dim=1)
        self.temperature = temperature
        self.momentum = momentum

    @classmethod
    def from_clusters(cls, features: torch.Tensor, labels: torch.Tensor, num_clusters: int, temperature: float = 0.05,
                      momentum: float = 0.1) -> "ClusterMemory":
        """Mean initialisation from all (non-outlier) training features."""
        return cls(cluster_centroids(features, labels, num_clusters), temperature, momentum)

    @property
    def num_clusters(self) -> int:
        return self.prototypes.shape[0]

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """q . c_a / tau for every prototype (B x Nc); prototypes are constants."""
        return features @ self.prototypes.t() / self.temperature

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """InfoNCE over all prototypes (Cluster Contrast Eq. 2)."""
        return F.cross_entropy(self.logits(features), labels)

    @torch.no_grad()
    @float32
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """c_y <- m c_y + (1 - m) f, renormalised, one instance after another (as the reference)."""
        momentum_update_rows_(self.prototypes, labels, features, self.momentum)

    def state_dict(self) -> dict:
        return {"prototypes": self.prototypes, "temperature": self.temperature, "momentum": self.momentum}
