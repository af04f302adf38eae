"""Memories of the contrastive bases: cluster prototypes (Cluster Contrast)."""

from .cluster_memory import ClusterMemory, cluster_centroids

__all__ = ["ClusterMemory", "cluster_centroids"]
