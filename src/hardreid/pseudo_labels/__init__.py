"""Pseudo labels for clustering-based unsupervised re-ID.

k-reciprocal Jaccard distance (sparse) on L2-normalised features, then
DBSCAN (fixed or automatic eps) or HDBSCAN with a precomputed metric; label -1
marks an outlier. ``cluster_epoch`` runs one epoch's clustering from the
``cluster`` config, with camera-aware options and label-free diagnostics.
"""

from __future__ import annotations

from hardreid.pseudo_labels.ca_jaccard import compute_camera_aware_jaccard_distance
from hardreid.pseudo_labels.camera import CAMERA_NORMALIZE, camera_normalize
from hardreid.pseudo_labels.cluster import (
    ClusterStats,
    cluster_statistics,
    dbscan_labels,
    pseudo_labels,
    relabel_by_first_occurrence,
)
from hardreid.pseudo_labels.density import auto_eps, hdbscan_labels
from hardreid.pseudo_labels.diagnostics import ClusterDiagnostics, cluster_diagnostics, collapse_reasons
from hardreid.pseudo_labels.epoch import ALGORITHMS, EpochClusters, check_cluster_config, cluster_epoch
from hardreid.pseudo_labels.jaccard import compute_jaccard_distance, jaccard_to_dense
from hardreid.pseudo_labels.knn import exact_knn

__all__ = [
    "ALGORITHMS",
    "CAMERA_NORMALIZE",
    "ClusterDiagnostics",
    "ClusterStats",
    "EpochClusters",
    "auto_eps",
    "camera_normalize",
    "check_cluster_config",
    "cluster_diagnostics",
    "cluster_epoch",
    "cluster_statistics",
    "collapse_reasons",
    "compute_camera_aware_jaccard_distance",
    "compute_jaccard_distance",
    "dbscan_labels",
    "exact_knn",
    "hdbscan_labels",
    "jaccard_to_dense",
    "pseudo_labels",
    "relabel_by_first_occurrence",
]
