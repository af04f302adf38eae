"""One epoch's pseudo labels from the ``cluster`` config: the trainer's single call (``cluster_epoch``).

features --(cluster.camera_normalize)--> k-reciprocal Jaccard distance (cluster.k1, k2, search,
same_camera_penalty; or cluster.jaccard: camera_aware with k1_intra, k1_inter, k2_intra, k2_inter) --> DBSCAN (cluster.eps, a number or ``auto``; min_samples) or HDBSCAN
(cluster.algorithm) --> labels, statistics, label-free diagnostics and the collapse warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hardreid.config.camera_keys import resolve_jaccard
from hardreid.errors import UserError
from hardreid.pseudo_labels.ca_jaccard import compute_camera_aware_jaccard_distance
from hardreid.pseudo_labels.camera import camera_normalize
from hardreid.pseudo_labels.cluster import ClusterStats, cluster_statistics, dbscan_labels
from hardreid.pseudo_labels.density import auto_eps, hdbscan_labels
from hardreid.pseudo_labels.diagnostics import (
    ClusterDiagnostics,
    cluster_diagnostics,
    collapse_reasons,
    collapse_warning,
)
from hardreid.pseudo_labels.jaccard import compute_jaccard_distance

__all__ = ["ALGORITHMS", "EpochClusters", "check_cluster_config", "cluster_epoch", "jaccard_distance"]

#: Values of ``cluster.algorithm``.
ALGORITHMS: tuple[str, ...] = ("dbscan", "hdbscan")


@dataclass
class EpochClusters:
    """What ``cluster_epoch`` found: labels (-1 = outlier) and everything the log and metrics report."""

    labels: np.ndarray
    stats: ClusterStats
    distance: sp.csr_matrix  # the sparse Jaccard distance the labels came from
    eps: float | None  # the DBSCAN radius used (cluster.eps, or its value this epoch with eps auto); None: HDBSCAN
    diagnostics: ClusterDiagnostics
    reasons: dict[str, str] = field(default_factory=dict)  # why the partition looks collapsed (empty: it does not)
    min_samples: int | None = None  # cluster.min_samples (the warning's advice depends on it)
    jaccard: str | None = None  # the distance the labels came from: standard or camera_aware (so does the advice)

    @property
    def warning(self) -> str | None:
        """The collapse warning's log line, or None."""
        return collapse_warning(self.reasons, self.eps, self.min_samples, self.jaccard) if self.reasons else None

    def text(self) -> str:
        """Statistics and diagnostics for the epoch's log line."""
        eps = "" if self.eps is None else f"eps {self.eps:.3g}, "
        return f"{self.stats.text()}, {eps}{self.diagnostics.text()}"

    def metrics(self) -> dict[str, Any]:
        """Entries of the epoch's metrics row (metrics.json / metrics.csv)."""
        d = self.diagnostics
        return {"eps": self.eps, "largest_to_median": d.largest_to_median, "single_camera_share": d.single_camera_share,
                "large_cluster_share": d.large_cluster_share, "partition_ari": d.partition_ari,
                "collapse_warning": bool(self.reasons)}


def check_cluster_config(c: Any) -> None:
    """Raise UserError for a ``cluster`` section the options below cannot run (checked before any work): what
    ``config.ClusterConfig`` accepts for every ``cluster.*`` key."""
    from hardreid.config import check_section

    check_section("cluster", c)


def jaccard_distance(features: torch.Tensor, camids: np.ndarray, cfg: Any):
    """The sparse Jaccard distance ``cluster_epoch`` clusters: ``cfg.camera_normalize`` applied to ``features``, then
    the standard k-reciprocal distance or CA-Jaccard by ``cfg.jaccard`` (``auto``: camera-aware when ``camids`` name
    2 cameras or more)."""
    feats = camera_normalize(features, camids, cfg.camera_normalize)
    if resolve_jaccard(cfg.jaccard, camids) == "camera_aware":
        return compute_camera_aware_jaccard_distance(feats, camids, k1_intra=cfg.k1_intra, k1_inter=cfg.k1_inter,
                                                     k2_intra=cfg.k2_intra, k2_inter=cfg.k2_inter, mode=cfg.search)
    return compute_jaccard_distance(feats, k1=cfg.k1, k2=cfg.k2, mode=cfg.search, camids=camids,
                                    same_camera_penalty=cfg.same_camera_penalty)


def cluster_epoch(features: torch.Tensor, camids: torch.Tensor | np.ndarray, cfg: Any,
                  previous_labels: np.ndarray | None = None) -> EpochClusters:
    """Pseudo labels of ``features`` (N x D) with the ``cluster`` config ``cfg`` (a ``ClusterConfig``).

    ``camids``: the camera of each image (camera normalisation, same-camera
    penalty, diagnostics); ``previous_labels``: last epoch's labels, for the
    change of the partition (``partition_ari``).  Raises UserError for a bad
    config and when every image is an outlier.
    """
    check_cluster_config(cfg)
    camids = np.asarray(camids)
    jaccard = resolve_jaccard(cfg.jaccard, camids)  # auto decided once: for the distance and the warning's advice
    distance = jaccard_distance(features, camids, cfg.model_copy(update={"jaccard": jaccard}))
    if cfg.algorithm == "hdbscan":
        eps = None
        labels = hdbscan_labels(distance, cfg.min_samples, cfg.min_cluster_size or cfg.min_samples,
                                cfg.hdbscan_selection)
    else:
        eps = auto_eps(distance, cfg.eps_rho) if cfg.eps == "auto" else float(cfg.eps)
        labels = dbscan_labels(distance, eps=eps, min_samples=cfg.min_samples)
    stats = cluster_statistics(labels)
    if stats.num_clusters == 0:
        if eps is None:
            how, larger = f"HDBSCAN (cluster.min_samples={cfg.min_samples})", ""
        else:
            auto = f" = {eps:.3g}" if cfg.eps == "auto" else ""
            how = f"DBSCAN (cluster.eps={cfg.eps}{auto}, cluster.min_samples={cfg.min_samples})"
            larger = f"a larger cluster.eps (e.g. cluster.eps={min(eps + 0.1, 0.9):.1f}), "
        algorithm, settings = how.split(" ", 1)
        raise UserError(f"{algorithm} found no cluster among {len(labels)} training images {settings}: every image is "
                        f"an outlier. Try {larger}a smaller cluster.min_samples, or start from pretrained weights "
                        "(--weights FILE).")
    diagnostics = cluster_diagnostics(labels, camids, previous_labels, cfg.large_cluster_factor * cfg.min_samples)
    reasons = collapse_reasons(diagnostics, cfg.warn_large_share, cfg.warn_single_camera_share)
    if stats.num_clusters == 1:  # one identity: a contrastive loss over one class is 0, nothing is learned
        reasons = {"one_cluster": f"all {int((np.asarray(labels) >= 0).sum())} clustered images form one cluster, so "
                                  "the contrastive loss is 0 and nothing is learned", **reasons}
    return EpochClusters(labels, stats, distance, eps, diagnostics, reasons, cfg.min_samples, jaccard)
