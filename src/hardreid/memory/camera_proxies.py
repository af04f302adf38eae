"""ICE's camera-aware proxies (Chen et al., ICCV 2021, Sec. 3.1; proxies as in CAP, Wang et al. 2021).

Each cluster is split by camera: one proxy per (pseudo identity, camera) pair, the
L2-normalised mean of the epoch's features of that identity's images in that camera.
As in the official code, the proxies are built once per epoch and stay fixed during
it (its ``ExemplarMemory`` update is commented out).

Losses (features L2-normalised, temperature beta 0.07 in the official code):

- inter-camera (cross-camera) proxy contrastive loss, ICE's L_cam: for query f with
  pseudo label y, positives P = every proxy of y (all cameras), negatives Q = the k
  (50) proxies of other identities most similar to f (hardest negatives),
  ``-1/|P| sum_{p in P} log exp(<f,p>/beta) / sum_{j in P u Q} exp(<f,j>/beta)``;
- intra-camera proxy contrastive loss: cross-entropy over the proxies of the query's
  own camera, target = the proxy of (y, camera) (commented out in the official code,
  so weight 0 by default in hardreid).

Both are averaged over the queries of each camera and summed over the cameras present
in the batch, as the official code does (``loss_cam += ... / len(percam_feat)``).

Proxy scores of the inter-camera loss (``scoring``, ``ice.proxy_scoring``): the official
``ice/trainers.py`` computes ``matmul(F.normalize(f), F.normalize(P.t()))``, and
``F.normalize`` of the D x Np matrix ``P.t()`` normalises each *feature dimension* across
the proxies, not each proxy (``official``, the default, which also ranks the hard
negatives); ``cosine`` is the cosine similarity with unit proxies. The intra-camera term
(commented out officially) uses the cosine.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import distributed
from ..config import choices_of
from ..precision import float32

PROXY_SCORINGS = choices_of("ice.proxy_scoring")

class CameraProxies:
    """Proxies (Np x D, unit rows) with their pseudo label and camera."""

    def __init__(self, proxies: torch.Tensor, proxy_labels: torch.Tensor, proxy_cams: torch.Tensor) -> None:
        self.proxies = proxies
        self.proxy_labels = proxy_labels.long()
        self.proxy_cams = proxy_cams.long()

    @classmethod
    @float32
    def from_clusters(cls, features: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor) -> "CameraProxies":
        """One proxy per (label, camera) pair of the clustered images (labels < 0 ignored), ordered by camera then label."""
        keep = labels >= 0
        f, y, c = features[keep].float(), labels[keep].long(), camids[keep].long().to(labels.device)
        pairs, slot = torch.unique(torch.stack([c, y], dim=1), dim=0, return_inverse=True)  # sorted by camera, then label
        sums = torch.zeros(pairs.shape[0], f.shape[1], device=f.device)
        sums.index_add_(0, slot, f)
        return cls(F.normalize(sums, dim=1), pairs[:, 1], pairs[:, 0])

    @property
    def num_proxies(self) -> int:
        return self.proxies.shape[0]

    @staticmethod
    def _per_camera_mean(per_query: torch.Tensor, camids: torch.Tensor,
                         batch_camids: torch.Tensor | None = None) -> torch.Tensor:
        """sum over cameras in the batch of the mean over that camera's queries (the official reduction):
        sum_i l_i / n_cam(i).

        ``batch_camids``: the cameras of the whole batch's queries when several processes each hold a share
        (default ``camids``); each process then returns its part of the sum times the number of processes,
        whose average (DDP's) is the whole batch's value.
        """
        everyone = camids if batch_camids is None else batch_camids
        counts = (camids[:, None] == everyone[None, :]).sum(1).to(per_query.dtype)
        return (per_query / counts).sum() * distributed.world_size()

    def scored_proxies(self, scoring: str = "official") -> torch.Tensor:
        """The proxies the inter-camera scores are products with (Np x D): see the module doc."""
        if scoring == "official":
            return F.normalize(self.proxies, dim=0)  # = F.normalize(P.t(), dim=1).t(): each dimension across proxies
        if scoring == "cosine":
            return self.proxies
        raise ValueError(f"unknown proxy scoring '{scoring}'; choose one of {', '.join(PROXY_SCORINGS)}")

    def cross_camera_loss(self, features: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor,
                          temperature: float = 0.07, num_hard_negatives: int = 50,
                          scoring: str = "official", batch_camids: torch.Tensor | None = None) -> torch.Tensor:
        """ICE's inter-camera proxy contrastive loss with the k hardest negative proxies (see module doc);
        ``batch_camids``: see ``_per_camera_mean``."""
        features = F.normalize(features, dim=1)
        sims = features @ self.scored_proxies(scoring).to(features.dtype).t()  # B x Np
        positive = labels[:, None] == self.proxy_labels[None, :]
        hard = self.hardest_negatives(sims.detach(), positive, num_hard_negatives)
        logits = sims / temperature
        chosen = positive | hard
        log_denominator = torch.logsumexp(logits.masked_fill(~chosen, float("-inf")), dim=1)
        mean_positive = (logits * positive).sum(1) / positive.sum(1).clamp(min=1)
        per_query = log_denominator - mean_positive
        return self._per_camera_mean(per_query, camids, batch_camids)

    @staticmethod
    def hardest_negatives(sims: torch.Tensor, positive: torch.Tensor, k: int) -> torch.Tensor:
        """Mask (B x Np) of the k non-positive proxies with the highest similarity to each query."""
        masked = sims.masked_fill(positive, float("-inf"))
        k = min(k, masked.shape[1])
        top = masked.topk(k, dim=1).indices
        hard = torch.zeros_like(positive).scatter_(1, top, True)
        return hard & ~positive  # rows with fewer than k negatives keep only real ones

    def intra_camera_loss(self, features: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor,
                          temperature: float = 0.07, batch_camids: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-entropy over the proxies of the query's own camera, target the proxy of (label, camera);
        ``batch_camids``: see ``_per_camera_mean``."""
        features = F.normalize(features, dim=1)
        logits = features @ self.proxies.to(features.dtype).t() / temperature
        same_cam = camids[:, None] == self.proxy_cams[None, :]
        target = same_cam & (labels[:, None] == self.proxy_labels[None, :])
        if not bool(target.any(1).all()):
            raise ValueError("a batch image has no proxy for its (label, camera): proxies built from other labels?")
        log_prob = logits.masked_fill(~same_cam, float("-inf")).log_softmax(dim=1)
        per_query = -log_prob.masked_fill(~target, 0.0).sum(1)
        return self._per_camera_mean(per_query, camids, batch_camids)

    def state_dict(self) -> dict[str, Any]:
        return {"proxies": self.proxies, "proxy_labels": self.proxy_labels, "proxy_cams": self.proxy_cams}
