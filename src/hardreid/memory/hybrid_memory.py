"""SpCL's hybrid memory (Ge et al., NeurIPS 2020, Sec. 3.1): instance features of every
training image; cluster centroids and un-clustered instances are read from it.

- ``features`` V (N x D, unit rows): one entry per training image, momentum updated
  after each optimiser step, ``v_i <- m v_i + (1 - m) f_i`` then renormalised (SpCL Eq. 3;
  m 0.2 in the official code). Unlike the reference (update inside a custom backward),
  ``update`` is an explicit call.
- ``labels``: hybrid label of each image: ``0..Nc-1`` reliable clusters, ``Nc..`` one class
  per un-clustered instance.
- centroids ``c_k = 1/|I_k| sum_{v in I_k} v`` (SpCL Eq. 4), *not* renormalised, as the
  official ``HybridMemory.forward`` (it averages the similarities of the members).
- unified contrastive loss (SpCL Eq. 1 without the source domain):
  ``-log exp(<f, z+>/tau) / (sum_k exp(<f, c_k>/tau) + sum_k exp(<f, v_k>/tau))`` over the
  centroids and the un-clustered instances.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from ..precision import float32
from .cluster_memory import momentum_update_rows_


class HybridMemory:
    """Instance memory V with hybrid labels (clusters + un-clustered instances)."""

    def __init__(self, features: torch.Tensor, temperature: float = 0.05, momentum: float = 0.2) -> None:
        self.features = F.normalize(features.detach().clone().float(), dim=1)
        self.temperature = temperature
        self.momentum = momentum
        n = self.features.shape[0]
        self.labels = torch.arange(n, device=self.features.device)  # until set_labels: every image on its own
        self.num_clusters = 0

    @property
    def num_instances(self) -> int:
        return self.features.shape[0]

    def set_labels(self, labels: torch.Tensor, num_clusters: int) -> None:
        """Hybrid labels: ``0..num_clusters-1`` clusters, every other value one un-clustered instance each."""
        labels = labels.to(self.features.device).long()
        if labels.shape != (self.num_instances,):
            raise ValueError(f"expected {self.num_instances} labels, got shape {tuple(labels.shape)}")
        if (labels < 0).any():
            raise ValueError("hybrid labels must be >= 0 (un-clustered instances get their own label)")
        self.labels = labels
        self.num_clusters = int(num_clusters)
        self.unclustered = (labels >= num_clusters).nonzero().flatten()  # rows of V used as instance entries
        self._instance_slot = torch.full((self.num_instances,), -1, dtype=torch.long, device=labels.device)
        self._instance_slot[self.unclustered] = torch.arange(self.unclustered.numel(), device=labels.device)

    def centroids(self) -> torch.Tensor:
        """c_k = mean of the member rows of V (Nc x D, SpCL Eq. 4; not renormalised, as the official code)."""
        keep = self.labels < self.num_clusters
        sums = torch.zeros(self.num_clusters, self.features.shape[1], device=self.features.device)
        sums.index_add_(0, self.labels[keep], self.features[keep])
        counts = torch.bincount(self.labels[keep], minlength=self.num_clusters).clamp(min=1)
        return sums / counts[:, None].to(sums.dtype)

    def cluster_targets(self, indices: torch.Tensor) -> torch.Tensor:
        """Cluster label of each batch image, -1 for un-clustered instances (their positive is not a centroid)."""
        labels = self.labels[indices]
        return torch.where(labels < self.num_clusters, labels, torch.full_like(labels, -1))

    def hybrid_targets(self, indices: torch.Tensor) -> torch.Tensor:
        """Position of each image's positive among [centroids, un-clustered instances]."""
        labels = self.labels[indices]
        return torch.where(labels < self.num_clusters, labels, self.num_clusters + self._instance_slot[indices])

    def instance_logits(self, features: torch.Tensor) -> torch.Tensor:
        """<f, v_k> / tau for every un-clustered instance (B x Nu); V is a constant."""
        return features @ self.features[self.unclustered].to(features.dtype).t() / self.temperature

    def loss(self, features: torch.Tensor, indices: torch.Tensor, cluster_logits: torch.Tensor | None = None) -> torch.Tensor:
        """Unified contrastive loss (SpCL Eq. 1). ``cluster_logits``: <f, c_k>/tau (B x Nc), possibly adjusted."""
        if cluster_logits is None:
            cluster_logits = features @ self.centroids().to(features.dtype).t() / self.temperature
        logits = torch.cat([cluster_logits, self.instance_logits(features)], dim=1)
        return F.cross_entropy(logits, self.hybrid_targets(indices))

    @torch.no_grad()
    @float32
    def update(self, features: torch.Tensor, indices: torch.Tensor) -> None:
        """v_i <- m v_i + (1 - m) f_i, renormalised (SpCL Eq. 3), one image after another as the reference."""
        momentum_update_rows_(self.features, indices, features, self.momentum)

    def state_dict(self) -> dict[str, Any]:
        return {"features": self.features, "labels": self.labels, "num_clusters": self.num_clusters}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.features = state["features"].to(self.features.device).clone()
        self.set_labels(state["labels"], state["num_clusters"])
