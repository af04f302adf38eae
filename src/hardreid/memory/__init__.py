"""Memories of the contrastive bases: cluster prototypes (Cluster Contrast), hybrid memory (SpCL),
camera-aware proxies (ICE)."""

from .camera_proxies import CameraProxies
from .cluster_memory import ClusterMemory, cluster_centroids
from .hybrid_memory import HybridMemory

__all__ = ["CameraProxies", "ClusterMemory", "HybridMemory", "cluster_centroids"]
