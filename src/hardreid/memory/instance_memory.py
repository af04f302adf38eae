"""ACFL's memories: instance features M and person features C = per-identity means of M.

``InstanceMemory`` (ACFL Section 3.1, Algorithm 1 lines 1, 6 and 13): M (N x D) holds the
epoch's features; after each optimiser step M[i] is replaced by Q(x_i). The person feature c_a is
the mean of M over pseudo identity a. ``QueueMemory`` is the limited memory of Table 10: mu x N
features, the oldest replaced first (MoCo style), every pseudo identity kept covered.

Person features are kept as per-identity sums and counts that each update changes by
(new - old) feature: O(B x D) per step, never a full O(N x D) recompute.

Normalisation: the paper *averages* the features of a person (Section 3.2: "we average the
features of these samples as the person feature"; Section 3.1 and Eq. 6-7 use c_a as is) and
never mentions re-normalising c_a, so by default person features are plain means (norm <= 1).
``normalize=True`` L2-normalises them (as Cluster Contrast does with its prototypes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UserError
from ..precision import float32


def _last_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """Positions of the last occurrence of each distinct value (a batch may repeat an image)."""
    order = torch.arange(indices.numel(), device=indices.device)
    last = torch.full((int(indices.max()) + 1,), -1, dtype=torch.long, device=indices.device)
    last.scatter_reduce_(0, indices, order, reduce="amax")
    return last[last >= 0]


class PersonFeatureMemory:
    """Per-identity sums and counts of stored features; ``prototypes`` = the person features C (Nc x D)."""

    def __init__(self, num_clusters: int, dim: int, normalize: bool, device: torch.device,
                 dtype: torch.dtype = torch.float32) -> None:
        self.normalize = normalize
        self.sums = torch.zeros(num_clusters, dim, dtype=dtype, device=device)
        self.counts = torch.zeros(num_clusters, dtype=dtype, device=device)
        self.prototypes = torch.zeros(num_clusters, dim, dtype=dtype, device=device)

    @property
    def num_clusters(self) -> int:
        return self.prototypes.shape[0]

    def _add(self, labels: torch.Tensor, features: torch.Tensor, sign: float = 1.0) -> None:
        self.sums.index_add_(0, labels, features, alpha=sign)
        self.counts.index_add_(0, labels, torch.full_like(labels, sign, dtype=self.counts.dtype))

    def _refresh(self, clusters: torch.Tensor) -> None:
        """Recompute the person features of the touched clusters only: c_a = sum_a / n_a."""
        clusters = clusters.unique()
        means = self.sums[clusters] / self.counts[clusters].clamp_min(1.0).unsqueeze(1)
        self.prototypes[clusters] = F.normalize(means, dim=1) if self.normalize else means


class InstanceMemory(PersonFeatureMemory):
    """M (N x D) and C = per-identity means of M (ACFL Section 3.1)."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, num_clusters: int,
                 normalize: bool = False) -> None:
        features = features.detach().float()
        super().__init__(num_clusters, features.shape[1], normalize, features.device)
        self.features = features.clone()  # M, rows in the order of the training list
        self.labels = labels.to(features.device).long().clone()  # y_i, -1 = outlier (in no person feature)
        keep = self.labels >= 0
        self._add(self.labels[keep], self.features[keep])
        if (self.counts == 0).any():
            raise UserError(f"pseudo labels name {num_clusters} clusters but {int((self.counts == 0).sum())} are empty")
        self._refresh(torch.arange(num_clusters, device=features.device))

    @torch.no_grad()
    @float32
    def update(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor) -> None:
        """M[i] <- Q(x_i) (Algorithm 1 line 13); the sums change by Q(x_i) - M[i]. Call after the optimiser step."""
        keep = _last_occurrence(indices)  # an image twice in a batch: the later feature wins, as in a loop
        indices, features = indices[keep], features.detach()[keep].to(self.features.dtype)
        labels = self.labels[indices]
        if (labels < 0).any():
            raise RuntimeError("an outlier (pseudo label -1) reached the instance memory update")
        self.sums.index_add_(0, labels, features - self.features[indices])
        self.features[indices] = features
        self._refresh(labels)

    def state_dict(self) -> dict:
        return {"features": self.features, "labels": self.labels, "normalize": self.normalize}


class QueueMemory(PersonFeatureMemory):
    """Limited memory M' of mu x N features (ACFL Table 10); the oldest replaced first, every identity covered.

    Coverage guarantee: a new feature of identity y replaces the oldest stored feature among those whose
    identity keeps at least one feature afterwards: entries of y itself (y is re-added at once) and entries of
    identities with two or more features. Such an entry always exists: if every identity held exactly one
    feature, y (covered by induction) holds one and it may be replaced. The initial fill holds one random
    feature of every identity, then random others; so every identity is covered from the start to the end.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, num_clusters: int, ratio: float,
                 normalize: bool = False, generator: torch.Generator | None = None) -> None:
        if not 0.0 < ratio <= 1.0:
            raise UserError(f"memory.queue_ratio (mu) must be in (0, 1], got {ratio}")
        features = features.detach().float()
        device = features.device
        super().__init__(num_clusters, features.shape[1], normalize, device)
        labels = labels.cpu().long()
        size = int(round(ratio * len(labels)))  # N' = mu * N (N: all training images)
        clustered = (labels >= 0).nonzero().flatten()
        if size < num_clusters:
            raise UserError(f"memory.queue_ratio={ratio} gives a queue of {size} features for {num_clusters} pseudo "
                            "identities; every identity needs one (ACFL Table 10): raise memory.queue_ratio")
        size = min(size, len(clustered))
        order = clustered[torch.randperm(len(clustered), generator=generator)]
        first = torch.zeros(len(order), dtype=torch.bool)
        seen = torch.zeros(num_clusters, dtype=torch.bool)
        for pos, label in enumerate(labels[order].tolist()):  # first random member of each identity
            if not seen[label]:
                seen[label] = first[pos] = True
        chosen = torch.cat([order[first], order[~first][: size - num_clusters]])
        chosen = chosen[torch.randperm(size, generator=generator)]  # random ages for the initial fill
        self.features = features[chosen.to(device)].clone()  # M' (N' x D)
        self.labels = labels[chosen].to(device)
        self.ages = torch.arange(size, device=device)  # larger = newer
        self.clock = size
        self._add(self.labels, self.features)
        self._refresh(torch.arange(num_clusters, device=device))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    @float32
    def update(self, features: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        """Enqueue each Q(x_i), dequeueing the oldest replaceable feature (see the class docstring)."""
        features = features.detach().to(self.features.dtype)
        labels = labels.to(self.labels.device)
        never = torch.iinfo(self.ages.dtype).max
        evicted = []
        for feature, label in zip(features, labels):
            replaceable = (self.labels == label) | (self.counts[self.labels] > 1)
            slot = torch.where(replaceable, self.ages, torch.full_like(self.ages, never)).argmin()
            old = self.labels[slot].clone()
            evicted.append(old)
            self.sums[old] -= self.features[slot]
            self.counts[old] -= 1
            self.sums[label] += feature
            self.counts[label] += 1
            self.features[slot], self.labels[slot], self.ages[slot] = feature, label, self.clock
            self.clock += 1
        self._refresh(torch.cat([labels.long(), torch.stack(evicted)]))

    def state_dict(self) -> dict:
        return {"features": self.features, "labels": self.labels, "ages": self.ages, "normalize": self.normalize}
