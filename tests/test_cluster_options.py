"""Pseudo-label options of issue 11: label-free diagnostics, eps auto, HDBSCAN, camera-aware features."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components
from sklearn.cluster import HDBSCAN
from sklearn.metrics import adjusted_rand_score

from hardreid.config import ClusterConfig, load_config
from hardreid.errors import UserError
from hardreid.pseudo_labels import (
    auto_eps,
    camera_normalize,
    cluster_diagnostics,
    cluster_epoch,
    collapse_reasons,
    compute_jaccard_distance,
    dbscan_labels,
    exact_knn,
    hdbscan_labels,
    jaccard_to_dense,
    relabel_by_first_occurrence,
)
from hardreid.pseudo_labels.density import hdbscan_input
from hardreid.pseudo_labels.diagnostics import (
    collapse_warning,
    large_cluster_share,
    largest_to_median,
    partition_ari,
    score_decline_warning,
    single_camera_share,
)
from test_pseudo_labels import clustered_features, dense_reference_jaccard, same_partition

# --------------------------------------------------------------------------- diagnostics (hand-made partitions)

LABELS = np.array([0, 0, 0, 0, 0, 1, 1, 2, 2, -1, -1, 3, 3])  # sizes 5, 2, 2, 2; two outliers; 13 images
CAMS = np.array([0, 1, 0, 0, 0, 1, 1, 0, 1, 1, 0, 0, 0])  # cluster 0 and 2: two cameras; 1 and 3: one camera


def test_largest_to_median():
    assert largest_to_median(LABELS) == 5 / 2
    assert largest_to_median(np.array([0, 0, 1, 1, 1, 1, 2, 2, 2])) == 4 / 3
    assert largest_to_median(np.array([-1, -1])) is None


def test_single_camera_share():
    assert single_camera_share(LABELS, CAMS) == 2 / 4
    # outliers' cameras do not count; a data set with one camera has no such diagnostic
    assert single_camera_share(np.array([0, 0, -1]), np.array([0, 0, 1])) == 1.0
    assert single_camera_share(LABELS, np.zeros_like(CAMS)) is None
    assert single_camera_share(np.full(4, -1), np.array([0, 1, 0, 1])) is None
    with pytest.raises(ValueError, match="differ in shape"):
        single_camera_share(LABELS, CAMS[:-1])


def test_large_cluster_share_counts_all_images():
    assert large_cluster_share(LABELS, 4) == 5 / 13  # outliers are in the denominator
    assert large_cluster_share(LABELS, 5) == 0.0  # strictly larger than the limit
    assert large_cluster_share(LABELS, 1) == 11 / 13
    assert large_cluster_share(np.zeros(0, dtype=int), 1) == 0.0


def test_partition_ari_treats_outliers_as_singletons():
    assert partition_ari(LABELS, None) is None
    renamed = np.where(LABELS >= 0, 3 - LABELS, -1)
    assert partition_ari(renamed, LABELS) == pytest.approx(1.0)
    previous, now = np.array([0, 0, -1, -1, 1, 1]), np.array([0, 0, 2, 2, 1, 1])  # two outliers became a cluster
    expected = adjusted_rand_score([0, 0, 2, 3, 1, 1], [0, 0, 2, 2, 1, 1])
    assert partition_ari(now, previous) == pytest.approx(expected) and expected < 1
    with pytest.raises(ValueError, match="different images"):
        partition_ari(now, previous[:-1])


def test_collapse_reasons_and_warning():
    diag = cluster_diagnostics(LABELS, CAMS, LABELS, size_limit=4)
    assert diag.to_dict() == {"largest_to_median": 2.5, "single_camera_share": 0.5, "large_cluster_share": 5 / 13,
                              "size_limit": 4.0, "partition_ari": pytest.approx(1.0)}
    assert collapse_reasons(diag, warn_large_share=0.4, warn_single_camera_share=0.5) == {}
    reasons = collapse_reasons(diag, warn_large_share=0.3, warn_single_camera_share=0.4)
    assert set(reasons) == {"large_clusters", "one_camera"}
    assert "38% of the images are in clusters of more than 4 images" in reasons["large_clusters"]
    line = collapse_warning(reasons, eps=0.55, min_samples=4)
    assert "\n" not in line and "cluster.eps (now 0.55)" in line and "cluster.algorithm=hdbscan" in line
    assert "cluster.camera_normalize=mean" in line and "method.hard_samples=[camera_proxy]" in line
    assert "try a lower cluster.eps (now 0.55), cluster.algorithm=hdbscan, a camera-aware loss" in line
    assert "cluster.min_samples=2 if each person has few images" in line
    camera_only = collapse_warning({"one_camera": "x"}, min_samples=2)  # already 2: not suggested again
    assert "camera_normalize" in camera_only and "cluster.eps" not in camera_only
    assert "try a camera-aware loss (method.hard_samples=[camera_proxy]), cluster.camera_normalize=mean (" in camera_only
    # one camera in the data: never a one-camera warning
    single = cluster_diagnostics(LABELS, np.zeros_like(CAMS), size_limit=100)
    assert collapse_reasons(single, 0.2, 0.0) == {}


def test_score_decline_warning_reads_the_history():
    rows = [{"epoch": 1, "mAP": 6.0, "collapse_warning": True}, {"epoch": 2, "collapse_warning": False},
            {"epoch": 3, "mAP": 7.5, "collapse_warning": True}, {"epoch": 4, "mAP": 1.0, "collapse_warning": False}]
    line = score_decline_warning(rows)
    assert line.startswith("training made the model worse: mAP 6.0 after epoch 1, 1.0 after epoch 4")
    assert "collapsed at epoch(s) 1,3" in line and "best.pth holds epoch 3 (mAP 7.5)" in line and "\n" not in line
    quiet = [{**row, "collapse_warning": False} for row in rows]
    assert "stayed below their thresholds" in score_decline_warning(quiet)
    assert score_decline_warning([*rows[:3], {"epoch": 4, "mAP": 6.0}]) is None  # ends level: no warning
    assert score_decline_warning(rows[:2]) is None  # one evaluation: nothing to compare
    assert score_decline_warning([]) is None


def test_score_decline_warning_compares_with_the_start():
    rows = [{"epoch": 1, "mAP": 2.0}, {"epoch": 2, "mAP": 2.4}, {"epoch": 3, "mAP": 2.2}]
    assert score_decline_warning(rows) is None  # above the first evaluated epoch ...
    line = score_decline_warning(rows, start={"epoch": 0, "mAP": 2.7})  # ... but below the model it started from
    assert line.startswith("training made the model worse: mAP 2.7 before training, 2.2 after epoch 3")
    assert "no epoch beat the start: best.pth holds epoch 2 (mAP 2.4)" in line
    line = score_decline_warning(rows, start={"epoch": 0, "mAP": 2.3})  # epoch 2 beat the start, epoch 3 did not
    assert "mAP 2.3 before training" in line and "best.pth holds epoch 2 (mAP 2.4)" in line and "no epoch" not in line
    assert score_decline_warning(rows, start={"epoch": 0, "mAP": 2.2}) is None  # ends level with the start
    assert score_decline_warning(rows[:1], start={"epoch": 0, "mAP": 3.0}) is not None  # one epoch: start counts
    assert score_decline_warning(rows, start={"epoch": 0}) is None  # a start without the metric: first epoch stands in


# --------------------------------------------------------------------------- eps auto


def naive_auto_eps(dense: np.ndarray, rho: float) -> float:
    """The SSG / MMT code on the dense matrix: mean of the rho fraction of smallest nonzero upper-triangle distances."""
    tri = np.triu(dense, 1)
    tri = np.sort(tri[np.nonzero(tri)], axis=None)
    top = max(1, int(np.round(rho * tri.size)))
    return float(tri[:top].astype(np.float64).mean())


@pytest.fixture(scope="module")
def blobs():
    feats = clustered_features(1, 20, 64)  # with exact duplicates: zero distances, left out by the rule
    dist = compute_jaccard_distance(feats, k1=30, k2=6)
    return feats, dist, jaccard_to_dense(dist)


@pytest.mark.parametrize("rho", [1.6e-3, 0.01, 0.5, 0.95])  # 0.5 and 0.95 reach the absent pairs (distance 1)
def test_auto_eps_matches_the_dense_rule(blobs, rho):
    _, dist, dense = blobs
    assert (dense[np.triu_indices_from(dense, 1)] == 0).any()
    assert auto_eps(dist, rho) == pytest.approx(naive_auto_eps(dense, rho), abs=1e-6)


def test_auto_eps_errors():
    dist = sp.csr_matrix((np.zeros(3, dtype=np.float32), (np.arange(3), np.arange(3))), shape=(3, 3))
    with pytest.raises(UserError, match="no pair of the 3 images shares"):
        auto_eps(dist, 0.5)
    with pytest.raises(UserError, match="cluster.eps_rho=0"):
        auto_eps(dist, 0.0)


def test_cluster_epoch_eps_auto_is_dbscan_at_the_rule(blobs):
    feats, dist, _ = blobs
    cfg = ClusterConfig(eps="auto", eps_rho=0.01)
    out = cluster_epoch(feats, np.zeros(len(feats), dtype=int), cfg)
    assert out.eps == pytest.approx(auto_eps(dist, 0.01))
    assert np.array_equal(out.labels, dbscan_labels(dist, out.eps, 4))
    assert out.metrics()["eps"] == out.eps and "eps 0." in out.text()


# --------------------------------------------------------------------------- HDBSCAN


def sklearn_dense_hdbscan(dense: np.ndarray, min_samples: int, min_cluster_size: int, selection: str = "eom"):
    model = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min_samples, metric="precomputed",
                    cluster_selection_method=selection, copy=True)
    return model.fit(dense.astype(np.float64))


HDBSCAN_CASES = [(0, 12, 16, 20), (1, 20, 64, 30), (3, 25, 32, 30)]  # seed 1: three components of 33+ images


@pytest.fixture(scope="module", params=HDBSCAN_CASES, ids=[f"seed{c[0]}" for c in HDBSCAN_CASES])
def hdb_case(request):
    seed, clusters, dim, k1 = request.param
    feats = clustered_features(seed, clusters, dim, n_dup=0)
    dist = compute_jaccard_distance(feats, k1=k1, k2=6)
    n_comp, comp = connected_components(dist, directed=False)
    assert np.bincount(comp).min() >= 4  # connected, or split into pieces no smaller than min_cluster_size
    return dist, jaccard_to_dense(dist), n_comp


@pytest.mark.parametrize("min_samples,min_cluster_size", [(1, 2), (2, 2), (2, 4)])
@pytest.mark.parametrize("selection", ["eom", "leaf"])
def test_hdbscan_equals_dense_without_ties(hdb_case, min_samples, min_cluster_size, selection):
    dist, dense, _ = hdb_case
    ours = hdbscan_labels(dist, min_samples, min_cluster_size, selection)
    ref = sklearn_dense_hdbscan(dense, min_samples, min_cluster_size, selection).labels_
    assert (ours >= 0).sum() > dist.shape[0] // 3
    assert same_partition(ours, relabel_by_first_occurrence(ref))


def test_hdbscan_input_has_the_dense_hierarchy(hdb_case):
    """min_samples 4 (ties): the same DBSCAN* partition as the dense matrix at every cut of the hierarchy."""
    dist, dense, n_comp = hdb_case
    ours = HDBSCAN(min_cluster_size=4, min_samples=4, metric="precomputed", copy=True).fit(hdbscan_input(dist, 4))
    ref = sklearn_dense_hdbscan(dense, 4, 4)
    for cut in (0.3, 0.5, 0.6, 0.7, 0.8, 0.9, 0.99):
        assert same_partition(relabel_by_first_occurrence(ours.dbscan_clustering(cut, min_cluster_size=4)),
                              relabel_by_first_occurrence(ref.dbscan_clustering(cut, min_cluster_size=4)))
    if n_comp == 1:  # a connected graph: the top of the hierarchy is the same single cluster
        assert (ours.dbscan_clustering(0.999, 4) == 0).all()
    labels = hdbscan_labels(dist, 4, 4)
    assert adjusted_rand_score(labels, ref.labels_) > 0.8  # ties aside, the same clusters


def test_hdbscan_reads_absent_pairs_as_far_not_missing():
    feats = clustered_features(2, 8, 32)  # many small components and exact duplicates (zero distances)
    dist = compute_jaccard_distance(feats, k1=10, k2=1)
    assert connected_components(dist, directed=False)[0] > 1
    with pytest.raises(ValueError):  # scikit-learn on the raw matrix: missing entries are not edges
        HDBSCAN(min_cluster_size=4, min_samples=4, metric="precomputed", copy=True).fit(dist)
    padded = hdbscan_input(dist, 4)
    assert abs(padded - padded.T).max() == 0 and np.diff(padded.indptr).min() >= 4
    stored = dist.tocoo()
    kept = np.asarray(padded[stored.row, stored.col]).ravel()
    assert (stored.data == 0).sum() > len(feats)  # the diagonal and duplicate pairs
    np.testing.assert_array_equal(kept, np.where(stored.data == 0, 1e-12, stored.data.astype(np.float64)))  # zeros: tiny
    extra = padded - sp.csr_matrix((kept, (stored.row, stored.col)), shape=padded.shape)
    extra.eliminate_zeros()
    assert np.all(extra.data == 1.0)  # everything added is "far": distance 1
    labels = hdbscan_labels(dist, 4, 4)
    dup = np.flatnonzero((jaccard_to_dense(dist) == 0).sum(axis=1) > 1)  # images with an exact duplicate
    assert labels.max() >= 2 and (labels[dup] >= 0).mean() > 0.5


def test_hdbscan_argument_errors(blobs):
    _, dist, _ = blobs
    with pytest.raises(UserError, match="hdbscan_selection"):
        hdbscan_labels(dist, 4, 4, "excess")
    with pytest.raises(UserError, match="minimum cluster size >= 2"):
        hdbscan_labels(dist, 4, 1)


# --------------------------------------------------------------------------- camera-aware features


def naive_camera_normalize(features: torch.Tensor, camids: np.ndarray, mode: str) -> np.ndarray:
    f = F.normalize(features.double(), dim=1).numpy()
    out = np.zeros_like(f)
    for cam in np.unique(camids):
        rows = camids == cam
        x = f[rows] - f[rows].mean(axis=0)
        if mode == "standardize":
            x = x / np.sqrt(x.var(axis=0) + 1e-5)
        out[rows] = x
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.mark.parametrize("mode", ["mean", "standardize"])
def test_camera_normalize_matches_naive(mode):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(60, 24, generator=g) * 3 + 1
    cams = np.repeat([2, 0, 5], 20)
    feats[cams == 0] += 4 * torch.randn(24, generator=g)  # a strong per-camera offset
    out = camera_normalize(feats, cams, mode)
    np.testing.assert_allclose(out.numpy(), naive_camera_normalize(feats, cams, mode), atol=1e-5)
    assert torch.allclose(out.norm(dim=1), torch.ones(60))


def test_camera_normalize_removes_a_camera_cast():
    """Two cameras add different offsets to the same people: after mean removal they (nearly) match again.

    Not exactly: the rows are L2-normalised first (the trainer's features are), which scales each offset a little.
    """
    g = torch.Generator().manual_seed(1)
    people = F.normalize(torch.randn(30, 32, generator=g), dim=1)
    cast = torch.randn(2, 32, generator=g) * 2
    feats = torch.cat([people + cast[0], people + cast[1]])
    cams = np.repeat([0, 1], 30)
    plain = F.normalize(feats, dim=1)
    fixed = camera_normalize(feats, cams, "mean")
    same_person = lambda x: (x[:30] * x[30:]).sum(dim=1).mean()  # noqa: E731
    assert same_person(fixed) > 0.95 and same_person(plain) < 0.5


def test_camera_normalize_errors_and_none():
    feats = torch.randn(5, 4)
    assert camera_normalize(feats, np.zeros(5), "none") is feats
    with pytest.raises(UserError, match="unknown cluster.camera_normalize"):
        camera_normalize(feats, np.zeros(5), "bn")
    with pytest.raises(UserError, match="one camera id per image"):
        camera_normalize(feats, np.zeros(4), "mean")
    with pytest.raises(UserError, match="equals the mean of its camera 1"):
        camera_normalize(feats, np.array([0, 0, 0, 0, 1]), "mean")


@pytest.fixture(scope="module")
def camera_case():
    feats = clustered_features(3, 25, 32)  # duplicates: exact ties in the ranking
    g = torch.Generator().manual_seed(3)
    cams = torch.randint(0, 3, (feats.shape[0],), generator=g).numpy()
    return feats, cams


@pytest.mark.parametrize("penalty", [0.3, 4.0])
def test_same_camera_penalty_matches_dense_reference(camera_case, penalty):
    feats, cams = camera_case
    ref = dense_reference_jaccard(feats, 30, 6, cams, penalty)
    dist = compute_jaccard_distance(feats, k1=30, k2=6, camids=cams, same_camera_penalty=penalty)
    np.testing.assert_allclose(jaccard_to_dense(dist), ref, atol=1e-5, rtol=0)
    plain = jaccard_to_dense(compute_jaccard_distance(feats, k1=30, k2=6))
    assert np.abs(plain - ref).max() > 0.1
    # many blocks (blocked top lists): the same result.  Without exact duplicates: their products, made in
    # different blocks, may differ in the last bit and swap two tied neighbours (as without a penalty)
    unique = clustered_features(3, 25, 32, n_dup=0)
    cams = cams[: len(unique)]
    one = compute_jaccard_distance(unique, k1=30, k2=6, camids=cams, same_camera_penalty=penalty)
    many = compute_jaccard_distance(unique, k1=30, k2=6, block_size=37, camids=cams, same_camera_penalty=penalty)
    np.testing.assert_allclose(jaccard_to_dense(many), jaccard_to_dense(one), atol=1e-6, rtol=0)


def test_penalty_four_puts_other_cameras_first(camera_case):
    """lambda = 4: every query's first k1 neighbours come from other cameras (each camera has more than k1 images)."""
    feats, cams = camera_case
    assert np.bincount(cams).min() > 2 * 30
    idx, _ = exact_knn(feats, 31, camids=cams, same_camera_penalty=4.0)
    assert (idx[:, 0] == np.arange(len(cams))).all() and (cams[idx[:, 1:]] != cams[:, None]).all()
    plain, _ = exact_knn(feats, 31)
    assert (cams[plain[:, 1:]] == cams[:, None]).mean() > 0.2


def test_penalty_in_fast_mode_follows_exact():
    feats = clustered_features(1, 20, 512, n_dup=0)  # D >= 512: the int8 search on CPU
    cams = np.arange(feats.shape[0]) % 2
    exact = compute_jaccard_distance(feats, 30, 6, camids=cams, same_camera_penalty=1.0)
    fast = compute_jaccard_distance(feats, 30, 6, mode="fast", camids=cams, same_camera_penalty=1.0)
    a, b = dbscan_labels(exact, 0.6, 4), dbscan_labels(fast, 0.6, 4)
    assert adjusted_rand_score(a, b) > 0.95
    assert not np.array_equal(a, dbscan_labels(compute_jaccard_distance(feats, 30, 6), 0.6, 4))


def test_penalty_errors():
    feats = torch.randn(10, 4)
    with pytest.raises(UserError, match="needs the camera id"):
        compute_jaccard_distance(feats, 3, 2, same_camera_penalty=1.0)
    with pytest.raises(UserError, match=r"must be a number in \[0, 4\]"):
        compute_jaccard_distance(feats, 3, 2, camids=np.zeros(10), same_camera_penalty=5.0)
    with pytest.raises(UserError, match="one camera id per image"):
        compute_jaccard_distance(feats, 3, 2, camids=np.zeros(9), same_camera_penalty=1.0)


# --------------------------------------------------------------------------- cluster_epoch and the config


def test_config_accepts_eps_auto_and_numbers(tmp_path):
    assert load_config(None, ["cluster.eps=auto"]).cluster.eps == "auto"
    assert load_config(None, ["cluster.eps=0.45"]).cluster.eps == 0.45
    (tmp_path / "c.yaml").write_text("cluster:\n  eps: auto\n  algorithm: hdbscan\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert (cfg.cluster.eps, cfg.cluster.algorithm) == ("auto", "hdbscan")


@pytest.mark.parametrize("override,message", [
    ({"eps": "automatic"}, r"'cluster.eps' must be a number in \(0, 1\) or auto, got 'automatic'"),
    ({"eps": 1.2}, r"'cluster.eps' must be a number in \(0, 1\) or auto, got 1.2"),
    ({"algorithm": "optics"}, "'cluster.algorithm' must be one of dbscan, hdbscan, got 'optics'"),
    ({"camera_normalize": "bn"}, "'cluster.camera_normalize' must be one of none, mean, standardize"),
    ({"same_camera_penalty": -1.0}, r"'cluster.same_camera_penalty' must be a number in \[0, 4\], got -1.0"),
    ({"hdbscan_selection": "x"}, "'cluster.hdbscan_selection' must be one of eom, leaf"),
])
def test_cluster_epoch_checks_the_config(override, message):
    cfg = ClusterConfig(**override)
    with pytest.raises(UserError, match=message):
        cluster_epoch(torch.randn(40, 8), np.zeros(40), cfg)


def test_cluster_epoch_options_and_diagnostics(blobs):
    feats, _, _ = blobs
    one_camera = np.zeros(len(feats), dtype=int)
    one_camera[0] = 1  # two cameras in the data, but (nearly) every cluster holds one camera only
    first = cluster_epoch(feats, one_camera, ClusterConfig(eps=0.6))
    assert first.diagnostics.partition_ari is None and first.metrics()["collapse_warning"] is True
    assert list(first.reasons) == ["one_camera"] and "camera_normalize" in first.warning
    cams = np.arange(len(feats)) % 2
    again = cluster_epoch(feats, cams, ClusterConfig(eps=0.6), first.labels)
    assert again.diagnostics.partition_ari == pytest.approx(1.0) and again.warning is None
    assert again.diagnostics.size_limit == 100 and again.metrics()["collapse_warning"] is False
    for cfg in (ClusterConfig(algorithm="hdbscan"), ClusterConfig(camera_normalize="standardize", same_camera_penalty=2.0),
                ClusterConfig(eps="auto", eps_rho=0.01, camera_normalize="mean")):
        out = cluster_epoch(feats, cams, cfg, first.labels)
        assert out.stats.num_clusters > 5 and out.labels.shape == (len(feats),)
        assert (out.eps is None) == (cfg.algorithm == "hdbscan")
        assert 0 < out.diagnostics.partition_ari < 1
