"""Memories of the contrastive bases: cluster prototypes (Cluster Contrast), instance and queue memories
(ACFL), hybrid memory (SpCL), camera-aware proxies (ICE)."""

from .camera_proxies import CameraProxies
from .cluster_memory import ClusterMemory, cluster_centroids
from .hybrid_memory import HybridMemory
from .instance_memory import InstanceMemory, QueueMemory

__all__ = ["CameraProxies", "ClusterMemory", "HybridMemory", "InstanceMemory", "QueueMemory", "cluster_centroids"]
