"""SpCL (Ge et al., "Self-paced contrastive learning with hybrid memory", NeurIPS 2020) as a base method.

Per epoch (official ``examples/spcl_train_usl.py``):

1. cluster the *instance memory* V (not freshly extracted features: ``clustering_features``);
   the memory is initialised once, from the features extracted before the first epoch;
2. DBSCAN with eps, and again with eps - gap (tight) and eps + gap (loose) on the same
   sparse Jaccard distance (``EpochData.distance``); with ``cluster.eps: auto`` eps is this
   epoch's automatic radius (``EpochData.eps``) and the gap is taken around it. HDBSCAN
   (``cluster.algorithm: hdbscan``) has no radius to move, so SpCL refuses it;
3. self-paced reliability (Sec. 3.2): ``R_indep`` (Eq. 5, IoU of a sample's cluster at eps
   and at the loose eps) and ``R_comp`` (Eq. 6, IoU with the tight cluster); a cluster is
   independent when its score passes the threshold fixed at the first epoch, a sample stays in
   it when its compactness is the cluster's best; every other image is an un-clustered instance;
4. train with the unified contrastive loss over centroids and un-clustered instances of the
   hybrid memory (Eq. 1); after each optimiser step ``v_i <- m v_i + (1 - m) f_i`` (Eq. 3).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...errors import UserError
from ...memory import HybridMemory
from ...pseudo_labels import dbscan_labels, relabel_by_first_occurrence
from ..contract import BaseMethod, EpochData, StepContext
from ..registry import register_base


def _with_singletons(labels: np.ndarray) -> np.ndarray:
    """DBSCAN outliers (-1) become classes of their own (the official ``generate_pseudo_labels``)."""
    labels = np.asarray(labels, dtype=np.int64).copy()
    outliers = labels < 0
    labels[outliers] = labels.max(initial=-1) + 1 + np.arange(outliers.sum())
    return labels


def _iou_with(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Per sample: |I(f) n I'(f)| / |I(f) u I'(f)|, I = the sample's cluster in each labelling (no N x N matrix)."""
    size = np.bincount(labels)[labels]
    size_other = np.bincount(other)[other]
    _, pair, pair_count = np.unique(np.stack([labels, other]), axis=1, return_inverse=True, return_counts=True)
    inter = pair_count[pair.reshape(-1)]
    return inter / (size + size_other - inter)


def reliability_scores(labels: np.ndarray, tight: np.ndarray, loose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample ``1 - R_comp`` and ``1 - R_indep`` (SpCL Eq. 6 and 5, the official code's R_comp / R_indep).

    All three labellings with outliers as singletons; values in [0, 1], 0 = fully reliable.
    """
    labels, tight, loose = (_with_singletons(x) for x in (labels, tight, loose))
    return 1.0 - _iou_with(labels, tight), 1.0 - _iou_with(labels, loose)


def self_paced_labels(labels: np.ndarray, tight: np.ndarray, loose: np.ndarray, indep_threshold: float | None = None,
                      percentile: float = 0.9) -> tuple[np.ndarray, int, float]:
    """Hybrid labels after the reliability criterion: ``(labels, num_clusters, indep_threshold)``.

    ``labels``: ``0..Nc-1`` reliable clusters (at least two kept members), ``Nc..`` one label per
    un-clustered instance. ``indep_threshold`` None: set from this epoch (the official code does it
    at epoch 0): the ``percentile`` of the clusters' independence scores (clusters of > 1 image).
    """
    labels = _with_singletons(labels)
    comp, indep = reliability_scores(labels, tight, loose)
    num = labels.max(initial=-1) + 1
    cluster_comp = np.full(num, np.inf)
    cluster_indep = np.full(num, np.inf)
    np.minimum.at(cluster_comp, labels, comp)  # best (lowest) score of each cluster, as the official min()
    np.minimum.at(cluster_indep, labels, indep)
    if indep_threshold is None:
        multi = cluster_indep[np.bincount(labels) > 1]
        if multi.size == 0:
            raise UserError("SpCL: no cluster with more than one image; the reliability threshold is undefined")
        indep_threshold = float(np.sort(multi)[min(multi.size - 1, int(np.round(multi.size * percentile)))])
    keep = (cluster_indep[labels] <= indep_threshold) & (comp <= cluster_comp[labels])
    kept = np.where(keep, labels, -1)
    counts = np.bincount(kept[kept >= 0], minlength=num)
    kept[(kept >= 0) & (counts[np.maximum(kept, 0)] < 2)] = -1  # a lone survivor is an un-clustered instance
    hybrid = relabel_by_first_occurrence(kept)
    num_clusters = int(hybrid.max(initial=-1) + 1)
    alone = hybrid < 0
    hybrid[alone] = num_clusters + np.arange(alone.sum())
    return hybrid, num_clusters, indep_threshold


@register_base("spcl")
class SpCL(BaseMethod):
    """Hybrid memory + self-paced reliability + unified contrastive loss."""

    name = "spcl"
    singletons_once = True  # SpCL's sampler gives an un-clustered instance once, not K times

    def __init__(self, cfg, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.temperature = cfg.spcl.temperature
        self.memory: HybridMemory | None = None
        self.indep_threshold: float | None = None
        self.stats: dict[str, float] = {}
        if cfg.cluster.algorithm != "dbscan":
            raise UserError(f"method.base=spcl needs cluster.algorithm=dbscan (got {cfg.cluster.algorithm}): its "
                            "reliability criterion re-runs DBSCAN at eps -/+ spcl.eps_gap, which HDBSCAN has no "
                            "radius for; cluster.eps=auto works")

    def clustering_features(self) -> torch.Tensor | None:
        """From the second epoch on, cluster the instance memory V (official code); first epoch: extract."""
        return None if self.memory is None else self.memory.features.detach().cpu().clone()

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        if self.memory is None:
            self.memory = HybridMemory(data.features.to(self.device), self.cfg.spcl.temperature, self.cfg.spcl.momentum)
        if data.distance is None:
            raise UserError("SpCL needs the epoch's Jaccard distance (EpochData.distance) for its reliability criterion")
        eps = data.eps if data.eps is not None else self.cfg.cluster.eps  # the radius the labels came from
        gap, min_samples = self.cfg.spcl.eps_gap, self.cfg.cluster.min_samples
        if not 0 < gap < eps or eps + gap >= 1:
            raise UserError(f"spcl.eps_gap={gap} must be in (0, eps) with eps + gap < 1 (eps = {eps:.3g}, "
                            f"cluster.eps={self.cfg.cluster.eps})")
        tight = dbscan_labels(data.distance, eps=eps - gap, min_samples=min_samples)
        loose = dbscan_labels(data.distance, eps=eps + gap, min_samples=min_samples)
        hybrid, num_clusters, self.indep_threshold = self_paced_labels(
            data.labels.numpy(), tight, loose, self.indep_threshold, self.cfg.spcl.indep_percentile)
        self.memory.set_labels(torch.as_tensor(hybrid), num_clusters)
        self.stats = {"spcl_clusters": float(num_clusters), "spcl_unclustered": float(len(hybrid) - (hybrid < num_clusters).sum()),
                      "spcl_indep_threshold": float(self.indep_threshold)}

    def sampling_labels(self, data: EpochData) -> torch.Tensor:
        """Every image is sampled: reliable clusters and un-clustered instances (each its own class)."""
        assert self.memory is not None, "start_epoch first"
        return self.memory.labels.cpu()

    def prototypes(self) -> torch.Tensor:
        """The cluster centroids of the hybrid memory (Eq. 4), Nc x D."""
        assert self.memory is not None, "start_epoch first"
        return self.memory.centroids()

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        assert self.memory is not None, "start_epoch first"
        indices = ctx.batch.indices
        centroid_logits = self.cluster_logits(ctx.features, self.memory.cluster_targets(indices))
        return {"spcl": self.memory.loss(ctx.features, indices, centroid_logits)}

    def after_step(self, ctx: StepContext) -> None:
        assert self.memory is not None
        self.memory.update(ctx.features, ctx.batch.indices)

    def end_epoch(self, epoch: int, run_dir: Path | None) -> dict[str, float]:
        return dict(self.stats)

    def state_dict(self) -> dict[str, Any]:
        return {"memory": None if self.memory is None else self.memory.state_dict(),
                "indep_threshold": self.indep_threshold}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.indep_threshold = state.get("indep_threshold")
        if state.get("memory") is not None:
            mem = state["memory"]
            self.memory = HybridMemory(mem["features"].to(self.device), self.cfg.spcl.temperature, self.cfg.spcl.momentum)
            self.memory.load_state_dict(mem)  # the exact rows (no renormalisation)
