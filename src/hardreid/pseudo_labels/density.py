"""Density-adaptive clustering of the sparse Jaccard distance: ``cluster.eps: auto`` and HDBSCAN.

**eps auto** (``auto_eps``).  A fixed DBSCAN radius is tuned for one data set
(0.5 / 0.6 on Market-1501, 0.7 on MSMT17).  Data-driven radii go back to the
k-distance heuristic of the DBSCAN paper (Ester et al., "A density-based
algorithm for discovering clusters in large spatial databases with noise",
KDD 1996, Sec. 4.2: sort every point's distance to its k-th neighbour and put
eps at the threshold that leaves the expected share of noise).  The rule used
by clustering-based re-ID codes on this very Jaccard distance is its pairwise
form (Song et al., "Unsupervised domain adaptive re-identification: theory and
practice", Pattern Recognition 2020; the official code of SSG, Fu et al. ICCV
2019, and of MMT, Ge et al. ICLR 2020, with ``rho = 1.6e-3``)::

    eps = mean of the rho * P smallest distances among the P pairs i < j with d_ij != 0

over the dense matrix, i.e. absent sparse pairs count as distance 1 (and are
only reached when fewer than rho * P pairs are stored) and exact zeros
(duplicate images) are left out, as ``np.nonzero`` does in those codes.  With
N images this averages the ~rho * N / 2 closest pairs per image (10 at Market's
N = 12,936).  Those codes compute it once, before the first epoch; hardreid
recomputes it every epoch (``cluster_epoch``), so the radius follows the
distances as the features change.  It follows the *scale* of the distances:
with weak features (all distances large) it grows, so it is no guard against
chaining by itself (the diagnostics are).

**HDBSCAN** (``hdbscan_labels``, Campello et al., PAKDD 2013;
``sklearn.cluster.HDBSCAN``): no eps, clusters are the most stable branches of
the single-linkage tree of the mutual reachability distance.  scikit-learn
accepts a sparse precomputed CSR matrix but reads a *missing* entry as "no
edge" (core distances from the stored entries only, and it refuses a graph
with fewer than min_samples entries in a row or with several connected
components), while in the Jaccard matrix a missing entry means distance 1 (the
maximum; ``compute_jaccard_distance``).  So before handing it over:

1. explicit zeros (duplicate images, and the diagonal) become ``1e-12``:
   scipy's minimum spanning tree treats zero weights as missing edges;
2. every row gets entries at distance exactly 1 to the next ``min_samples``
   images (cyclically, where no entry is stored; mirrored, so the matrix stays
   symmetric): every row has min_samples entries, the core distance of a row
   with fewer stored neighbours is 1 as in the dense matrix, and the chain
   i -> i + 1 connects the graph.

A pair at distance 1 has mutual reachability exactly 1 in both the dense and
the padded matrix and the stored pairs are the same, so both give minimum
spanning trees of equal weights: the same single-linkage hierarchy (the same
DBSCAN* partition at every cut, ``HDBSCAN.dbscan_clustering``).  The HDBSCAN
labels are then those of ``HDBSCAN`` on the dense matrix up to the order of
*ties*, which the dense (Prim) and sparse (Kruskal) paths of scikit-learn break
differently: mutual reachability ties are common for min_samples > 2 (every
edge of a point inside its core radius weighs its core distance), and where
the stored graph falls apart into components the dense tree joins them by
arbitrary edges of weight 1, so a piece smaller than min_cluster_size may be
noise in one and part of a top-level cluster in the other.  Equal Jaccard
values tie for any min_samples: with query expansion (k2 > 1) images with the
same k2 nearest neighbours get equal rows (distance 0 to each other, equal
distances to everyone else), and an outlier, whose row is made of whole 1/k2
shares of its neighbours' rows, is at exactly 10/11, 0.8 or 2/3 (k2 = 6) from
dozens of images.  scikit-learn sorts the tree's edges with numpy's unstable
quicksort, whose order of equal weights depends on the CPU's SIMD kernels, so
with ties the labels may also differ between machines.  Without ties
(min_samples <= 2, components no smaller than min_cluster_size) the labels are
equal (tests/test_cluster_options.py checks both statements, the second on
data whose hierarchy it checks for margins).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from hardreid.errors import UserError
from hardreid.pseudo_labels.cluster import relabel_by_first_occurrence

__all__ = ["HDBSCAN_SELECTION", "auto_eps", "hdbscan_input", "hdbscan_labels"]

#: Values of ``cluster.hdbscan_selection`` (scikit-learn's ``cluster_selection_method``).
HDBSCAN_SELECTION: tuple[str, ...] = ("eom", "leaf")
_ZERO = 1e-12


def auto_eps(distance: sp.spmatrix | sp.sparray, rho: float = 1.6e-3) -> float:
    """The pairwise eps rule (module docstring) on a sparse Jaccard matrix (absent pairs = 1).

    At least one pair is averaged (``rho * P`` rounds to 0 below ~25 images).
    Raises UserError when rho is not in (0, 1] or when the rule gives 1 (no
    pair shares a neighbour: DBSCAN could not use it).
    """
    if not 0 < rho <= 1:
        raise UserError(f"cluster.eps_rho={rho} must be in (0, 1] (the fraction of closest pairs; SSG / MMT: 0.0016)")
    coo = sp.coo_matrix(distance)
    n = coo.shape[0]
    upper = coo.row < coo.col
    values = coo.data[upper]
    positive = values[values != 0]
    pairs = n * (n - 1) // 2 - (values.size - positive.size)  # the pairs with d != 0 (absent ones: d = 1)
    if pairs <= 0:
        raise UserError(f"cluster.eps=auto needs two distinct images, got {n}")
    top = max(1, int(np.round(rho * pairs)))
    if top <= positive.size:
        closest = np.partition(positive, top - 1)[:top] if top < positive.size else positive
        eps = float(closest.astype(np.float64).sum() / top)
    else:
        eps = float((positive.astype(np.float64).sum() + (top - positive.size)) / top)
    if not eps < 1.0:
        raise UserError(f"cluster.eps=auto gave eps {eps:g}: no pair of the {n} images shares a k-reciprocal "
                        "neighbour; use a fixed cluster.eps or check the features")
    return eps


def hdbscan_input(distance: sp.spmatrix | sp.sparray, min_samples: int) -> sp.csr_matrix:
    """Steps 1-2 of the module docstring: a symmetric float64 CSR that scikit-learn's HDBSCAN reads like the dense matrix.

    ``distance`` as ``compute_jaccard_distance`` returns it (diagonal stored, absent pairs = 1).  Zeros on the
    diagonal become ``1e-12`` too (self pairs never enter the spanning tree; the self entry stays the smallest of
    its row, so the core distances are unchanged).
    """
    csr = sp.csr_matrix(distance, dtype=np.float64, copy=True)
    csr.sum_duplicates()
    csr.sort_indices()
    n = csr.shape[0]
    csr.data[csr.data == 0] = _ZERO
    stored = np.repeat(np.arange(n, dtype=np.int64), np.diff(csr.indptr)) * n + csr.indices  # sorted (row-major)
    i = np.repeat(np.arange(n, dtype=np.int64), min_samples)
    j = (i + np.tile(np.arange(1, min_samples + 1), n)) % n
    pad = np.unique(np.concatenate([i * n + j, j * n + i]))  # both directions: symmetric
    at = np.minimum(np.searchsorted(stored, pad), max(stored.size - 1, 0))
    pad = pad[(pad // n != pad % n) & ((stored.size == 0) | (stored[at] != pad))]
    del stored
    extra = sp.csr_matrix((np.ones(pad.size), (pad // n, pad % n)), shape=(n, n))
    out = (csr + extra).tocsr()  # disjoint patterns: a merge, every value kept (none is zero)
    out.sort_indices()
    return out


def hdbscan_labels(distance: sp.spmatrix | sp.sparray, min_samples: int = 4, min_cluster_size: int = 4,
                   selection: str = "eom") -> np.ndarray:
    """HDBSCAN labels (int64, -1 = noise) of a sparse Jaccard matrix whose absent pairs mean distance 1.

    ``min_samples``: neighbours (the point itself included) that define the
    core distance, as DBSCAN's; ``min_cluster_size``: the smallest cluster;
    ``selection``: ``eom`` (scikit-learn's default) or ``leaf``.  Clusters
    are renumbered 0..C-1 by first occurrence.
    """
    from sklearn.cluster import HDBSCAN

    if selection not in HDBSCAN_SELECTION:
        raise UserError(f"unknown cluster.hdbscan_selection {selection!r}; choose one of {', '.join(HDBSCAN_SELECTION)}")
    n = distance.shape[0]
    if min_samples < 1 or min_cluster_size < 2:
        raise UserError(f"HDBSCAN needs cluster.min_samples >= 1 and a minimum cluster size >= 2, got {min_samples} "
                        f"and {min_cluster_size} (cluster.min_cluster_size; 0 = min_samples)")
    if n <= min_samples:
        raise UserError(f"HDBSCAN with cluster.min_samples={min_samples} needs more than {min_samples} images, got {n}")
    padded = hdbscan_input(distance, min_samples)
    model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, metric="precomputed",
                    cluster_selection_method=selection, copy=False)
    labels = model.fit_predict(padded)
    return relabel_by_first_occurrence(np.where(labels < 0, -1, labels))
