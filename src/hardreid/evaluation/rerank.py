"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) and its camera-aware variant (CA-Jaccard, Chen et al., CVPR
2024), vectorised with sparse matrices.

Follows the widely used ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2,
lambda_value)`` (person-re-ranking / open-reid / torchreid) step by step, but
replaces its per-sample Python loops by sparse-matrix algebra and never builds
a dense (Q+G) x (Q+G) matrix: rows of the normalised distance matrix are
recomputed block by block from the three inputs when needed.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import scipy.sparse as sp
import torch

from hardreid.errors import UserError

#: Re-rankings of the query x gallery distances (``evaluate --rerank [standard|camera_aware]``): k-reciprocal
#: (``re_ranking``, Zhong et al., CVPR 2017) or CA-Jaccard (``camera_aware_re_ranking``, Chen et al., CVPR 2024).
RERANK_MODES: tuple[str, ...] = ("standard", "camera_aware")

def _to_numpy(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim != 2:
        raise ValueError(f"{name} must be a 2-D distance matrix, got shape {a.shape}")
    if not np.isfinite(a).all():
        raise UserError(f"{name} contains NaN or infinite distances; check the extracted features.")
    return a


def _row_normalised_weights(sets: sp.csr_matrix, rows_of, n: int, num_q: int, block_size: int) -> sp.csr_matrix:
    """V of the re-ranking: exp(-d(i, j)) over the columns j of row i of ``sets`` (sorted), normalised per row;
    the distances come from ``rows_of(a, b)`` one block of rows at a time."""
    indptr, indices = sets.indptr, sets.indices
    weights = np.empty(len(indices), dtype=np.float64)
    for a, b in _row_blocks(n, num_q, block_size):
        block = rows_of(a, b)
        r = np.repeat(np.arange(b - a), np.diff(indptr[a:b + 1]))
        weights[indptr[a]:indptr[b]] = np.exp(-block[r, indices[indptr[a]:indptr[b]]].astype(np.float64))
    row_ids = np.repeat(np.arange(n), np.diff(indptr))
    weights /= np.bincount(row_ids, weights=weights, minlength=n)[row_ids]
    return sp.csr_matrix((weights, indices.copy(), indptr.copy()), shape=(n, n))


def _row_blocks(n: int, q: int, block_size: int) -> Iterator[tuple[int, int]]:
    """Row ranges of at most ``block_size`` rows that never straddle the query/gallery split."""
    for lo, hi in ((0, q), (q, n)):
        for start in range(lo, hi, block_size):
            yield start, min(start + block_size, hi)


def _normalised_rows(qg: np.ndarray, qq: np.ndarray, gg: np.ndarray) -> Callable[[int, int], np.ndarray]:
    """``rows(a, b)`` gives rows a..b-1 of the original's ``original_dist``.

    The original builds ``D = [[qq, qg], [qg.T, gg]]``, squares it in float32,
    divides each column by its maximum and transposes: row ``i`` is column
    ``i`` of ``D``, squared and divided by its own maximum. A row whose
    maximum is 0 (all distances zero) is left at 0 instead of 0/0 = NaN.
    """
    num_q = qg.shape[0]

    def rows(a: int, b: int) -> np.ndarray:
        if b <= num_q:  # column i < Q of D: [qq[:, i], qg[i, :]]
            cols = np.concatenate([qq[:, a:b].T, qg[a:b]], axis=1)
        else:  # column i >= Q of D: [qg[:, i-Q], gg[:, i-Q]]
            cols = np.concatenate([qg[:, a - num_q:b - num_q].T, gg[:, a - num_q:b - num_q].T], axis=1)
        sq = np.square(cols).astype(np.float32)
        top = sq.max(axis=1, keepdims=True)
        top[top == 0] = 1.0
        return sq / top

    return rows


def _stable_smallest(block: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest entries of each row, ordered by (value, index)."""
    t = torch.from_numpy(block)
    if k >= t.shape[1]:
        return torch.sort(t, dim=1, stable=True).indices[:, :k].numpy()
    vals, idx = torch.topk(t, k + 1, dim=1, largest=False, sorted=True)
    # The k selected entries in index order, then stably by value -> (value, index).
    idx_k, perm = torch.sort(idx[:, :k], dim=1)
    order = torch.sort(torch.gather(vals[:, :k], 1, perm), dim=1, stable=True).indices
    out = torch.gather(idx_k, 1, order)
    # Rows where the (k+1)-th value ties the k-th: topk's choice among the tied
    # entries is unspecified, so redo those (rare) rows with a full stable sort.
    tied = (vals[:, k] == vals[:, k - 1]).nonzero(as_tuple=True)[0]
    if len(tied) > 0:
        out[tied] = torch.sort(t[tied], dim=1, stable=True).indices[:, :k]
    return out.numpy()


def _neighbour_matrix(top: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """Boolean sparse matrix with row i marking ``top[i, :k]`` (the k nearest, self included)."""
    k = min(k, top.shape[1])
    rows = np.repeat(np.arange(n), k)
    return sp.csr_matrix((np.ones(n * k, dtype=np.int32), (rows, top[:, :k].ravel())), shape=(n, n))


def _reciprocal(top: np.ndarray, k: int, n: int) -> sp.csr_matrix:
    """R(i, k): the j within the k+1 nearest of i that also have i within their k+1 nearest."""
    r = _neighbour_matrix(top, k + 1, n)
    out = r.multiply(r.T).tocsr()
    out.eliminate_zeros()
    out.data[:] = 1
    return out.astype(np.int32)


def re_ranking(
    q_g_dist: np.ndarray | torch.Tensor,
    q_q_dist: np.ndarray | torch.Tensor,
    g_g_dist: np.ndarray | torch.Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    block_size: int = 256,
) -> np.ndarray:
    """k-reciprocal re-ranked query x gallery distances (float32, smaller = more similar).

    Same steps and defaults as the original ``re_ranking``:

    * distances are taken as given (any metric) and **squared**, as the
      original does (torchreid feeds it squared Euclidean distances, which
      then get squared again); each row ``i`` of the joint (Q+G) x (Q+G)
      matrix is divided by its maximum (the original's column-max
      normalisation followed by a transpose) in float32;
    * R(i, k1): k1-reciprocal neighbours among the k1+1 nearest (self
      included); expanded by R(c, round(k1/2)) of each c in R(i, k1) when
      ``|R(c, k1/2) & R(i, k1)| > 2/3 |R(c, k1/2)|`` (``round`` is numpy's
      half-to-even ``np.around``, as in the original);
    * V[i, j] = exp(-d(i, j)) normalised over the expanded set; if
      ``k2 != 1`` V is replaced by the mean of V over the k2 nearest
      neighbours of i (local query expansion, self included);
    * Jaccard distance ``1 - s / (2 - s)`` with ``s = sum_k min(V[i,k], V[j,k])``
      over the common support (the original's inverted index), queries and
      gallery both taking part in the neighbourhoods;
    * final = jaccard * (1 - lambda) + normalised_distance * lambda.

    Differences: neighbour lists are ordered by (distance, index), whereas the
    original's quicksort leaves the order of tied distances unspecified; V and
    the Jaccard sums are accumulated in float64 (the original uses float32); a
    joint row of all-zero distances is normalised to 0 instead of NaN. Only
    (Q+G) x max(k1+1, k2) neighbour indices and the sparse V are kept; the
    normalised distances are recomputed ``block_size`` rows at a time.
    """
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    qg = _to_numpy(q_g_dist, "q_g_dist")
    qq = _to_numpy(q_q_dist, "q_q_dist")
    gg = _to_numpy(g_g_dist, "g_g_dist")
    num_q, num_g = qg.shape
    if qq.shape != (num_q, num_q) or gg.shape != (num_g, num_g):
        raise ValueError(
            f"expected q_q_dist {(num_q, num_q)} and g_g_dist {(num_g, num_g)} for q_g_dist "
            f"{qg.shape}, got {qq.shape} and {gg.shape}"
        )
    n = num_q + num_g
    if num_q == 0 or num_g == 0:
        return np.zeros((num_q, num_g), dtype=np.float32)
    rows_of = _normalised_rows(qg, qq, gg)

    # 1. Nearest neighbours of every sample (only as many as are used).
    k_top = min(max(k1 + 1, k2), n)
    top = np.empty((n, k_top), dtype=np.int64)
    for a, b in _row_blocks(n, num_q, block_size):
        top[a:b] = _stable_smallest(rows_of(a, b), k_top)

    # 2. k-reciprocal sets and their expansion (the 2/3 rule).
    rec = _reciprocal(top, k1, n)
    rec_half = _reciprocal(top, int(np.around(k1 / 2.0)), n)
    overlap = (rec @ rec_half.T).multiply(rec).tocsr()  # [i, c] = |R(c, k1/2) & R(i, k1)|, c in R(i, k1)
    overlap.eliminate_zeros()
    half_size = np.diff(rec_half.indptr)
    coo = overlap.tocoo()
    ok = 3 * coo.data > 2 * half_size[coo.col]  # exact form of ``> 2/3 * len``
    cond = sp.csr_matrix((np.ones(int(ok.sum()), dtype=np.int32), (coo.row[ok], coo.col[ok])), shape=(n, n))
    expanded = (rec + cond @ rec_half).tocsr()
    expanded.sum_duplicates()
    expanded.sort_indices()

    # 3. V: exp(-d) over the expanded set, normalised per row.
    v = _row_normalised_weights(expanded, rows_of, n, num_q, block_size)

    # 4. Local query expansion: mean of V over the k2 nearest neighbours.
    if k2 != 1:
        k2_eff = min(k2, n)
        qe = sp.csr_matrix(
            (np.full(n * k2_eff, 1.0 / k2_eff), (np.repeat(np.arange(n), k2_eff), top[:, :k2_eff].ravel())),
            shape=(n, n),
        )
        v = (qe @ v).tocsr()
        v.eliminate_zeros()

    # 5. Jaccard distance between queries and gallery via the common support.
    return _final_distances(v, rows_of, num_q, num_g, lambda_value, block_size)


def _final_distances(v: sp.csr_matrix, rows_of: Callable[[int, int], np.ndarray], num_q: int, num_g: int,
                     lambda_value: float, block_size: int) -> np.ndarray:
    """``jaccard * (1 - lambda) + normalised_distance * lambda`` for every query x gallery pair, block by block."""
    v_q = v[:num_q].tocsr()
    v_g = v[num_q:].tocsc()  # column k -> gallery rows j with V[j, k] != 0
    col_nnz = np.diff(v_g.indptr)
    q_row_ids = np.repeat(np.arange(num_q), np.diff(v_q.indptr))
    triplets_per_query = np.bincount(q_row_ids, weights=col_nnz[v_q.indices], minlength=num_q)
    final = np.empty((num_q, num_g), dtype=np.float32)
    max_triplets = 1 << 23
    a = 0
    while a < num_q:
        b = a + 1
        used = triplets_per_query[a]
        while b < num_q and b - a < block_size and used + triplets_per_query[b] <= max_triplets:
            used += triplets_per_query[b]
            b += 1
        final[a:b] = _jaccard_block(v_q, v_g, a, b) * (1.0 - lambda_value) + rows_of(a, b)[:, num_q:] * lambda_value
        a = b
    return final


def _jaccard_block(v_q: sp.csr_matrix, v_g: sp.csc_matrix, a: int, b: int) -> np.ndarray:
    """``1 - s / (2 - s)``, ``s[i, j] = sum_k min(V[i, k], V[j, k])`` for queries a..b-1 and all gallery j."""
    num_g = v_g.shape[0]
    lo, hi = v_q.indptr[a], v_q.indptr[b]
    q_rows = np.repeat(np.arange(b - a), np.diff(v_q.indptr[a:b + 1]))
    ks, q_vals = v_q.indices[lo:hi], v_q.data[lo:hi]
    counts = np.diff(v_g.indptr)[ks]
    total = int(counts.sum())
    starts = np.repeat(v_g.indptr[ks] - (np.cumsum(counts) - counts), counts)
    pos = starts + np.arange(total)
    mins = np.minimum(np.repeat(q_vals, counts), v_g.data[pos])
    flat = np.repeat(q_rows, counts) * num_g + v_g.indices[pos]
    s = np.bincount(flat, weights=mins, minlength=(b - a) * num_g).reshape(b - a, num_g)
    return 1.0 - s / (2.0 - s)


def _check_inputs(q_g_dist: np.ndarray | torch.Tensor, q_q_dist: np.ndarray | torch.Tensor,
                  g_g_dist: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    qg = _to_numpy(q_g_dist, "q_g_dist")
    qq = _to_numpy(q_q_dist, "q_q_dist")
    gg = _to_numpy(g_g_dist, "g_g_dist")
    num_q, num_g = qg.shape
    if qq.shape != (num_q, num_q) or gg.shape != (num_g, num_g):
        raise ValueError(
            f"expected q_q_dist {(num_q, num_q)} and g_g_dist {(num_g, num_g)} for q_g_dist "
            f"{qg.shape}, got {qq.shape} and {gg.shape}"
        )
    return qg, qq, gg


def _padded_reciprocal(lists: np.ndarray, k: int) -> sp.csr_matrix:
    """R(i, k) from lists padded with -1: the j among ``lists[i, :k]`` that have i among ``lists[j, :k]``."""
    n = lists.shape[0]
    fwd = lists[:, :k]
    valid = fwd >= 0
    rows = np.repeat(np.arange(n), fwd.shape[1]).reshape(fwd.shape)[valid]
    r = sp.csr_matrix((np.ones(rows.size, dtype=np.int32), (rows, fwd[valid])), shape=(n, n))
    out = r.multiply(r.T).tocsr()
    out.eliminate_zeros()
    return out.astype(np.int32)


def camera_aware_re_ranking(
    q_g_dist: np.ndarray | torch.Tensor,
    q_q_dist: np.ndarray | torch.Tensor,
    g_g_dist: np.ndarray | torch.Tensor,
    q_cams: np.ndarray,
    g_cams: np.ndarray,
    k1_intra: int = 5,
    k1_inter: int = 20,
    k2_intra: int = 2,
    k2_inter: int = 4,
    lambda_value: float = 0.3,
    block_size: int = 256,
) -> np.ndarray:
    """CA-Jaccard re-ranked query x gallery distances (Chen et al., CVPR 2024; float32, smaller = more similar).

    Our reading of the official ``caj/utils/rerank.py`` (chenyiyuu/CA-Jaccard), on the frame of ``re_ranking``
    (same normalised distances, same final mix with ``lambda_value``), queries and gallery forming one set:

    * two lists per image: N_intra(i) = i, then its nearest images of the same camera (``k1_intra + 1``
      entries), N_inter(i) = its nearest images of the other cameras (``k1_inter + 1`` entries); ordered by
      (distance, index), shorter where a camera has too few images;
    * CKRNNs: R(i) = R_intra(i) u R_inter(i), each the k-reciprocal set on its own lists; no 2/3 expansion;
    * V[i, j] = exp(-d(i, j)) normalised over R(i);
    * CLQE: V[i] becomes the mean of the rows of N_intra(i)[:k2_intra] and N_inter(i)[:k2_inter];
    * final = jaccard * (1 - lambda) + normalised_distance * lambda.

    Only (Q+G) x (k + 1) neighbour lists and the sparse V are held, as in ``re_ranking``.
    """
    for name, value in (("k1_intra", k1_intra), ("k1_inter", k1_inter), ("k2_intra", k2_intra),
                        ("k2_inter", k2_inter), ("block_size", block_size)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    qg, qq, gg = _check_inputs(q_g_dist, q_q_dist, g_g_dist)
    num_q, num_g = qg.shape
    cams = np.concatenate([np.asarray(q_cams).reshape(-1), np.asarray(g_cams).reshape(-1)])
    if cams.shape != (num_q + num_g,):
        raise UserError(f"camera-aware re-ranking needs one camera id per query and gallery image: got "
                        f"{np.asarray(q_cams).size} and {np.asarray(g_cams).size} for {num_q} and {num_g} images")
    n = num_q + num_g
    if num_q == 0 or num_g == 0:
        return np.zeros((num_q, num_g), dtype=np.float32)
    rows_of = _normalised_rows(qg, qq, gg)

    # 1. Intra- and inter-camera neighbour lists (-1 where a camera has too few images).
    len_a, len_e = max(k1_intra + 1, k2_intra), max(k1_inter + 1, k2_inter)
    intra = np.full((n, min(len_a, n)), -1, dtype=np.int64)
    inter = np.full((n, min(len_e, n)), -1, dtype=np.int64)
    for a, b in _row_blocks(n, num_q, block_size):
        block = rows_of(a, b)
        same = cams[a:b, None] == cams[None, :]
        own = np.arange(b - a)
        masked = np.where(same, block, np.inf)
        masked[own, own + a] = -1.0  # the image itself comes first in its intra list
        top = _stable_smallest(masked, intra.shape[1])
        intra[a:b] = np.where(np.isfinite(masked[own[:, None], top]), top, -1)
        masked = np.where(same, np.inf, block)
        top = _stable_smallest(masked, inter.shape[1])
        inter[a:b] = np.where(np.isfinite(masked[own[:, None], top]), top, -1)

    # 2. CKRNNs: the union of the two k-reciprocal sets (disjoint).
    chosen = (_padded_reciprocal(intra, k1_intra + 1) + _padded_reciprocal(inter, k1_inter + 1)).tocsr()
    chosen.sort_indices()

    # 3. V: exp(-d) over R(i), normalised per row.
    v = _row_normalised_weights(chosen, rows_of, n, num_q, block_size)

    # 4. CLQE: the mean of V over the first k2_intra intra-camera and k2_inter inter-camera neighbours.
    cols = np.concatenate([intra[:, :k2_intra], inter[:, :k2_inter]], axis=1)
    valid = cols >= 0
    rows = np.repeat(np.arange(n), cols.shape[1]).reshape(cols.shape)
    share = np.repeat(1.0 / valid.sum(axis=1), cols.shape[1]).reshape(cols.shape)
    qe = sp.csr_matrix((share[valid], (rows[valid], cols[valid])), shape=(n, n))
    v = (qe @ v).tocsr()
    v.eliminate_zeros()

    # 5. Jaccard distance between queries and gallery, mixed with the normalised distance.
    return _final_distances(v, rows_of, num_q, num_g, lambda_value, block_size)
