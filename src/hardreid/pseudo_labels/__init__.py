"""Pseudo labels for clustering-based unsupervised re-ID.

k-reciprocal Jaccard distance (sparse) on L2-normalised features, then
DBSCAN with a precomputed metric; label -1 marks an outlier.
"""

from __future__ import annotations

from hardreid.pseudo_labels.cluster import (
    ClusterStats,
    cluster_statistics,
    dbscan_labels,
    pseudo_labels,
    relabel_by_first_occurrence,
)
from hardreid.pseudo_labels.jaccard import compute_jaccard_distance, exact_knn, jaccard_to_dense

__all__ = [
    "ClusterStats",
    "cluster_statistics",
    "compute_jaccard_distance",
    "dbscan_labels",
    "exact_knn",
    "jaccard_to_dense",
    "pseudo_labels",
    "relabel_by_first_occurrence",
]
