"""Camera-aware Jaccard distance (CA-Jaccard; Chen et al., CVPR 2024), sparse and blocked.

Our reading of the paper and of its official ``caj/utils/caj_rerank.py``
(repository chenyiyuu/CA-Jaccard; read, not copied), with the standard
k-reciprocal Jaccard of ``jaccard.py`` as the frame (its steps 4 and 6 are
shared; ``d = 2 - 2 cos``):

1. two rankings per image ``i``: the intra-camera list ``N_intra(i, k)`` (i
   itself first, then its ``k`` nearest images of the same camera) and the
   inter-camera list ``N_inter(i, k)`` (its ``k + 1`` nearest images of the
   other cameras).  These are the official code's slices
   ``intra_rank[i, :k + 1]`` and ``inter_rank[i, :k + 1]`` of rankings in
   which the other (resp. the same) camera's images were pushed back by +999;
   like the original k-reciprocal code, a list of "k" neighbours holds k + 1
   entries.  Where a camera has too few images the list is shorter (the
   official code would fill it with images of the wrong side; ours never);
2. camera-aware k-reciprocal nearest neighbours (CKRNNs):
   ``R_intra(i) = {j in N_intra(i, k1_intra) : i in N_intra(j, k1_intra)}``
   (contains i), ``R_inter(i)`` likewise on the inter lists with
   ``k1_inter``, and ``R(i) = R_intra(i) u R_inter(i)`` (disjoint).  No 2/3
   expansion step: the official code runs it only without CKRNNs;
3. weights ``V[i, j] = softmax_j(-d_ij)`` over ``R(i)`` (step 4 of the
   standard distance);
4. camera-aware local query expansion (CLQE): row i becomes the mean of the
   rows of ``N_intra(i)[:k2_intra]`` (i and its ``k2_intra - 1`` nearest
   same-camera images) and ``N_inter(i)[:k2_inter]`` (its ``k2_inter``
   nearest other-camera images), ``k2_intra + k2_inter`` rows in all (fewer
   where a list is shorter); applied whatever the standard ``k2``;
5. ``m_ij = sum_c min(V_ic, V_jc)``, ``dist = 1 - m / (2 - m)`` (step 6 of the
   standard distance).

Defaults (config keys ``cluster.k1_intra``, ``k1_inter``, ``k2_intra``,
``k2_inter``): 5, 20 from the official ``train_caj.py``; 2, 4 from its README's
training commands (Market-1501, MSMT17, VeRi-776 alike; the argparse default is
3, 3, which the official code also uses as a warm-up in epoch 0 -- not done
here).  Memory: the intra lists come from a search within each camera, the
inter lists from one blocked search over all images with same-camera scores
pushed below every other-camera one (exact, in the products; ``knn.py``), so
only N x (k + slack) lists and the sparse V are held, never N x N.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from hardreid.errors import UserError
from hardreid.pseudo_labels.jaccard import SEARCH_MODES, _distance_from_weights, _softmax_weights
from hardreid.pseudo_labels.knn import _CameraPenalty, _fast_knn_candidates, _knn_candidates, _prepare_features

__all__ = ["camera_aware_lists", "compute_camera_aware_jaccard_distance"]

# Pushes same-camera cosines below every other-camera one in the inter-camera search: cos - 3 <= -2 < -1 <= cos.
_OTHER_SIDE = 3.0
_RECIPROCAL_BUDGET = 1 << 23


def _check_k(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserError(f"{name} must be a positive integer, got {value!r} (config key cluster.{name})")
    return int(value)


def camera_aware_lists(f: torch.Tensor, cams: np.ndarray, intra_len: int, inter_len: int, block_size: int = 4096,
                       mode: str = "exact") -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Intra- and inter-camera neighbour lists of L2-normalised ``f`` (step 1 of the module doc).

    Returns ``(intra_idx, intra_cos, inter_idx, inter_cos)``: (N, intra_len)
    lists starting with the image itself, then its nearest same-camera images;
    (N, inter_len) lists of its nearest other-camera images.  Ordered by
    decreasing cosine, exact ties by increasing index; padded with index -1
    (cosine NaN) where a camera has too few images.
    """
    n = f.shape[0]
    knn = _knn_candidates if mode == "exact" else _fast_knn_candidates
    idx_dtype = np.int32 if n < np.iinfo(np.int32).max else np.int64
    intra_idx = np.full((n, intra_len), -1, dtype=idx_dtype)
    intra_cos = np.full((n, intra_len), np.nan, dtype=np.float32)
    for cam in np.unique(cams):  # within each camera: an ordinary search on that camera's images
        members = np.flatnonzero(cams == cam)
        k = min(intra_len, members.size)
        if members.size == 1:
            intra_idx[members, 0] = members
            intra_cos[members, 0] = float((f[members[0]] * f[members[0]]).sum())
            continue
        sel = torch.from_numpy(members).to(f.device)
        idx, cos = knn(f.index_select(0, sel), k, block_size)
        intra_idx[members, :k] = members[idx[:, :k].cpu().numpy()]
        intra_cos[members, :k] = cos[:, :k].cpu().numpy()

    inter_idx = np.full((n, inter_len), -1, dtype=idx_dtype)
    inter_cos = np.full((n, inter_len), np.nan, dtype=np.float32)
    k = min(inter_len + 1, n)  # + the image itself, which every search ranks first
    push = _CameraPenalty(torch.from_numpy(cams).to(f.device), _OTHER_SIDE)
    idx_t, cos_t = knn(f, k, block_size, penalty=push)
    idx = idx_t[:, 1:k].cpu().numpy().astype(idx_dtype)
    cos = cos_t[:, 1:k].cpu().numpy()
    other = cams[idx] != cams[:, None]  # same-camera images only follow where too few others exist
    inter_idx[:, : k - 1] = np.where(other, idx, -1)
    inter_cos[:, : k - 1] = np.where(other, cos, np.nan)
    return intra_idx, intra_cos, inter_idx, inter_cos


def _reciprocal(lists: np.ndarray, k: int) -> np.ndarray:
    """``mask[i, t]``: ``lists[i, t]`` (t < k, not padding) has i among its own first k entries."""
    n = lists.shape[0]
    fwd = lists[:, :k].astype(np.int64)
    ext = np.vstack([fwd, np.full((1, fwd.shape[1]), -1, dtype=np.int64)])  # row n: padding points nowhere
    to = np.where(fwd < 0, n, fwd)
    out = np.empty(fwd.shape, dtype=bool)
    step = max(1, _RECIPROCAL_BUDGET // max(1, k * k))
    for a in range(0, n, step):
        b = min(n, a + step)
        back = ext[to[a:b]]  # (m, k, k)
        out[a:b] = (back == np.arange(a, b)[:, None, None]).any(axis=2)
    return out & (fwd >= 0)


def _query_expansion(n: int, intra_idx: np.ndarray, inter_idx: np.ndarray, k2_intra: int,
                     k2_inter: int) -> sp.csr_matrix:
    """CLQE as a sparse (N, N) averaging matrix: row i has ``1 / count`` at its first ``k2_intra`` intra-camera and
    first ``k2_inter`` inter-camera entries (i itself included, padding left out)."""
    cols = np.concatenate([intra_idx[:, :k2_intra], inter_idx[:, :k2_inter]], axis=1).astype(np.int64)
    valid = cols >= 0
    count = valid.sum(axis=1)
    rows = np.repeat(np.arange(n), valid.shape[1]).reshape(valid.shape)
    weight = np.repeat(1.0 / count, valid.shape[1]).reshape(valid.shape)
    q = sp.csr_matrix((weight[valid], (rows[valid], cols[valid])), shape=(n, n))
    q.sum_duplicates()
    return q


def compute_camera_aware_jaccard_distance(
    features: torch.Tensor,
    camids: torch.Tensor | np.ndarray | None,
    k1_intra: int = 5,
    k1_inter: int = 20,
    k2_intra: int = 2,
    k2_inter: int = 4,
    block_size: int = 4096,
    mode: str = "exact",
) -> sp.csr_matrix:
    """CA-Jaccard distance of (N, D) features with one camera id per row (steps 1-5 of the module doc).

    Same result layout as ``compute_jaccard_distance``: a symmetric float32
    CSR matrix, stored entries = pairs with a non-empty overlap (the diagonal
    an explicit 0), absent pairs distance 1.  ``mode``: the neighbour search,
    ``exact`` or ``fast`` (``cluster.search``).  With a single camera there
    are no inter-camera lists: the distance rests on the intra-camera
    k-reciprocal sets alone.  Raises UserError for missing or misshaped
    camera ids, non-positive k, an unknown mode or invalid features.
    """
    if mode not in SEARCH_MODES:
        raise UserError(f"unknown neighbour search mode {mode!r} for the Jaccard distance; choose one of "
                        f"{', '.join(repr(m) for m in SEARCH_MODES)} (config key cluster.search)")
    k1_intra, k1_inter = _check_k("k1_intra", k1_intra), _check_k("k1_inter", k1_inter)
    k2_intra, k2_inter = _check_k("k2_intra", k2_intra), _check_k("k2_inter", k2_inter)
    f = _prepare_features(features, 1, 1, block_size)
    n = f.shape[0]
    if camids is None:
        raise UserError("the camera-aware Jaccard distance (cluster.jaccard: camera_aware) needs the camera id of "
                        "every image")
    cams = np.asarray(camids.cpu() if isinstance(camids, torch.Tensor) else camids)
    if cams.shape != (n,):
        raise UserError(f"the camera-aware Jaccard distance needs one camera id per image: got shape {cams.shape} "
                        f"for {n} images")
    cams = np.unique(cams, return_inverse=True)[1].astype(np.int64)

    intra_len, inter_len = max(k1_intra + 1, k2_intra), max(k1_inter + 1, k2_inter)
    intra_idx, intra_cos, inter_idx, inter_cos = camera_aware_lists(f, cams, intra_len, inter_len, block_size, mode)

    # CKRNNs: R(i) = R_intra(i, k1_intra) u R_inter(i, k1_inter), disjoint, no expansion
    keep_a = _reciprocal(intra_idx, k1_intra + 1)
    keep_e = _reciprocal(inter_idx, k1_inter + 1)
    ra, ta = np.nonzero(keep_a)
    re, te = np.nonzero(keep_e)
    rows = np.concatenate([ra, re]).astype(np.int64)
    cols = np.concatenate([intra_idx[ra, ta], inter_idx[re, te]]).astype(np.int64)
    cos = np.concatenate([intra_cos[ra, ta], inter_cos[re, te]])
    order = np.argsort(rows * n + cols, kind="stable")
    v = _softmax_weights(n, rows[order], cols[order], cos[order])
    del rows, cols, cos, order

    q = _query_expansion(n, intra_idx, inter_idx, k2_intra, k2_inter)  # CLQE
    v = (q @ v).tocsr()
    v.sort_indices()
    return _distance_from_weights(v)
