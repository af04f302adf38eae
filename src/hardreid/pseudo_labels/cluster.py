"""DBSCAN on a (sparse) precomputed distance matrix, and cluster statistics.

``dbscan_labels`` reproduces ``sklearn.cluster.DBSCAN(eps, min_samples,
metric="precomputed").fit_predict(dense)`` (absent sparse entries = 1.0):

1. radius graph: the stored pairs with ``d <= eps`` (self pairs included when
   stored; ``compute_jaccard_distance`` always stores them);
2. core points: at least ``min_samples`` neighbours, the point itself included;
3. clusters: connected components of the core-core graph.  sklearn seeds
   clusters at the lowest-index unlabelled core point, so its cluster order is
   the order of each component's smallest core index;
4. border points: a non-core neighbour of core points joins the earliest of
   those clusters (sklearn's expansion order), i.e. the same labels exactly.

For a non-symmetric radius graph the components shortcut does not hold and a
faithful port of sklearn's depth-first expansion is used instead (slower,
Python loop).  Labels are finally renumbered 0..C-1 by first occurrence;
-1 marks outliers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.csgraph import connected_components

from hardreid.errors import UserError

__all__ = ["ClusterStats", "cluster_statistics", "dbscan_labels", "pseudo_labels", "relabel_by_first_occurrence"]

SIZE_BINS: tuple[tuple[int, int | None], ...] = ((1, 3), (4, 7), (8, 15), (16, 31), (32, None))


def _bin_name(lo: int, hi: int | None) -> str:
    return f"{lo}+" if hi is None else f"{lo}-{hi}"


# --------------------------------------------------------------------------- DBSCAN


def _radius_graph(distance: sp.spmatrix | sp.sparray | np.ndarray, eps: float) -> sp.csr_matrix:
    """Step 1: boolean CSR of the pairs with ``d <= eps`` (absent sparse pairs = 1.0 > eps)."""
    if sp.issparse(distance):
        if distance.ndim != 2 or distance.shape[0] != distance.shape[1]:
            raise UserError(f"distance matrix must be square, got shape {distance.shape}")
        if eps >= 1.0:
            raise UserError(
                f"eps={eps} must be < 1 for a sparse Jaccard distance matrix: absent pairs mean distance 1, "
                "so every pair would be a neighbour (typical eps: 0.4-0.7)"
            )
        csr = sp.csr_matrix(distance)  # no copy of the data when already CSR
        csr.sum_duplicates()  # no-op on canonical input; explicit zeros are kept
        data = csr.data
        if data.size and not np.isfinite(data).all():
            raise UserError("distance matrix contains NaN or infinite values")
        keep = data <= eps
        n = csr.shape[0]
        rows = np.repeat(np.arange(n), np.diff(csr.indptr))[keep]
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=ptr[1:])
        graph = sp.csr_matrix((np.ones(int(keep.sum()), dtype=bool), csr.indices[keep], ptr), shape=(n, n))
    else:
        arr = np.asarray(distance)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise UserError(f"distance matrix must be square, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise UserError("distance matrix contains NaN or infinite values")
        graph = sp.csr_matrix(arr <= eps)
    graph.sort_indices()
    return graph


def _is_symmetric(graph: sp.csr_matrix) -> bool:
    t = graph.T.tocsr()
    t.sort_indices()
    return np.array_equal(graph.indptr, t.indptr) and np.array_equal(graph.indices, t.indices)


def _dbscan_components(graph: sp.csr_matrix, core: np.ndarray) -> np.ndarray:
    """Steps 3-4 for a symmetric graph: components of core points, border = earliest cluster."""
    n = graph.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    core_idx = np.flatnonzero(core)
    if core_idx.size == 0:
        return labels
    _, comp = connected_components(graph[core_idx][:, core_idx], directed=False)
    _, first = np.unique(comp, return_index=True)  # first = smallest core index (core_idx is sorted)
    order = np.empty(first.size, dtype=np.int64)
    order[np.argsort(first)] = np.arange(first.size)
    labels[core_idx] = order[comp]
    rows = np.repeat(np.arange(n), np.diff(graph.indptr))
    cols = graph.indices
    sel = ~core[rows] & core[cols]
    if sel.any():
        border = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(border, rows[sel], labels[cols[sel]])
        hit = border < np.iinfo(np.int64).max
        labels[hit] = border[hit]
    return labels


def _dbscan_expand(graph: sp.csr_matrix, core: np.ndarray) -> np.ndarray:
    """Steps 3-4 for a non-symmetric graph: sklearn's depth-first expansion, point by point."""
    n = graph.shape[0]
    labels = np.full(n, -1, dtype=np.int64)
    ptr, ind = graph.indptr, graph.indices
    label = 0
    for seed in np.flatnonzero(core):
        if labels[seed] != -1:
            continue
        stack = [int(seed)]
        while stack:
            p = stack.pop()
            if labels[p] != -1:
                continue
            labels[p] = label
            if core[p]:
                nb = ind[ptr[p] : ptr[p + 1]]
                stack.extend(nb[labels[nb] == -1].tolist())
        label += 1
    return labels


def relabel_by_first_occurrence(labels: np.ndarray) -> np.ndarray:
    """Rename clusters 0..C-1 in order of their first sample; -1 (outlier) stays -1."""
    labels = np.asarray(labels)
    out = np.full(labels.shape, -1, dtype=np.int64)
    clustered = labels >= 0
    if clustered.any():
        uniq, first, inverse = np.unique(labels[clustered], return_index=True, return_inverse=True)
        order = np.empty(uniq.size, dtype=np.int64)
        order[np.argsort(first, kind="stable")] = np.arange(uniq.size)
        out[clustered] = order[inverse]
    return out


def dbscan_labels(
    distance: sp.spmatrix | sp.sparray | np.ndarray,
    eps: float,
    min_samples: int = 4,
) -> np.ndarray:
    """DBSCAN labels (int64, -1 = outlier) of a precomputed distance matrix.

    Sparse input: absent entries mean distance 1.0, so ``eps`` must be < 1.
    The partition (core and border points alike) equals sklearn's DBSCAN with
    ``metric="precomputed"`` on the dense matrix; cluster ids are renumbered
    0..C-1 by first occurrence.
    """
    is_number = isinstance(eps, (int, float, np.floating, np.integer)) and not isinstance(eps, bool)
    if not is_number or not np.isfinite(eps) or eps <= 0:
        raise UserError(f"eps must be a positive number, got {eps!r}")
    if isinstance(min_samples, bool) or not isinstance(min_samples, (int, np.integer)) or min_samples < 1:
        raise UserError(f"min_samples must be a positive integer, got {min_samples!r}")
    graph = _radius_graph(distance, float(eps))
    core = np.diff(graph.indptr) >= min_samples  # step 2
    if _is_symmetric(graph):
        labels = _dbscan_components(graph, core)
    else:
        labels = _dbscan_expand(graph, core)
    return relabel_by_first_occurrence(labels)


# --------------------------------------------------------------------------- statistics


@dataclass
class ClusterStats:
    """Summary of a pseudo-label vector (-1 = outlier)."""

    num_samples: int
    num_clusters: int
    num_outliers: int
    size_min: int
    size_median: float
    size_max: int
    size_histogram: dict[str, int] = field(default_factory=dict)

    @property
    def outlier_fraction(self) -> float:
        return self.num_outliers / self.num_samples if self.num_samples else 0.0

    def text(self) -> str:
        """One log line, e.g. ``clusters=12 outliers=5/100 (5.0%) size min/med/max=4/7.5/30 [1-3:0 4-7:6 ...]``."""
        hist = " ".join(f"{k}:{v}" for k, v in self.size_histogram.items())
        return (
            f"clusters={self.num_clusters} outliers={self.num_outliers}/{self.num_samples} "
            f"({100.0 * self.outlier_fraction:.1f}%) size min/med/max="
            f"{self.size_min}/{self.size_median:g}/{self.size_max} [{hist}]"
        )

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (histogram included)."""
        out = asdict(self)
        out["size_histogram"] = dict(self.size_histogram)
        out["outlier_fraction"] = self.outlier_fraction
        return out


def cluster_statistics(labels: np.ndarray | list[int] | torch.Tensor) -> ClusterStats:
    """Cluster count, outliers and cluster-size histogram (bins 1-3, 4-7, 8-15, 16-31, 32+)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise UserError(f"labels must be a 1-D integer array, got shape {labels.shape} dtype {labels.dtype}")
    clustered = labels[labels >= 0]
    sizes = np.unique(clustered, return_counts=True)[1] if clustered.size else np.zeros(0, dtype=np.int64)
    hist = {}
    for lo, hi in SIZE_BINS:
        sel = sizes >= lo if hi is None else (sizes >= lo) & (sizes <= hi)
        hist[_bin_name(lo, hi)] = int(sel.sum())
    return ClusterStats(
        num_samples=int(labels.size),
        num_clusters=int(sizes.size),
        num_outliers=int((labels < 0).sum()),
        size_min=int(sizes.min()) if sizes.size else 0,
        size_median=float(np.median(sizes)) if sizes.size else 0.0,
        size_max=int(sizes.max()) if sizes.size else 0,
        size_histogram=hist,
    )


def pseudo_labels(
    features: torch.Tensor,
    k1: int = 30,
    k2: int = 6,
    eps: float = 0.6,
    min_samples: int = 4,
    block_size: int = 4096,
    mode: str = "exact",
) -> tuple[np.ndarray, ClusterStats]:
    """Jaccard distance (k1, k2) then DBSCAN (eps, min_samples): ``(labels, stats)``.

    ``mode`` is the neighbour search of ``compute_jaccard_distance``:
    ``"exact"`` (default) or ``"fast"`` (reduced precision, opt-in).
    """
    from hardreid.pseudo_labels.jaccard import compute_jaccard_distance

    dist = compute_jaccard_distance(features, k1=k1, k2=k2, block_size=block_size, mode=mode)
    labels = dbscan_labels(dist, eps=eps, min_samples=min_samples)
    return labels, cluster_statistics(labels)
