"""Cluster Contrast's memory: one prototype per pseudo identity.

Differences from the reference code, on purpose (docs/architecture.md, "Conventions"): the update is an
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


def occurrence_rank(rows: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same value (0 for a first occurrence)."""
    n = rows.numel()
    order = torch.argsort(rows, stable=True)
    ranked = rows[order]
    position = torch.arange(n, device=rows.device)
    first = torch.ones(n, dtype=torch.bool, device=rows.device)
    first[1:] = ranked[1:] != ranked[:-1]
    start = torch.cummax(torch.where(first, position, torch.zeros_like(position)), dim=0).values
    rank = torch.empty_like(position)
    rank[order] = position - start
    return rank


@torch.no_grad()
def momentum_update_rows_(table: torch.Tensor, rows: torch.Tensor, features: torch.Tensor, momentum: float) -> None:
    """table[r] <- m table[r] + (1 - m) f, renormalised, one feature after another (a row may repeat), in place.

    Vectorised in rounds: round k updates every row with its k-th feature of the batch (distinct rows, so
    one batched update), which keeps each row's sequential order; K rounds for K features per row (the P x K
    batch), on the table's device, with one host sync (the round sizes).
    """
    if rows.numel() == 0:
        return
    features = features.detach().to(table.dtype)
    rows = rows.to(table.device).long()
    rank = occurrence_rank(rows)
    by_round = torch.argsort(rank, stable=True)
    start = 0
    for size in torch.bincount(rank).tolist():
        chosen = by_round[start:start + size]
        start += size
        r = rows[chosen]
        row = momentum * table[r] + (1.0 - momentum) * features[chosen]
        table[r] = row / row.norm(dim=1, keepdim=True)


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
