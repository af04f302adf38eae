"""Camera-aware Jaccard distance (CA-Jaccard, CVPR 2024; ``pseudo_labels/ca_jaccard.py``) against a dense reference
written from the paper's definitions, with a planted bug that the comparison catches; its config wiring."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from test_pseudo_labels import REF_ATOL, clustered_features, exact_product_features

import hardreid.pseudo_labels.ca_jaccard as caj
from hardreid.errors import UserError
from hardreid.pseudo_labels import jaccard_to_dense
from hardreid.pseudo_labels.ca_jaccard import camera_aware_lists, compute_camera_aware_jaccard_distance

pytestmark = pytest.mark.exactness  # exact cosines (exact_product_features): the same lists on every kernel set


# --------------------------------------------------------------------------- the dense reference


def dense_lists(f: torch.Tensor, cams: np.ndarray, intra_len: int, inter_len: int,
                split_bug: bool = False) -> tuple[list[list[int]], list[list[int]]]:
    """N_intra(i) (i first, then its same-camera images) and N_inter(i) (other-camera images), each ordered by
    decreasing cosine, ties by index, cut at ``intra_len`` / ``inter_len``: a plain sort of every row.

    ``split_bug``: the planted bug -- the inter-camera list taken from the whole ranking (same camera included)."""
    sim = (f @ f.T).numpy()
    n = len(cams)
    intra, inter = [], []
    for i in range(n):
        others = sorted((j for j in range(n) if j != i), key=lambda j: (-sim[i, j], j))
        intra.append(([i] + [j for j in others if cams[j] == cams[i]])[:intra_len])
        inter.append([j for j in others if split_bug or cams[j] != cams[i]][:inter_len])
    return intra, inter


def dense_reference_ca_jaccard(features: torch.Tensor, cams: np.ndarray, k1_intra: int, k1_inter: int,
                               k2_intra: int, k2_inter: int, split_bug: bool = False) -> np.ndarray:
    """The paper's CA-Jaccard with dense N x N matrices and per-row loops.

    CKRNNs: R(i) = R_intra(i, k1_intra) u R_inter(i, k1_inter), where R_x(i, k) = {j in N_x(i, k) : i in N_x(j, k)}
    and N_x(i, k) holds k + 1 entries (the official code's ``rank[i, :k + 1]``); no 2/3 expansion.
    V[i] = softmax(-(2 - 2 cos)) over R(i). CLQE: V[i] <- mean of V over N_intra(i)[:k2_intra] and
    N_inter(i)[:k2_inter]. Jaccard: 1 - m / (2 - m), m = sum of minima.
    """
    f = F.normalize(features.float(), dim=1)
    n = f.shape[0]
    intra, inter = dense_lists(f, cams, max(k1_intra + 1, k2_intra), max(k1_inter + 1, k2_inter), split_bug)

    def reciprocal(lists: list[list[int]], i: int, k: int) -> list[int]:
        return [j for j in lists[i][: k + 1] if i in lists[j][: k + 1]]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r = np.unique(reciprocal(intra, i, k1_intra) + reciprocal(inter, i, k1_inter))
        dist = 2 - 2 * torch.mm(f[i].unsqueeze(0), f[r].t())
        v[i, r] = F.softmax(-dist, dim=1).view(-1).numpy()
    v_qe = np.zeros_like(v)
    for i in range(n):
        v_qe[i] = np.mean(v[intra[i][:k2_intra] + inter[i][:k2_inter]], axis=0)
    jaccard = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        m = np.minimum(v_qe[i][None, :], v_qe).sum(axis=1)
        jaccard[i] = 1 - m / (2 - m)
    jaccard[jaccard < 0] = 0.0
    return jaccard


# --------------------------------------------------------------------------- cases

CASES = [  # seed, clusters, dim, camera sizes (None: 4 random cameras), k1_intra, k1_inter, k2_intra, k2_inter
    (0, 12, 16, None, 5, 20, 2, 4),  # the paper's values
    (1, 20, 32, None, 3, 8, 3, 3),   # the official warm-up's k2
    (2, 10, 16, "skewed", 5, 20, 2, 4),  # a camera of 1 image, one of 12: short intra and inter lists
]


def camera_ids(seed: int, n: int, kind: str | None) -> np.ndarray:
    g = np.random.default_rng(seed)
    if kind is None:
        return g.integers(0, 4, n)
    cams = np.zeros(n, dtype=np.int64)
    cams[g.choice(n, 13, replace=False)] = 7  # 12 images of camera 7 (fewer than k1_inter + 1 others for them ...)
    cams[np.flatnonzero(cams == 7)[0]] = 3  # ... and camera 3 holds a single image
    return cams


@pytest.fixture(scope="module", params=CASES, ids=[f"seed{c[0]}-{c[3] or 'random'}-k{c[4]}_{c[5]}_{c[6]}_{c[7]}"
                                                   for c in CASES])
def ca_case(request):
    seed, n_clusters, dim, kind, *ks = request.param
    feats = exact_product_features(clustered_features(seed, n_clusters, dim))
    cams = camera_ids(seed, feats.shape[0], kind)
    return feats, cams, ks, compute_camera_aware_jaccard_distance(feats, cams, *ks)


def test_neighbour_lists_are_the_dense_ones(ca_case):
    feats, cams, (k1a, k1e, k2a, k2e), _ = ca_case
    la, le = max(k1a + 1, k2a), max(k1e + 1, k2e)
    intra_idx, intra_cos, inter_idx, inter_cos = camera_aware_lists(feats, cams, la, le, block_size=64)
    ref_intra, ref_inter = dense_lists(feats, cams, la, le)
    for i in range(len(cams)):
        assert intra_idx[i][intra_idx[i] >= 0].tolist() == ref_intra[i]
        assert inter_idx[i][inter_idx[i] >= 0].tolist() == ref_inter[i]
        assert (intra_idx[i] >= 0).sum() == len(ref_intra[i]) and (inter_idx[i] >= 0).sum() == len(ref_inter[i])
    # the cosines that go with them are the plain (unpushed) ones
    valid = inter_idx >= 0
    rows = np.repeat(np.arange(len(cams)), le).reshape(valid.shape)
    sim = (feats @ feats.T).numpy()
    assert np.array_equal(inter_cos[valid], sim[rows[valid], inter_idx[valid]])
    valid = intra_idx >= 0
    rows = np.repeat(np.arange(len(cams)), la).reshape(valid.shape)
    assert np.array_equal(intra_cos[valid], sim[rows[valid], intra_idx[valid]])


def test_distance_matches_dense_reference(ca_case):
    feats, cams, ks, dist = ca_case
    n = feats.shape[0]
    assert isinstance(dist, sp.csr_matrix) and dist.shape == (n, n) and dist.dtype == np.float32
    ref = dense_reference_ca_jaccard(feats, cams, *ks)
    dense = jaccard_to_dense(dist)
    np.testing.assert_allclose(dense, ref, atol=REF_ATOL, rtol=0)
    stored = np.zeros((n, n), dtype=bool)
    coo = dist.tocoo()
    stored[coo.row, coo.col] = True
    assert np.all(np.abs(ref[~stored] - 1.0) <= 1e-6) and np.all(ref[stored] < 1.0)  # absent = distance 1
    assert (dist != dist.T).nnz == 0 and np.all(dist.diagonal() == 0.0)


def test_planted_split_bug_is_caught(ca_case):
    """Negative twin: a reference whose inter-camera lists keep same-camera images differs far beyond the tolerance
    (so the comparison above would catch that bug on our side), and so does ours with the camera push removed."""
    feats, cams, ks, dist = ca_case
    buggy = dense_reference_ca_jaccard(feats, cams, *ks, split_bug=True)
    assert np.abs(jaccard_to_dense(dist) - buggy).max() > 100 * REF_ATOL


def test_unpushed_inter_search_is_caught(ca_case, monkeypatch):
    feats, cams, ks, dist = ca_case
    monkeypatch.setattr(caj, "_OTHER_SIDE", 0.0)  # same-camera images compete in the inter-camera search
    wrong = compute_camera_aware_jaccard_distance(feats, cams, *ks)
    assert np.abs(jaccard_to_dense(wrong) - jaccard_to_dense(dist)).max() > 100 * REF_ATOL


def test_block_size_does_not_change_result(ca_case):
    feats, cams, ks, dist = ca_case
    blocked = compute_camera_aware_jaccard_distance(feats, cams, *ks, block_size=29)
    assert np.array_equal(blocked.indptr, dist.indptr) and np.array_equal(blocked.indices, dist.indices)
    assert np.array_equal(blocked.data, dist.data)


def test_camera_ids_are_labels_only():
    feats = exact_product_features(clustered_features(4, 8, 16))
    cams = np.random.default_rng(4).integers(0, 3, feats.shape[0])
    a = compute_camera_aware_jaccard_distance(feats, cams)
    b = compute_camera_aware_jaccard_distance(feats, torch.from_numpy(cams * 10 + 5))
    assert (a != b).nnz == 0


def test_one_camera_is_intra_camera_reciprocal_sets_only():
    feats = exact_product_features(clustered_features(5, 8, 16))
    cams = np.zeros(feats.shape[0], dtype=np.int64)
    dist = compute_camera_aware_jaccard_distance(feats, cams, 5, 20, 2, 4)
    np.testing.assert_allclose(jaccard_to_dense(dist), dense_reference_ca_jaccard(feats, cams, 5, 20, 2, 4),
                               atol=REF_ATOL, rtol=0)


def test_fast_search_agrees_with_exact():
    from sklearn.metrics import adjusted_rand_score

    from hardreid.pseudo_labels import dbscan_labels

    feats = clustered_features(6, 30, 512, n_dup=0)
    cams = np.random.default_rng(6).integers(0, 3, feats.shape[0])
    exact = compute_camera_aware_jaccard_distance(feats, cams)
    fast = compute_camera_aware_jaccard_distance(feats, cams, mode="fast")
    assert (fast != fast.T).nnz == 0 and np.all(fast.diagonal() == 0.0)
    assert adjusted_rand_score(dbscan_labels(exact, 0.5, 4), dbscan_labels(fast, 0.5, 4)) > 0.95


def test_errors():
    feats = torch.randn(10, 4)
    with pytest.raises(UserError, match="needs the camera id"):
        compute_camera_aware_jaccard_distance(feats, None)
    with pytest.raises(UserError, match="one camera id per image"):
        compute_camera_aware_jaccard_distance(feats, np.zeros(9))
    with pytest.raises(UserError, match=r"k1_inter must be a positive integer.*cluster.k1_inter"):
        compute_camera_aware_jaccard_distance(feats, np.zeros(10), k1_inter=0)
    with pytest.raises(UserError, match="search mode"):
        compute_camera_aware_jaccard_distance(feats, np.zeros(10), mode="approximate")


# --------------------------------------------------------------------------- test-time re-ranking


def loop_ca_re_ranking(q_g, q_q, g_g, cams, k1a, k1e, k2a, k2e, lam, split_bug=False):
    """The official test-time CA-Jaccard re-ranking with loops: the original's normalised distances, lists by a
    stable sort of each row restricted to one side (self first in its intra list), CKRNNs, CLQE, lambda mix.
    ``split_bug``: the planted bug, inter lists that keep same-camera images."""
    num_q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    dist = np.square(full).astype(np.float32)
    dist = (dist / dist.max(axis=0)).T
    n = dist.shape[0]
    intra, inter = [], []
    for i in range(n):
        order = [int(j) for j in np.argsort(dist[i], kind="stable") if j != i]
        intra.append([i] + [j for j in order if cams[j] == cams[i]])
        inter.append([j for j in order if split_bug or cams[j] != cams[i]])

    def reciprocal(lists, i, k):
        return [j for j in lists[i][: k + 1] if i in lists[j][: k + 1]]

    v = np.zeros((n, n))
    for i in range(n):
        idx = sorted(set(reciprocal(intra, i, k1a)) | set(reciprocal(inter, i, k1e)))
        w = np.exp(-dist[i, idx].astype(np.float64))
        v[i, idx] = w / w.sum()
    v = np.stack([v[intra[i][:k2a] + inter[i][:k2e]].mean(axis=0) for i in range(n)])
    out = np.zeros((num_q, n - num_q))
    for i in range(num_q):
        for j in range(num_q, n):
            s = sum(min(v[i, k], v[j, k]) for k in range(n) if v[i, k] != 0 and v[j, k] != 0)
            out[i, j - num_q] = 1 - s / (2 - s)
    return out * (1 - lam) + dist[:num_q, num_q:] * lam


@pytest.mark.parametrize("num_q,num_g,n_cams,ks,lam,block", [
    (6, 30, 3, (5, 20, 2, 4), 0.3, 256),  # the paper's values; fewer than 21 other-camera images: short lists
    (5, 24, 2, (3, 6, 3, 3), 0.3, 4),
    (4, 18, 4, (2, 4, 1, 2), 0.0, 3),
])
def test_camera_aware_re_ranking_matches_loop_reference(num_q, num_g, n_cams, ks, lam, block):
    from hardreid.evaluation import camera_aware_re_ranking

    rng = np.random.default_rng(num_q * 10 + n_cams)
    centres = rng.normal(size=(4, 3)) * 2
    q = centres[rng.integers(0, 4, num_q)] + rng.normal(size=(num_q, 3))
    g = centres[rng.integers(0, 4, num_g)] + rng.normal(size=(num_g, 3))
    q_cams, g_cams = rng.integers(0, n_cams, num_q), rng.integers(0, n_cams, num_g)

    def pairwise(a, b):
        return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))

    q_g, q_q, g_g = pairwise(q, g), pairwise(q, q), pairwise(g, g)
    cams = np.concatenate([q_cams, g_cams])
    expected = loop_ca_re_ranking(q_g, q_q, g_g, cams, *ks, lam)
    got = camera_aware_re_ranking(q_g, q_q, g_g, q_cams, g_cams, *ks, lambda_value=lam, block_size=block)
    assert got.shape == (num_q, num_g) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)  # same float32 normalisation, stable sorts
    buggy = loop_ca_re_ranking(q_g, q_q, g_g, cams, *ks, lam, split_bug=True)  # negative twin
    assert np.abs(got - buggy).max() > 1e-3


def test_feature_distances_camera_aware_needs_cameras():
    from hardreid.evaluation.pipeline import feature_distances

    qf = F.normalize(torch.randn(4, 8), dim=1)
    gf = F.normalize(torch.randn(12, 8), dim=1)
    with pytest.raises(UserError, match="needs the camera"):
        feature_distances(qf, gf, "camera_aware")
    with pytest.raises(UserError, match="unknown re-ranking 'ca'"):
        feature_distances(qf, gf, "ca")
    plain = feature_distances(qf, gf, True)
    assert torch.equal(plain, feature_distances(qf, gf, "standard"))
    cams = (np.arange(4) % 2, np.arange(12) % 3)
    ca = feature_distances(qf, gf, "camera_aware", cams)
    assert ca.shape == (4, 12) and not torch.equal(ca, plain)


# --------------------------------------------------------------------------- config


def test_cluster_epoch_takes_the_camera_aware_distance():
    from hardreid.config import ClusterConfig
    from hardreid.pseudo_labels import cluster_epoch

    feats = exact_product_features(clustered_features(7, 12, 16))
    cams = np.random.default_rng(7).integers(0, 3, feats.shape[0])
    cfg = ClusterConfig(jaccard="camera_aware", k1_intra=4, k1_inter=10, k2_intra=2, k2_inter=3, eps=0.6)
    got = cluster_epoch(feats, cams, cfg)
    expected = compute_camera_aware_jaccard_distance(feats, cams, 4, 10, 2, 3)
    assert (got.distance != expected).nnz == 0
    assert (cluster_epoch(feats, cams, ClusterConfig(eps=0.6)).distance != expected).nnz > 0


def test_config_keys_and_rules():
    from hardreid.config import load_config

    cfg = load_config(None, ["cluster.jaccard=camera_aware"])
    c = cfg.cluster
    assert (c.jaccard, c.k1_intra, c.k1_inter, c.k2_intra, c.k2_inter) == ("camera_aware", 5, 20, 2, 4)
    assert load_config(None).cluster.jaccard == "standard"
    with pytest.raises(UserError, match="cluster.jaccard"):
        load_config(None, ["cluster.jaccard=camera"])
    with pytest.raises(UserError, match="same_camera_penalty.*camera_aware"):
        load_config(None, ["cluster.jaccard=camera_aware", "cluster.same_camera_penalty=1"])
    with pytest.raises(UserError, match="k1_inter"):
        load_config(None, ["cluster.k1_inter=0"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_camera_aware_on_cuda_matches_cpu(ca_case):
    """The searches on the GPU (exact float32 products; exact cosines of ``exact_product_features``): bit for bit."""
    feats, cams, ks, dist = ca_case
    on_gpu = compute_camera_aware_jaccard_distance(feats.cuda(), torch.from_numpy(cams).cuda(), *ks, block_size=64)
    assert np.array_equal(on_gpu.indptr, dist.indptr) and np.array_equal(on_gpu.indices, dist.indices)
    assert np.array_equal(on_gpu.data, dist.data)
