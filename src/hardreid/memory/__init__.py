"""Memories of the contrastive bases: cluster prototypes (Cluster Contrast), instance and queue memories (ACFL)."""

from .cluster_memory import ClusterMemory, cluster_centroids
from .instance_memory import InstanceMemory, QueueMemory

__all__ = ["ClusterMemory", "cluster_centroids", "InstanceMemory", "QueueMemory"]
