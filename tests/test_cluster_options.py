"""Pseudo-label options of issue 11: label-free diagnostics, eps auto, HDBSCAN, camera-aware features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
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
from test_pseudo_labels import (
    REF_ATOL,
    clustered_features,
    dense_reference_jaccard,
    exact_product_features,
    same_partition,
)

pytestmark = pytest.mark.exactness  # run again under other kernels and thread counts (dev.py kernels)

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
    assert ("try a lower cluster.eps (now 0.55), cluster.algorithm=hdbscan, camera-aware pseudo labels "
            "(cluster.jaccard=camera_aware model.camera_bn=true, or both auto as in the CPU configs), a camera-aware "
            "loss") in line
    assert "cluster.min_samples=2 if each person has few images" in line
    # labels that already come from the camera-aware distance: the advice does not name it again
    camera_only = collapse_warning({"one_camera": "x"}, min_samples=2, jaccard="camera_aware")  # min_samples too
    assert "camera_normalize" in camera_only and "cluster.eps" not in camera_only and "cluster.jaccard" not in camera_only
    assert "try a camera-aware loss (method.hard_samples=[camera_proxy]), cluster.camera_normalize=mean (" in camera_only
    assert "try camera-aware pseudo labels (cluster.jaccard=camera_aware" in collapse_warning({"one_camera": "x"},
                                                                                              jaccard="standard")
    # one camera in the data: never a one-camera warning
    single = cluster_diagnostics(LABELS, np.zeros_like(CAMS), size_limit=100)
    assert collapse_reasons(single, 0.2, 0.0) == {}


def test_score_decline_warning_reads_the_history():
    rows = [{"epoch": 1, "mAP": 6.0, "collapse_warning": True}, {"epoch": 2, "collapse_warning": False},
            {"epoch": 3, "mAP": 7.5, "collapse_warning": True}, {"epoch": 4, "mAP": 1.0, "collapse_warning": False}]
    line = score_decline_warning(rows)
    assert line.startswith("the score fell during training: mAP 6.0 after epoch 1, 1.0 after epoch 4 (the model "
                           "before training was not scored")  # issue 24: no claim about a start that was not scored
    started = score_decline_warning(rows, start={"epoch": 0, "mAP": 5.0})
    assert started.startswith("training made the model worse: mAP 5.0 before training, 1.0 after epoch 4")
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
    # one matrix, two float64 sums of the same float32 values in different orders: ~1e-13 apart on any CPU
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
    # cluster_epoch makes the same compute_jaccard_distance call (k1 30, k2 6, block 4096) on the same features:
    # the same float operations, so the same matrix bit for bit, and exact equalities hold on any CPU
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


TIED_CASES = [(0, 12, 16, 20), (1, 20, 64, 30), (3, 25, 32, 30)]  # seed 1: three components of 33+ images


@pytest.fixture(scope="module", params=TIED_CASES, ids=[f"seed{c[0]}" for c in TIED_CASES])
def hdb_case(request):
    """Matrices as the trainer makes them (k2 = 6, outliers): their hierarchies have ties (test_margin_check_...)."""
    seed, clusters, dim, k1 = request.param
    feats = clustered_features(seed, clusters, dim, n_dup=0)
    dist = compute_jaccard_distance(feats, k1=k1, k2=6)
    n_comp, comp = connected_components(dist, directed=False)
    assert np.bincount(comp).min() >= 4  # connected, or split into pieces no smaller than min_cluster_size
    return dist, jaccard_to_dense(dist), n_comp


# Exact equality of the two HDBSCAN paths needs a hierarchy without ties, on every CPU (see the test's docstring).
MARGIN = 1e-5  # relative; a float32 ulp is <= 1.2e-7 of a value
MARGIN_CASES = [(22, 12, 16, 20, 2), (13, 16, 32, 30, 4), (10, 20, 64, 40, 8)]  # seed, blobs, dim, k1, smallest blob
HDBSCAN_SETTINGS = [(1, 2), (2, 2), (2, 4)]  # (min_samples, min_cluster_size)


def margin_blobs(seed: int, n_clusters: int, dim: int, min_size: int) -> torch.Tensor:
    """Blobs on the sphere as clustered_features (sizes min_size-40, varying spread), without outliers or duplicates,
    drawn with numpy's generator (torch.randn's CPU kernels give other numbers under ATEN_CPU_CAPABILITY=default than
    with AVX2) and made exact_product_features: the same rows and the same exact cosines on every machine."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(n_clusters):
        center = rng.standard_normal(dim)
        center /= math.sqrt(math.fsum((center * center).tolist()))
        size, spread = int(rng.integers(min_size, 41)), 0.2 + 0.8 * rng.random()
        parts.append(center + spread * rng.standard_normal((size, dim)) / math.sqrt(dim))
    x = np.concatenate(parts)
    return exact_product_features(x[rng.permutation(len(x))])


def mutual_reachability(dense: np.ndarray, min_samples: int) -> np.ndarray:
    """scikit-learn's: ``max(d_ij, core_i, core_j)``, core = distance to the min_samples-th nearest, itself included."""
    core = np.partition(dense, min_samples - 1, axis=1)[:, min_samples - 1]
    return np.maximum(dense, np.maximum(core[:, None], core[None, :]))


def hierarchy_margins(dense: np.ndarray, min_samples: int, min_cluster_size: int) -> tuple[float, float, float]:
    """How far HDBSCAN's decisions on ``dense`` are from a tie: (lowest merge height, smallest relative gap between
    two merge heights, smallest relative margin of an eom comparison).

    The merge heights are the weights of a minimum spanning tree of the mutual reachability graph (the same for
    every such tree).  Distinct heights make the single-linkage tree unique: whatever order a sort leaves equal
    weights in, nothing is equal.  The condensed tree and the eom selection (a cluster is kept unless its
    children's stabilities sum to more) follow scikit-learn's ``_condense_tree`` / ``_get_clusters``; a
    comparison's margin is |children - cluster| over the sum of (lambda + birth) * size of all terms in it, so a
    relative change r of the heights moves it by at most r.
    """
    n = dense.shape[0]
    mr = mutual_reachability(dense.astype(np.float64), min_samples)
    iu = np.triu_indices(n, 1)
    low = float(mr[iu].min())
    if low <= 0:  # scipy's spanning tree would read zero weights as missing edges
        return low, 0.0, 0.0
    tree = minimum_spanning_tree(sp.csr_matrix((mr[iu], iu), shape=(n, n))).tocoo()
    order = np.argsort(tree.data, kind="stable")
    heights = tree.data[order]
    gap = float((np.diff(heights) / heights[1:]).min())
    up, size, joined = np.arange(2 * n - 1), np.ones(2 * n - 1, dtype=np.int64), []

    def root(i: int) -> int:
        while up[i] != i:
            up[i] = up[up[i]]
            i = up[i]
        return i

    for t, (i, j) in enumerate(zip(tree.row[order], tree.col[order])):  # node n + t joins the t-th lowest edge
        a, b = root(i), root(j)
        up[a] = up[b] = n + t
        size[n + t] = size[a] + size[b]
        joined.append((a, b))
    birth, leave, kids = [0.0], [[]], [[]]  # per condensed cluster (0: the root): (lambda, images) leaving it
    todo = [(2 * n - 2, 0)]
    while todo:
        node, c = todo.pop()
        lam = 1.0 / heights[node - n]
        split = all(size[p] >= min_cluster_size for p in joined[node - n])
        for p in joined[node - n]:
            if split:  # two new clusters, born at lam
                birth.append(lam)
                leave.append([])
                kids.append([])
                kids[c].append(len(birth) - 1)
                leave[c].append((lam, size[p]))
                todo.append((p, len(birth) - 1))
            elif size[p] >= min_cluster_size:  # cluster c goes on
                todo.append((p, c))
            else:  # p's images fall out of c
                leave[c].append((lam, size[p]))
    stability = [sum((lam - birth[c]) * k for lam, k in leave[c]) for c in range(len(birth))]
    scale = [sum((lam + birth[c]) * k for lam, k in leave[c]) for c in range(len(birth))]
    best, margin = list(stability), math.inf
    for c in range(len(birth) - 1, 0, -1):  # children were created after their parent; the root is never selected
        below = sum(best[k] for k in kids[c])
        scale[c] += sum(scale[k] for k in kids[c])
        margin = min(margin, abs(below - stability[c]) / scale[c])
        best[c] = max(below, stability[c])
    return low, gap, margin


@pytest.fixture(scope="module", params=MARGIN_CASES, ids=[f"seed{c[0]}-dim{c[2]}" for c in MARGIN_CASES])
def margin_case(request):
    seed, clusters, dim, k1, min_size = request.param
    dist = compute_jaccard_distance(margin_blobs(seed, clusters, dim, min_size), k1=k1, k2=1)
    n_comp, comp = connected_components(dist, directed=False)
    assert n_comp <= 2 and np.bincount(comp).min() >= 4  # at most one join at distance 1, of two real clusters
    dense = jaccard_to_dense(dist)
    for min_samples, min_cluster_size in HDBSCAN_SETTINGS:
        low, gap, eom = hierarchy_margins(dense, min_samples, min_cluster_size)
        assert low > 1e-6 and gap > MARGIN and eom > MARGIN, (min_samples, min_cluster_size, low, gap, eom)
    return dist, dense


@pytest.mark.parametrize("min_samples,min_cluster_size", HDBSCAN_SETTINGS)
@pytest.mark.parametrize("selection", ["eom", "leaf"])
def test_hdbscan_equals_dense_without_ties(margin_case, min_samples, min_cluster_size, selection):
    """Exactly scikit-learn's dense HDBSCAN, on data whose hierarchy provably has no ties on any CPU.

    Both paths read the same float32 distances but build the hierarchy differently (dense: Prim; ours: Kruskal on
    the padded sparse graph), and scikit-learn sorts its edges with numpy's default quicksort: unstable, and on x86
    an AVX-512 or AVX2 kernel (x86-simd-sort) chosen at run time, which leave *equal* weights in different orders.
    With ties the labels then depend on the CPU: the former data (seed 1, k2 = 6) failed with AVX2; its spanning
    tree has equal weights 2/3 and 0.8 (outliers, whose expanded row is made of whole sixths of their neighbours'
    rows, are at exactly these distances from dozens of images) and 0.0453 (images with the same k2 nearest
    neighbours have equal rows, hence equal distances to others).  Here:

    * exact_product_features: the float32 cosines are exact, so every CPU finds the same neighbours, and the
      distances made from them in float64 differ between CPUs by at most one float32 ulp (1.2e-7 relative);
    * k2 = 1 (query expansion makes both kinds of ties above), no outliers (images sharing no neighbour are at
      distance 1 from all: ties), at most two components (a single join at distance 1);
    * ``margin_case`` checks that the merge heights are >= 1e-6, pairwise more than MARGIN = 1e-5 apart (relative,
      80 ulps) for min_samples 1 and 2, and that no eom comparison is closer than MARGIN.

    So no CPU's rounding can make two heights equal or flip a stability comparison: every sort gives the same
    single-linkage tree and both paths the same labels.  test_hdbscan_comparison_catches_... shows the comparison
    catches a real bug, test_margin_check_finds_the_ties_... that the check rejects the tied matrices.
    """
    dist, dense = margin_case
    ours = hdbscan_labels(dist, min_samples, min_cluster_size, selection)
    ref = sklearn_dense_hdbscan(dense, min_samples, min_cluster_size, selection).labels_
    assert (ours >= 0).sum() > dist.shape[0] // 3
    assert same_partition(ours, relabel_by_first_occurrence(ref))


@pytest.mark.parametrize("selection", ["eom", "leaf"])
def test_hdbscan_comparison_catches_an_off_by_one_core_distance(margin_case, monkeypatch, selection):
    """Negative twin: the comparison above fails when hdbscan_labels computes core distances from k instead of k - 1
    other images (min_samples + 1, as a port that does not count the point itself would).  Planted at min_samples
    2 (-> 3), where it changes the partition of every case; 1 -> 2 leaves these min_cluster_size 2 partitions as
    they are."""
    import sklearn.cluster

    dist, dense = margin_case
    ref = relabel_by_first_occurrence(sklearn_dense_hdbscan(dense, 2, 2, selection).labels_)
    assert same_partition(hdbscan_labels(dist, 2, 2, selection), ref)
    monkeypatch.setattr(sklearn.cluster, "HDBSCAN", lambda **kw: HDBSCAN(**{**kw, "min_samples": kw["min_samples"] + 1}))
    assert not same_partition(hdbscan_labels(dist, 2, 2, selection), ref)


def test_margin_check_finds_the_ties_of_k2_6_matrices(hdb_case):
    """The check of ``margin_case`` rejects the matrices test_hdbscan_equals_dense_without_ties used before: with
    query expansion and outliers their hierarchies have exactly equal merge heights (and zero distances)."""
    _, dense, _ = hdb_case
    low, gap, _ = hierarchy_margins(dense, 1, 2)
    assert low <= 1e-6 or gap <= MARGIN


def test_hdbscan_input_has_the_dense_hierarchy(hdb_case):
    """min_samples 4 (ties): the same DBSCAN* partition as the dense matrix at every cut of the hierarchy.

    A cut's partition (components of the merges below it) does not depend on the order of equal weights, so it is
    exact on any CPU.  The HDBSCAN labels do (test_hdbscan_equals_dense_without_ties): hence an ARI bound, which
    holds with margin -- with the edges' ties put in random orders (15 tries, as any sort might) the ARI stayed
    >= 0.968 on all three cases (0.99 with this machine's sort).
    """
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
    # ties: the labels depend on the sort's order of equal weights; with random orders (15 tries): 15 clusters
    # and 83% of the duplicates clustered every time
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
    # float32 vs float64: every output is a few dozen float32 roundings (2^-24 relative) from the float64 value,
    # amplified by at most 1 / 0.49 (the smallest centred row); measured <= 1.1e-7 with AVX-512, AVX2 and default
    # kernels, 90x below atol
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
    assert same_person(fixed) > 0.95 and same_person(plain) < 0.5  # 0.968 and 0.098: far from rounding


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
    feats = exact_product_features(clustered_features(3, 25, 32))  # duplicates: exact ties; exact cosines (REF_ATOL)
    g = torch.Generator().manual_seed(3)
    cams = torch.randint(0, 3, (feats.shape[0],), generator=g).numpy()
    return feats, cams


@pytest.mark.parametrize("penalty", [0.3, 4.0])
def test_same_camera_penalty_matches_dense_reference(camera_case, penalty):
    feats, cams = camera_case
    ref = dense_reference_jaccard(feats, 30, 6, cams, penalty)
    dist = compute_jaccard_distance(feats, k1=30, k2=6, camids=cams, same_camera_penalty=penalty)
    # the penalised scores are the same float32 operations on both sides: the same ranking; values: see REF_ATOL
    np.testing.assert_allclose(jaccard_to_dense(dist), ref, atol=REF_ATOL, rtol=0)
    plain = jaccard_to_dense(compute_jaccard_distance(feats, k1=30, k2=6))
    assert np.abs(plain - ref).max() > 0.1
    # many blocks (blocked top lists): bit for bit the same result, duplicates included -- the cosines are exact in
    # every block shape, and the penalty is the same float32 subtraction there (with float products, copies and
    # close neighbours could swap between block shapes)
    many = compute_jaccard_distance(feats, k1=30, k2=6, block_size=37, camids=cams, same_camera_penalty=penalty)
    assert np.array_equal(many.indptr, dist.indptr) and np.array_equal(many.indices, dist.indices)
    assert np.array_equal(many.data, dist.data)


def test_penalty_four_puts_other_cameras_first(camera_case):
    """lambda = 4: every query's first k1 neighbours come from other cameras (each camera has more than k1 images)."""
    feats, cams = camera_case
    assert np.bincount(cams).min() > 2 * 30
    idx, _ = exact_knn(feats, 31, camids=cams, same_camera_penalty=4.0)
    assert (idx[:, 0] == np.arange(len(cams))).all() and (cams[idx[:, 1:]] != cams[:, None]).all()
    plain, _ = exact_knn(feats, 31)
    assert (cams[plain[:, 1:]] == cams[:, None]).mean() > 0.2  # 0.33 (exact cosines: on any CPU)


def test_penalty_in_fast_mode_follows_exact():
    feats = clustered_features(1, 20, 512, n_dup=0)  # D >= 512: the int8 search on CPU
    cams = np.arange(feats.shape[0]) % 2
    exact = compute_jaccard_distance(feats, 30, 6, camids=cams, same_camera_penalty=1.0)
    fast = compute_jaccard_distance(feats, 30, 6, mode="fast", camids=cams, same_camera_penalty=1.0)
    a, b = dbscan_labels(exact, 0.6, 4), dbscan_labels(fast, 0.6, 4)
    # reduced precision by design, so an ARI bound; measured 1.0 (AVX-512, AVX2 and default kernels)
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
    cfg = ClusterConfig()
    for key, value in override.items():  # set in Python: not checked there (ClusterConfig(**override) would refuse it)
        setattr(cfg, key, value)
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
    # the HDBSCAN row has ties (k2 = 6): with random orders of equal weights (15 tries) 19 clusters and ARI
    # 0.975-0.981, inside the bounds below
    for cfg in (ClusterConfig(algorithm="hdbscan"), ClusterConfig(camera_normalize="standardize", same_camera_penalty=2.0),
                ClusterConfig(eps="auto", eps_rho=0.01, camera_normalize="mean")):
        out = cluster_epoch(feats, cams, cfg, first.labels)
        assert out.stats.num_clusters > 5 and out.labels.shape == (len(feats),)
        assert (out.eps is None) == (cfg.algorithm == "hdbscan")
        assert 0 < out.diagnostics.partition_ari < 1
