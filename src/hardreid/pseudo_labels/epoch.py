"""One epoch's pseudo labels from the ``cluster`` config: the trainer's single call (``cluster_epoch``).

features --(cluster.camera_normalize)--> k-reciprocal Jaccard distance (cluster.k1, k2, search,
same_camera_penalty) --> DBSCAN (cluster.eps, a number or ``auto``; min_samples) or HDBSCAN
(cluster.algorithm) --> labels, statistics, label-free diagnostics and the collapse warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from hardreid.errors import UserError
from hardreid.pseudo_labels.camera import CAMERA_NORMALIZE, camera_normalize
from hardreid.pseudo_labels.cluster import ClusterStats, cluster_statistics, dbscan_labels
from hardreid.pseudo_labels.density import HDBSCAN_SELECTION, auto_eps, hdbscan_labels
from hardreid.pseudo_labels.diagnostics import (
    ClusterDiagnostics,
    cluster_diagnostics,
    collapse_reasons,
    collapse_warning,
)
from hardreid.pseudo_labels.jaccard import SEARCH_MODES, compute_jaccard_distance

__all__ = ["ALGORITHMS", "EpochClusters", "check_cluster_config", "cluster_epoch"]

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

    @property
    def warning(self) -> str | None:
        """The collapse warning's log line, or None."""
        return collapse_warning(self.reasons, self.eps) if self.reasons else None

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
    """Raise UserError for a ``cluster`` section the options below cannot run (checked before any work)."""
    if c.algorithm not in ALGORITHMS:
        raise UserError(f"unknown cluster.algorithm {c.algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
    if c.search not in SEARCH_MODES:
        raise UserError(f"unknown cluster.search {c.search!r}; choose one of {', '.join(SEARCH_MODES)}")
    if c.camera_normalize not in CAMERA_NORMALIZE:
        raise UserError(f"unknown cluster.camera_normalize {c.camera_normalize!r}; "
                        f"choose one of {', '.join(CAMERA_NORMALIZE)}")
    if c.hdbscan_selection not in HDBSCAN_SELECTION:
        raise UserError(f"unknown cluster.hdbscan_selection {c.hdbscan_selection!r}; "
                        f"choose one of {', '.join(HDBSCAN_SELECTION)}")
    if isinstance(c.eps, str):
        if c.eps != "auto":
            raise UserError(f"cluster.eps must be a number or 'auto', got {c.eps!r}")
    elif not 0 < c.eps < 1:
        raise UserError(f"cluster.eps={c.eps} must be in (0, 1): Jaccard distances lie in [0, 1] (typical 0.4-0.7)")
    if not 0 < c.eps_rho <= 1:
        raise UserError(f"cluster.eps_rho={c.eps_rho} must be in (0, 1] (SSG / MMT: 0.0016)")
    if c.min_samples < 1 or c.min_cluster_size < 0:
        raise UserError(f"cluster.min_samples must be >= 1 and cluster.min_cluster_size >= 0 (0 = min_samples), got "
                        f"{c.min_samples} and {c.min_cluster_size}")
    if not 0 <= c.same_camera_penalty <= 4:
        raise UserError(f"cluster.same_camera_penalty={c.same_camera_penalty} must be in [0, 4] "
                        "(4: every other-camera neighbour ranks before every same-camera one)")
    if c.large_cluster_factor <= 0:
        raise UserError(f"cluster.large_cluster_factor={c.large_cluster_factor} must be positive")


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
    feats = camera_normalize(features, camids, cfg.camera_normalize)
    distance = compute_jaccard_distance(feats, k1=cfg.k1, k2=cfg.k2, mode=cfg.search, camids=camids,
                                        same_camera_penalty=cfg.same_camera_penalty)
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
    return EpochClusters(labels, stats, distance, eps, diagnostics, reasons)
