"""Pseudo labels: sparse Jaccard distance vs a dense reference, DBSCAN vs sklearn, statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from sklearn.cluster import DBSCAN

from hardreid.errors import UserError
from hardreid.pseudo_labels import (
    cluster_statistics,
    compute_jaccard_distance,
    dbscan_labels,
    exact_knn,
    jaccard_to_dense,
    pseudo_labels,
)

pytestmark = pytest.mark.exactness  # run again under other kernels and thread counts (dev.py kernels)

# --------------------------------------------------------------------------- helpers


def dense_reference_jaccard(features: torch.Tensor, k1: int, k2: int, camids: np.ndarray | None = None,
                            penalty: float = 0.0) -> np.ndarray:
    """The faiss_rerank algorithm written plainly with dense N x N matrices and per-row loops.

    kNN: ``k1`` columns including the query (the reference searches k1 and
    slices ``[:k1+1]``); self first, then decreasing cosine, ties by index.
    ``penalty`` (with ``camids``): ``2 - 2 cos + penalty`` for pairs i != j of one camera, in the ranking
    and in the weights (hardreid's ``same_camera_penalty``).
    """
    f = F.normalize(features.float(), dim=1)
    n = f.shape[0]
    sim = torch.mm(f, f.t())
    same = torch.zeros(n, n, dtype=torch.bool)
    if penalty:
        cams = torch.as_tensor(np.asarray(camids))
        same = (cams[:, None] == cams[None, :]) & ~torch.eye(n, dtype=torch.bool)
        sim = sim - penalty / 2 * same.float()
    sim.fill_diagonal_(float("inf"))
    initial_rank = np.argsort(-sim.numpy(), axis=1, kind="stable")[:, :k1]

    def k_reciprocal(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, : k + 1]
        backward = initial_rank[forward, : k + 1]
        return forward[np.where(backward == i)[0]]

    k1_half = int(np.around(k1 / 2))
    nn_k1 = [k_reciprocal(i, k1) for i in range(n)]
    nn_half = [k_reciprocal(i, k1_half) for i in range(n)]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        recip = nn_k1[i]
        expansion = recip
        for cand in recip:
            cand_half = nn_half[cand]
            if len(np.intersect1d(cand_half, recip)) > 2 / 3 * len(cand_half):
                expansion = np.append(expansion, cand_half)
        expansion = np.unique(expansion)
        dist = 2 - 2 * torch.mm(f[i].unsqueeze(0), f[expansion].t()) + penalty * same[i, expansion].float()
        v[i, expansion] = F.softmax(-dist, dim=1).view(-1).numpy()

    if k2 != 1:
        v_qe = np.zeros_like(v)
        for i in range(n):
            v_qe[i] = np.mean(v[initial_rank[i, :k2]], axis=0)
        v = v_qe

    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        temp_min = np.minimum(v[i][None, :], v).sum(axis=1)  # zero where no shared column
        jaccard[i] = 1 - temp_min / (2 - temp_min)
    jaccard[jaccard < 0] = 0.0
    return jaccard


def clustered_features(seed: int, n_clusters: int, dim: int, n_outliers: int = 20, n_dup: int = 30) -> torch.Tensor:
    """Gaussian blobs on the sphere (sizes 2-40, varying spread), outliers, exact duplicate rows."""
    g = torch.Generator().manual_seed(seed)
    centers = F.normalize(torch.randn(n_clusters, dim, generator=g), dim=1)
    parts = []
    for c in range(n_clusters):
        size = int(torch.randint(2, 41, (1,), generator=g))
        spread = 0.2 + 0.8 * float(torch.rand(1, generator=g))
        parts.append(centers[c] + spread * torch.randn(size, dim, generator=g) / dim**0.5)
    parts.append(torch.randn(n_outliers, dim, generator=g))
    x = torch.cat(parts)
    dup = torch.randint(0, x.shape[0], (n_dup,), generator=g)
    x = torch.cat([x, x[dup], x[dup[: n_dup // 3]]])  # pairs and triples of identical rows
    x = x[torch.randperm(x.shape[0], generator=g)]
    return F.normalize(x, dim=1)


def _four_squares(r: int) -> tuple[int, int, int, int]:
    """``(a, b, c, d)``, ``a >= b >= c >= d >= 0``, with ``a^2 + b^2 + c^2 + d^2 = r`` (Lagrange: one always exists)."""
    for a in range(math.isqrt(r), -1, -1):
        if 4 * a * a < r:
            break
        for b in range(min(a, math.isqrt(r - a * a)), -1, -1):
            rb = r - a * a - b * b
            if 3 * b * b < r - a * a:
                break
            for c in range(min(b, math.isqrt(rb)), -1, -1):
                if 2 * c * c < rb:
                    break
                d = math.isqrt(rb - c * c)
                if d * d == rb - c * c:
                    return a, b, c, d
    raise AssertionError(f"no four squares sum to {r}")


def exact_product_features(features: torch.Tensor | np.ndarray, bits: int = 12) -> torch.Tensor:
    """The rows of ``features`` as float32 unit vectors (4 more columns) whose dot products are *exact*.

    Each row is scaled to integers ``y`` with ``|y|^2 <= 4^bits`` and completed by four integers with
    ``|(y, a, b, c, d)|^2 = 4^bits`` exactly (Lagrange's four-square theorem); the row is ``(y, a, b, c, d) / 2^bits``.
    With ``bits = 12`` every product of two coordinates is an integer multiple of 2^-24 and every partial sum of a
    dot product is such a multiple of size at most ``|q_i| |q_j| / 2^24 = 1``: exactly representable in float32.
    So a matmul gives the exact cosines whatever its kernel, blocking, summation order or FMA use (any CPU, and
    CUDA without TF32), the norms are exactly 1 (``F.normalize`` leaves the rows as they are), equal rows stay
    equal (exact ties) and distinct cosines never swap: the neighbour ranking of ``compute_jaccard_distance`` is
    the same on every machine and for every ``block_size``.  The extra columns are small (~2^(-bits/2) = 0.03 with
    bits = 12).  Only elementwise IEEE operations and an exactly rounded sum are used: the result does not depend
    on the CPU either.  The exactness is checked here on the machine that runs the test.
    """
    x = features.double().numpy() if isinstance(features, torch.Tensor) else np.asarray(features, dtype=np.float64)
    top = 1 << bits
    q = np.zeros((x.shape[0], x.shape[1] + 4), dtype=np.int64)
    for i, row in enumerate(x):
        norm = math.sqrt(math.fsum((row * row).tolist()))
        for scale in range(top - 2, 0, -1):  # almost always the first: |y|^2 ~ (top - 2)^2 +- 0.6 top
            y = np.rint(row * (scale / norm)).astype(np.int64)
            rest = top * top - int((y * y).sum())
            if rest >= 0:
                break
        q[i, :-4] = y
        q[i, -4:] = _four_squares(rest)
    f = torch.from_numpy(q.astype(np.float32) / np.float32(top))
    assert torch.equal((f @ f.T).double() * float(top * top), torch.from_numpy(q @ q.T).double()), \
        "float32 products of the lattice rows are not exact on this machine"
    return f


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal labels up to renaming clusters (-1 must match -1)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or not np.array_equal(a < 0, b < 0):
        return False
    pairs = {(x, y) for x, y in zip(a[a >= 0].tolist(), b[b >= 0].tolist())}
    return len(pairs) == len({x for x, _ in pairs}) == len({y for _, y in pairs})


def sklearn_labels(dense: np.ndarray, eps: float, min_samples: int = 4) -> np.ndarray:
    return DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(dense)


# |ours - dense reference| on exact_product_features: the neighbour lists are the same (exact cosines) and the values
# differ by rounding only, in the reference's float32 steps (ours run in float64): 2 - 2 cos, softmax over the
# expanded set (<= 45 images here), the mean of k2 rows, the min-sum over N <= 700 columns (numpy's pairwise sum) and
# 1 - m / (2 - m).  All ~155 roundings of at most 2^-24 in one direction give 9.2e-6 < REF_ATOL; observed <= 4e-7
# (AVX-512, AVX2 and default kernels).  With float features the two sides' cosines come from different kernels too.
REF_ATOL = 1e-5

CASES = [  # seed, clusters, dim, k1, k2
    (0, 12, 16, 20, 6),
    (1, 20, 64, 30, 6),
    (2, 8, 32, 10, 1),
    (3, 25, 32, 30, 3),
]


@pytest.fixture(scope="module", params=CASES, ids=[f"seed{c[0]}-k1_{c[3]}-k2_{c[4]}" for c in CASES])
def case(request):
    """Features with exact float32 products (exact_product_features): the Jaccard matrix is then the same for every
    block size and device, and the reference ranks the neighbours as ours do, on any CPU; with plain float features
    products computed in blocks of other shapes (block_size, the CUDA kernels) may differ in the last bit and swap
    two neighbours whose cosines are that close, which changes the distances by far more than any tolerance."""
    seed, n_clusters, dim, k1, k2 = request.param
    feats = exact_product_features(clustered_features(seed, n_clusters, dim))
    assert 150 <= feats.shape[0] <= 700
    return feats, k1, k2, dense_reference_jaccard(feats, k1, k2), compute_jaccard_distance(feats, k1=k1, k2=k2)


# --------------------------------------------------------------------------- Jaccard


def test_jaccard_matches_dense_reference(case):
    feats, k1, k2, ref, dist = case
    n = feats.shape[0]
    assert isinstance(dist, sp.csr_matrix) and dist.shape == (n, n) and dist.dtype == np.float32
    dense = jaccard_to_dense(dist)
    np.testing.assert_allclose(dense, ref, atol=REF_ATOL, rtol=0)  # see REF_ATOL
    stored = np.zeros((n, n), dtype=bool)
    coo = dist.tocoo()
    stored[coo.row, coo.col] = True
    assert np.all(np.abs(ref[~stored] - 1.0) <= 1e-6)  # absent pairs are exactly those at distance 1
    assert np.all(ref[stored] < 1.0)
    assert 0 < stored.sum() < n * n / 2  # really sparse


def test_jaccard_structure(case):
    feats, _, _, _, dist = case
    n = feats.shape[0]
    resorted = dist.copy()
    resorted.has_sorted_indices = False
    resorted.sort_indices()
    assert np.array_equal(resorted.indices, dist.indices) and np.array_equal(resorted.data, dist.data)
    assert (dist != dist.T).nnz == 0  # exactly symmetric
    diag_stored = [(dist.indices[dist.indptr[i] : dist.indptr[i + 1]] == i).any() for i in range(n)]
    assert all(diag_stored)  # self pairs are stored explicitly ...
    assert np.all(dist.diagonal() == 0.0)  # ... with distance 0
    assert dist.data.min() >= 0.0 and dist.data.max() < 1.0


def test_block_size_does_not_change_result(case):
    """Bit for bit: with exact cosines every block size sees the same scores and ties (``case``), and steps 2-6 do
    not depend on the blocks."""
    feats, k1, k2, _, dist = case
    blocked = compute_jaccard_distance(feats, k1=k1, k2=k2, block_size=37)
    assert np.array_equal(blocked.indptr, dist.indptr) and np.array_equal(blocked.indices, dist.indices)
    assert np.array_equal(blocked.data, dist.data)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.cuda
@CUDA
def test_jaccard_on_cuda_matches_reference(case):
    feats, k1, k2, ref, _ = case
    dist = compute_jaccard_distance(feats.cuda(), k1=k1, k2=k2, block_size=128)
    np.testing.assert_allclose(jaccard_to_dense(dist), ref, atol=REF_ATOL, rtol=0)  # exact cosines on CUDA too


class _NewTF32API:
    """Stand-in for torch.backends.cuda.matmul with the fp32_precision flag."""

    fp32_precision = "tf32"


class _LegacyTF32API:
    """Stand-in with the legacy allow_tf32 flag only: reading fp32_precision raises, as PyTorch does when mixed."""

    allow_tf32 = True

    @property
    def fp32_precision(self):
        raise RuntimeError("mixing the legacy and the new TF32 API")


def test_jaccard_cuda_path_on_cpu_matches_reference_with_tf32_switched_off(case, monkeypatch):
    """CPU counterpart of test_jaccard_on_cuda_matches_reference: the same blocked search (block 128), and the
    CUDA-only part, the TF32 switch around the products, checked on stand-ins of both PyTorch flag APIs."""
    import hardreid.pseudo_labels.knn as knn

    feats, k1, k2, ref, _ = case
    cuda = torch.device("cuda")
    for api, flag, off in ((_NewTF32API(), "fp32_precision", "ieee"), (_LegacyTF32API(), "allow_tf32", False)):
        before = getattr(api, flag)
        with knn._ieee_fp32_matmul(cuda, api):
            assert getattr(api, flag) == off
        assert getattr(api, flag) == before
        with knn._ieee_fp32_matmul(torch.device("cpu"), api):
            assert getattr(api, flag) == before  # nothing to switch on the CPU
    entered = []
    real = knn._ieee_fp32_matmul
    # patched where the search looks it up (knn.py's _knn_candidates)
    monkeypatch.setattr(knn, "_ieee_fp32_matmul", lambda device: (entered.append(device), real(device))[1])
    dist = compute_jaccard_distance(feats, k1=k1, k2=k2, block_size=128)
    assert entered  # every product of the search runs inside the switch
    np.testing.assert_allclose(jaccard_to_dense(dist), ref, atol=REF_ATOL, rtol=0)


def test_exact_knn_breaks_large_ties_by_index():
    """Exact cosines: the reference's full product ranks exactly as our blocks of 16 (any CPU); the copies tie
    exactly in every kernel (with float products a copy's cosine may differ in the last bit by its tile)."""
    g = torch.Generator().manual_seed(5)
    base = exact_product_features(torch.randn(60, 8, generator=g))
    feats = torch.cat([base, base[3:4].repeat(25, 1), base[10:11].repeat(12, 1)])  # tie groups > slack
    feats = feats[torch.randperm(feats.shape[0], generator=g)]
    f = F.normalize(feats, dim=1)
    k = 15
    for block_size in (16, 4096):
        idx, cos = exact_knn(feats, k, block_size=block_size)
        assert np.array_equal(idx[:, 0], np.arange(f.shape[0]))  # self first
        sim = (f @ f.T).numpy()
        for i in range(f.shape[0]):
            row = sim[i].copy()
            row[i] = np.inf
            expected = np.argsort(-row, kind="stable")[:k]  # decreasing cosine, ties by index
            assert np.array_equal(idx[i], expected)
            assert np.all(np.diff(cos[i, 1:]) <= 0)


def test_exact_duplicates_have_zero_distance():
    g = torch.Generator().manual_seed(7)
    feats = exact_product_features(torch.randn(80, 16, generator=g))  # exact cosines: see REF_ATOL
    feats = torch.cat([feats, feats[:5]])
    dist = compute_jaccard_distance(feats, k1=10, k2=3)
    ref = dense_reference_jaccard(feats, 10, 3)
    np.testing.assert_allclose(jaccard_to_dense(dist), ref, atol=REF_ATOL, rtol=0)
    dense = jaccard_to_dense(dist)
    for i in range(5):
        assert dense[i, 80 + i] <= 1e-6 and dense[80 + i, i] <= 1e-6  # stored, not absent (= 1)
    # the stored (near-)zero pairs survive DBSCAN: each duplicate pair is within any eps
    labels = dbscan_labels(dist, eps=0.01, min_samples=2)
    assert np.all(labels[:5] >= 0) and np.array_equal(labels[:5], labels[80:])


# --------------------------------------------------------------------------- DBSCAN


@pytest.mark.parametrize("eps", [0.3, 0.45, 0.6, 0.75])
def test_dbscan_matches_sklearn(case, eps):
    _, _, _, ref, dist = case
    dense = jaccard_to_dense(dist)
    ours = dbscan_labels(dist, eps=eps, min_samples=4)
    assert same_partition(ours, sklearn_labels(dense, eps))  # same matrix, only comparisons: exact on any CPU
    assert np.array_equal(ours, dbscan_labels(dense, eps=eps, min_samples=4))  # dense input path
    # vs sklearn on the dense reference matrix, unless a value sits within REF_ATOL of eps (ours is within
    # REF_ATOL of the reference, so otherwise each pair is on the same side of eps in both)
    if np.abs(ref - eps).min() > REF_ATOL:
        assert same_partition(ours, sklearn_labels(ref, eps))
    # relabelled 0..C-1 by first occurrence
    clusters = ours[ours >= 0]
    if clusters.size:
        _, first = np.unique(clusters, return_index=True)
        assert np.array_equal(np.unique(clusters), np.arange(clusters.max() + 1))
        assert np.all(np.diff(first) > 0)


@pytest.mark.parametrize("min_samples", [1, 2, 7])
def test_dbscan_min_samples(case, min_samples):
    _, _, _, _, dist = case
    ours = dbscan_labels(dist, eps=0.55, min_samples=min_samples)
    assert same_partition(ours, sklearn_labels(jaccard_to_dense(dist), 0.55, min_samples))


def test_dbscan_border_points_follow_sklearn_order():
    # Point 2 is a border point of two clusters; sklearn gives it to the one seeded first.
    n = 9
    d = np.ones((n, n))
    np.fill_diagonal(d, 0.0)
    for group in ([0, 1, 3, 4], [5, 6, 7, 8]):
        for a in group:
            for b in group:
                d[a, b] = 0.1 if a != b else 0.0
    for core in (1, 6):
        d[2, core] = d[core, 2] = 0.2
    rng = np.random.default_rng(0)
    for trial in range(10):  # every relabelling of the points changes which cluster is seeded first
        perm = np.arange(n) if trial == 0 else rng.permutation(n)
        dp = d[np.ix_(perm, perm)]
        for eps in (0.15, 0.25):
            rows, cols = np.nonzero(dp < 1)
            sparse = sp.csr_matrix((dp[rows, cols], (rows, cols)), shape=(n, n))
            assert sparse.nnz == rows.size  # explicit zeros (diagonal) stored
            expected = sklearn_labels(dp, eps)
            assert same_partition(dbscan_labels(sparse, eps=eps, min_samples=4), expected)
            assert same_partition(dbscan_labels(dp, eps=eps, min_samples=4), expected)


def test_dbscan_random_matrices_including_asymmetric():
    rng = np.random.default_rng(3)
    n = 150
    for symmetric in (True, False):
        for _ in range(3):
            mask = rng.random((n, n)) < 0.06
            vals = rng.random((n, n)).astype(np.float32) * 0.9
            if symmetric:
                mask = mask | mask.T
                vals = np.minimum(vals, vals.T)
            np.fill_diagonal(mask, True)
            np.fill_diagonal(vals, 0.0)
            dense = np.where(mask, vals, 1.0).astype(np.float32)
            rows, cols = np.nonzero(mask)
            sparse = sp.csr_matrix((dense[rows, cols], (rows, cols)), shape=(n, n))
            for eps, ms in ((0.3, 3), (0.5, 4), (0.7, 6)):
                assert same_partition(dbscan_labels(sparse, eps, ms), sklearn_labels(dense, eps, ms))


def test_dbscan_absent_diagonal_means_distance_one():
    d = np.array([[1.0, 0.1, 0.1], [0.1, 0.0, 0.1], [0.1, 0.1, 0.0]], dtype=np.float32)
    sparse = sp.csr_matrix((d[d < 1], np.nonzero(d < 1)[1], np.r_[0, np.cumsum((d < 1).sum(1))]), shape=(3, 3))
    assert same_partition(dbscan_labels(sparse, 0.5, 3), sklearn_labels(d, 0.5, 3))


def test_dbscan_rejects_bad_arguments(case):
    dist = case[4]
    with pytest.raises(UserError, match="eps"):
        dbscan_labels(dist, eps=1.0)
    with pytest.raises(UserError, match="eps"):
        dbscan_labels(dist, eps=-0.1)
    with pytest.raises(UserError, match="min_samples"):
        dbscan_labels(dist, eps=0.5, min_samples=0)
    with pytest.raises(UserError, match="square"):
        dbscan_labels(np.zeros((3, 4)), eps=0.5)


# --------------------------------------------------------------------------- input errors


def test_k1_too_large_is_a_user_error():
    feats = F.normalize(torch.randn(12, 8), dim=1)
    with pytest.raises(UserError, match=r"k1=12 .*12 samples"):
        compute_jaccard_distance(feats, k1=12, k2=6)
    compute_jaccard_distance(feats, k1=11, k2=6)  # N - 1 is fine
    with pytest.raises(UserError, match="k2=8"):
        compute_jaccard_distance(feats, k1=6, k2=8)


def test_nan_features_are_a_user_error():
    feats = torch.randn(40, 8)
    feats[7, 3] = float("nan")
    with pytest.raises(UserError, match=r"NaN.*first bad row: 7"):
        compute_jaccard_distance(feats, k1=10, k2=6)
    feats = torch.randn(40, 8)
    feats[4] = 0
    with pytest.raises(UserError, match="all-zero"):
        compute_jaccard_distance(feats, k1=10, k2=6)
    with pytest.raises(UserError, match="shape"):
        compute_jaccard_distance(torch.randn(40), k1=10)


# --------------------------------------------------------------------------- statistics


def test_cluster_statistics_hand_made():
    sizes = {0: 4, 1: 5, 2: 9, 3: 16, 4: 40, 5: 2}
    labels = np.concatenate([np.full(s, c) for c, s in sizes.items()] + [np.full(6, -1)])
    labels = np.random.default_rng(0).permutation(labels)
    stats = cluster_statistics(labels)
    assert stats.num_samples == 82
    assert stats.num_clusters == 6
    assert stats.num_outliers == 6
    assert (stats.size_min, stats.size_median, stats.size_max) == (2, 7.0, 40)
    assert stats.size_histogram == {"1-3": 1, "4-7": 2, "8-15": 1, "16-31": 1, "32+": 1}
    d = stats.to_dict()
    assert d["num_clusters"] == 6 and d["size_histogram"]["32+"] == 1 and abs(d["outlier_fraction"] - 6 / 82) < 1e-12
    line = stats.text()
    assert "\n" not in line and "clusters=6" in line and "outliers=6/82" in line and "4-7:2" in line


def test_cluster_statistics_all_outliers():
    stats = cluster_statistics(np.full(5, -1))
    assert (stats.num_clusters, stats.num_outliers, stats.size_max) == (0, 5, 0)
    assert "clusters=0" in stats.text()


def test_pseudo_labels_convenience(case):
    feats, k1, k2, _, dist = case
    labels, stats = pseudo_labels(feats, k1=k1, k2=k2, eps=0.6, min_samples=4)  # the same call: the same matrix
    assert np.array_equal(labels, dbscan_labels(dist, eps=0.6, min_samples=4))
    assert stats.num_clusters == labels.max() + 1 and stats.num_outliers == int((labels == -1).sum())


# --------------------------------------------------------------------------- fast mode


def _reduced_kernel() -> str:
    """The reduced-precision CPU kernel the fast-mode tests exercise wherever they run (int8 where it runs)."""
    from hardreid.pseudo_labels.knn import _int8_matmul_available

    return "int8" if _int8_matmul_available() else "bf16"


@pytest.fixture(scope="module")
def fast_case():
    """~2,100 clustered 512-d features; exact and fast (int8 / fp16) Jaccard distances, several kNN blocks.

    The fast distance is computed with the reduced-precision kernel pinned, whatever this CPU's own choice
    (``choose_cpu_kernel`` picks exact on an AVX2-only CPU or under ``ATEN_CPU_CAPABILITY=avx2``)."""
    import hardreid.pseudo_labels.knn as knn

    feats = clustered_features(11, 100, 512, n_outliers=40)
    exact = compute_jaccard_distance(feats, k1=30, k2=6)
    saved = dict(knn._CPU_KERNEL)
    knn._CPU_KERNEL["cpu"] = (_reduced_kernel(), "pinned by the test")
    try:
        fast = compute_jaccard_distance(feats, k1=30, k2=6, mode="fast", block_size=256)
    finally:
        knn._CPU_KERNEL.clear()
        knn._CPU_KERNEL.update(saved)
    return feats, exact, fast


def test_fast_mode_labels_agree_with_exact(fast_case):
    from sklearn.metrics import adjusted_rand_score

    feats, exact, fast = fast_case
    n = feats.shape[0]
    assert isinstance(fast, sp.csr_matrix) and fast.shape == (n, n) and fast.dtype == np.float32
    assert (fast != fast.T).nnz == 0 and np.all(fast.diagonal() == 0.0)
    assert fast.data.min() >= 0.0 and fast.data.max() < 1.0
    for eps in (0.5, 0.6):  # reduced precision by design: an ARI bound (measured 1.0 with AVX-512, AVX2, default)
        ari = adjusted_rand_score(dbscan_labels(exact, eps, 4), dbscan_labels(fast, eps, 4))
        assert ari >= 0.98, (eps, ari)
    labels, stats = pseudo_labels(feats, k1=30, k2=6, eps=0.5, mode="fast")  # one kNN block
    assert adjusted_rand_score(labels, dbscan_labels(fast, 0.5, 4)) >= 0.98 and stats.num_clusters > 50


def test_fast_knn_ranks_like_exact(fast_case):
    from hardreid.pseudo_labels.knn import _fast_knn_candidates, _prepare_features

    feats = fast_case[0]
    f = _prepare_features(feats, 30, 6, 256)
    idx, cos = _fast_knn_candidates(f, 30, 512, precision=_reduced_kernel())
    ref_idx, ref_cos = exact_knn(feats, 30)
    assert not np.array_equal(cos[:, :30].numpy(), ref_cos)  # really the reduced-precision search
    assert np.array_equal(idx[:, 0].numpy(), np.arange(f.shape[0]))  # self first
    recall = np.mean([np.intersect1d(a, b).size for a, b in zip(idx[:, :30].numpy(), ref_idx)]) / 30
    assert recall >= 0.99  # 0.9918 (AVX-512, AVX2, default kernels alike): ~120 of 67,680 neighbours to spare
    # the scores are reduced-precision cosines: close to the exact ones of the same pairs
    # (int8 rounding: ~1e-3 in cosine at D = 512, less for larger D)
    exact_cos = (f[:, None, :] * f[idx[:, :30]]).sum(-1).numpy()
    assert np.abs(cos[:, :30].numpy() - exact_cos).max() < 1e-2  # measured 2.6e-3


def test_int8_codes_keep_dot_products_despite_a_dominant_channel():
    from hardreid.pseudo_labels.knn import _int8_matmul_available, _rotate_quantize

    if not _int8_matmul_available():
        pytest.skip("torch._int_mm is not available on this CPU build")
    g = torch.Generator().manual_seed(2)
    x = torch.randn(300, 200, generator=g)
    x[:, 7] *= 40.0  # one channel much larger than the others: the rotation spreads it
    f = F.normalize(x, dim=1)
    q, scale = _rotate_quantize(f, chunk=64)
    assert q.dtype == torch.int8 and q.shape == (300, 256)  # padded to a multiple of the Hadamard block
    approx = torch._int_mm(q, q.T).double() / scale**2
    assert (approx - (f @ f.T).double()).abs().max() < 5e-3  # int8 rounding, not float order: 3.9e-3 on any kernel


def test_unknown_search_mode_is_a_user_error():
    feats = F.normalize(torch.randn(40, 8), dim=1)
    with pytest.raises(UserError, match=r"'approximate'.*'exact', 'fast'"):
        compute_jaccard_distance(feats, k1=10, k2=6, mode="approximate")
    with pytest.raises(UserError, match="search mode"):
        pseudo_labels(feats, k1=10, k2=6, mode="FAST")


@pytest.mark.cuda
@CUDA
def test_fast_mode_on_cuda_agrees_with_exact(fast_case):
    from sklearn.metrics import adjusted_rand_score

    feats, exact, _ = fast_case
    fast = compute_jaccard_distance(feats.cuda(), k1=30, k2=6, mode="fast", block_size=256)
    ari = adjusted_rand_score(dbscan_labels(exact, 0.5, 4), dbscan_labels(fast, 0.5, 4))
    assert ari >= 0.98


def test_fast_mode_fp16_products_on_cpu_agree_with_exact(fast_case, monkeypatch):
    """CPU counterpart of test_fast_mode_on_cuda_agrees_with_exact: the CUDA branch (fp16 products) run on CPU."""
    from sklearn.metrics import adjusted_rand_score

    import hardreid.pseudo_labels.knn as knn

    assert knn._fast_precision(torch.device("cuda"), 512) == "fp16"  # what CUDA takes
    assert knn._fast_precision(torch.device("cpu"), 256) == "exact"
    feats, exact, fast_int8 = fast_case
    monkeypatch.setattr(knn, "_fast_precision", lambda device, dim: "fp16")  # where _fast_knn_candidates looks it up
    fast = compute_jaccard_distance(feats, k1=30, k2=6, mode="fast", block_size=256)
    assert (fast != exact).nnz > 0 and (fast != fast_int8).nnz > 0  # really another, reduced-precision search
    assert (fast != fast.T).nnz == 0 and np.all(fast.diagonal() == 0.0)
    ari = adjusted_rand_score(dbscan_labels(exact, 0.5, 4), dbscan_labels(fast, 0.5, 4))
    assert ari >= 0.98  # measured 1.0


def test_jaccard_sparse_accumulation_gives_identical_sums(case, monkeypatch):
    import hardreid.pseudo_labels.jaccard as jaccard

    feats, k1, k2, _, dist = case
    monkeypatch.setattr(jaccard, "_DENSE_CELLS_PER_TRIPLET", 0)  # the path taken for wide blocks (large N)
    # both paths add the same terms in the same (array) order with np.bincount: bit for bit equal on any CPU
    sparse_path = compute_jaccard_distance(feats, k1=k1, k2=k2)
    assert np.array_equal(sparse_path.indptr, dist.indptr) and np.array_equal(sparse_path.indices, dist.indices)
    assert np.array_equal(sparse_path.data, dist.data)
