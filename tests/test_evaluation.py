"""Ranking metrics against a brute-force reference, and k-reciprocal re-ranking against a loop version."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import hardreid.evaluation.ranking as ranking
from hardreid.errors import UserError
from hardreid.evaluation import RankingResult, evaluate_ranking, re_ranking

pytestmark = pytest.mark.exactness  # run again under other kernels and thread counts (dev.py kernels)


# ---------------------------------------------------------------------------
# Brute-force references (plain loops, written from the definitions)
# ---------------------------------------------------------------------------


def brute_force_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank):
    """Per query: drop junk and same-pid-same-camera, sort by (distance, index), CMC and AP."""
    dist = np.asarray(dist, dtype=np.float64)
    cmcs, aps = [], []
    for i in range(dist.shape[0]):
        kept = [
            j
            for j in range(dist.shape[1])
            if g_pids[j] != -1 and not (g_pids[j] == q_pids[i] and g_cams[j] == q_cams[i])
        ]
        kept.sort(key=lambda j: (dist[i, j], j))
        is_match = [g_pids[j] == q_pids[i] for j in kept]
        if not any(is_match):
            continue
        hits, precisions = 0, []
        for rank, m in enumerate(is_match, start=1):
            if m:
                hits += 1
                precisions.append(hits / rank)
        aps.append(sum(precisions) / len(precisions))
        first = is_match.index(True) + 1
        cmcs.append([1.0 if first <= r else 0.0 for r in range(1, max_rank + 1)])
    if not aps:
        return None
    return np.mean(cmcs, axis=0), float(np.mean(aps)), np.array(aps)


def random_case(rng: np.random.Generator):
    num_q = int(rng.integers(1, 16))
    num_g = int(rng.integers(1, 45))
    num_ids = int(rng.integers(1, 7))
    num_cams = int(rng.integers(1, 4))
    q_pids = rng.integers(-1, num_ids, num_q)  # -1 and 0 included
    g_pids = rng.integers(-1, num_ids, num_g)
    q_cams = rng.integers(0, num_cams, num_q)
    g_cams = rng.integers(0, num_cams, num_g)
    kind = rng.integers(3)
    if kind == 0:  # integer-valued: many ties
        dist = rng.integers(0, 4, (num_q, num_g)).astype(np.float64)
    elif kind == 1:
        dist = rng.random((num_q, num_g))
    else:  # ties, negative values and infinities
        dist = rng.integers(-2, 3, (num_q, num_g)).astype(np.float32)
        dist[rng.random((num_q, num_g)) < 0.15] = np.inf
    return dist, q_pids, g_pids, q_cams, g_cams


# ---------------------------------------------------------------------------
# evaluate_ranking
# ---------------------------------------------------------------------------


def test_matches_brute_force_on_random_cases():
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(400):
        dist, qp, gp, qc, gc = random_case(rng)
        max_rank = int(rng.integers(1, 12))
        ref = brute_force_ranking(dist, qp, gp, qc, gc, max_rank)
        if ref is None:
            with pytest.raises(UserError, match="cross-camera match"):
                evaluate_ranking(dist, qp, gp, qc, gc, max_rank=max_rank)
            continue
        res = evaluate_ranking(dist, qp, gp, qc, gc, max_rank=max_rank, block_size=int(rng.integers(1, 9)))
        cmc, m_ap, aps = ref  # same stable order of the given values; sums agree to float64 rounding (atol 1e-7)
        assert res.cmc.shape == (max_rank,)
        np.testing.assert_allclose(res.cmc, 100 * cmc, rtol=0, atol=1e-7)  # percent, the reference gives fractions
        assert abs(res.mAP - 100 * m_ap) <= 1e-7
        np.testing.assert_allclose(res.all_ap, 100 * aps, rtol=0, atol=1e-7)
        assert res.num_valid_queries == len(aps)
        checked += 1
    assert checked > 200


def test_hand_checked_average_precision():
    # Query pid 1, camera 0. Gallery in distance order: junk (pid -1), same pid & camera
    # (removed), pid 2, pid 1, pid 1, pid 3 -> hits at kept ranks 2 and 3.
    dist = np.array([[0.3, 0.0, 0.4, 0.5, 0.6, 0.7]])
    g_pids = [-1, 1, 2, 1, 1, 3]
    g_cams = [1, 0, 1, 1, 2, 1]
    res = evaluate_ranking(dist, [1], g_pids, [0], g_cams, max_rank=4)
    assert res.mAP == pytest.approx(100 * (1 / 2 + 2 / 3) / 2, abs=1e-10)
    np.testing.assert_array_equal(res.cmc, [0.0, 100.0, 100.0, 100.0])
    assert res.num_valid_queries == 1


def test_ties_are_broken_by_gallery_index():
    # All distances equal: ranking is gallery order, so the match at index 2 is rank 3.
    dist = np.zeros((1, 4))
    res = evaluate_ranking(dist, [5], [7, 8, 5, 9], [0], [1, 1, 1, 1], max_rank=3)
    assert res.mAP == pytest.approx(100 / 3)
    np.testing.assert_array_equal(res.cmc, [0.0, 0.0, 100.0])


def test_pid_zero_is_a_normal_identity_and_invalid_queries_are_skipped():
    dist = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]])
    q_pids, q_cams = [0, 4, 0], [0, 0, 1]
    g_pids, g_cams = [0, 0, 6], [1, 0, 1]
    # query 0 (pid 0, cam 0): gallery 1 removed (same cam), gallery 0 is a hit at rank 1.
    # query 1 (pid 4): no match -> skipped. query 2 (pid 0, cam 1): gallery 0 removed,
    # ranked list [2 (pid 6), 1 (pid 0)] -> hit at rank 2.
    res = evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, max_rank=2)
    assert res.num_valid_queries == 2 and res.num_query == 3
    np.testing.assert_array_equal(res.valid_query, [True, False, True])
    np.testing.assert_allclose(res.all_ap, [100.0, 50.0])
    np.testing.assert_allclose(res.cmc, [50.0, 100.0])


def test_no_valid_query_raises_user_error():
    dist = np.random.default_rng(1).random((3, 4))
    with pytest.raises(UserError, match="cross-camera match"):
        # every match is in the query's own camera, the rest is junk or other ids
        evaluate_ranking(dist, [1, 2, 3], [1, 2, -1, 9], [0, 1, 0], [0, 1, 0, 0])
    with pytest.raises(UserError, match="cross-camera match"):
        evaluate_ranking(np.zeros((0, 4)), [], [1, 2, 3, 4], [], [0, 1, 0, 1])


def test_nan_distances_raise_user_error():
    dist = np.array([[0.1, np.nan]])
    with pytest.raises(UserError, match="NaN"):
        evaluate_ranking(dist, [1], [1, 2], [0], [1, 1])


def test_block_size_invariance_and_input_types():
    """Bit for bit the same for every block size and input type, on any CPU: the ranking is a stable sort of the
    given values (integers here: exact in float32/float64), the CMC counts integers, and each AP adds its precisions
    one by one in rank order, which no block padding changes (test_ap_does_not_depend_on_the_block_padding)."""
    rng = np.random.default_rng(2)
    num_q, num_g = 40, 300
    dist = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)  # many ties
    qp, gp = rng.integers(-1, 12, num_q), rng.integers(-1, 12, num_g)
    qc, gc = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    results = [evaluate_ranking(dist, qp, gp, qc, gc, block_size=bs) for bs in (1, 7, 1000)]
    results.append(evaluate_ranking(torch.from_numpy(dist), torch.from_numpy(qp), list(gp), qc, gc))
    results.append(evaluate_ranking(dist.astype(np.int64), qp, gp, qc, gc, block_size=13))
    results.append(evaluate_ranking(torch.from_numpy(dist.T.copy()).T, qp, gp, qc, gc, block_size=5))
    for other in results[1:]:
        np.testing.assert_array_equal(other.cmc, results[0].cmc)
        np.testing.assert_array_equal(other.all_ap, results[0].all_ap)
        assert other.mAP == results[0].mAP
    ref = brute_force_ranking(dist, qp, gp, qc, gc, 10)
    assert ref is not None
    np.testing.assert_allclose(results[0].cmc, 100 * ref[0], atol=1e-7)
    assert abs(results[0].mAP - 100 * ref[1]) <= 1e-7


def continuous_case():
    """Continuous distances, 8 ids over 500 gallery images: 27-53 hits per query, so each block pads its rows of
    precisions to another width."""
    rng = np.random.default_rng(4)
    num_q, num_g = 60, 500
    dist = rng.random((num_q, num_g)).astype(np.float32)
    return dist, rng.integers(0, 8, num_q), rng.integers(-1, 8, num_g), rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)


def test_ap_does_not_depend_on_the_block_padding():
    args = continuous_case()
    ref = evaluate_ranking(*args, block_size=1)
    for block_size in (3, 16, 1000):
        res = evaluate_ranking(*args, block_size=block_size)
        assert np.array_equal(res.all_ap, ref.all_ap) and res.mAP == ref.mAP


def test_padded_row_sums_would_depend_on_the_block_size(monkeypatch):
    """Negative twin: summed with ``sum(dim=1)`` (vectorised, grouped by the padded width) as before, the APs of
    test_ap_does_not_depend_on_the_block_padding change in the last bits with the block size."""
    import hardreid.evaluation.ranking as ranking

    monkeypatch.setattr(ranking, "_sum_in_rank_order", lambda prec: prec.sum(dim=1))
    args = continuous_case()
    ref = evaluate_ranking(*args, block_size=1)
    changed = [not np.array_equal(evaluate_ranking(*args, block_size=bs).all_ap, ref.all_ap) for bs in (3, 16, 1000)]
    assert any(changed)


def test_cmc_has_max_rank_entries_and_saturates():
    # Only 2 gallery images but max_rank 10: the curve is padded with its final value.
    res = evaluate_ranking(np.array([[0.2, 0.1]]), [3], [3, 4], [0], [1, 1], max_rank=10)
    np.testing.assert_array_equal(res.cmc, [0.0] + [100.0] * 9)


def test_to_dict_reports_percent():
    res = evaluate_ranking(np.array([[0.1, 0.2]]), [1], [2, 1], [0], [1, 1], max_rank=10)
    assert isinstance(res, RankingResult)
    d = res.to_dict()
    assert d["mAP"] == pytest.approx(50.0)
    assert d["cmc"] == {"1": 0.0, "5": 100.0, "10": 100.0}
    assert d["num_query"] == 1 and d["num_valid_query"] == 1
    assert res.mAP == d["mAP"] and res.rank(2) == 100.0 and res.all_ap.tolist() == [50.0]  # one unit: percent


def test_shape_mismatch_is_reported():
    with pytest.raises(ValueError, match="gallery columns"):
        evaluate_ranking(np.zeros((1, 3)), [1], [1, 2], [0], [1, 1])


# ---------------------------------------------------------------------------
# Counting (issue 25) against the previous implementation and a full sort, bit for bit
# ---------------------------------------------------------------------------


def previous_rank_block(
    block: torch.Tensor, qp: torch.Tensor, qc: torch.Tensor, gp: torch.Tensor, gc: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_rank_block`` before issue 25 (hits sorted, every gallery entry located with ``searchsorted``)."""
    nb, num_g = block.shape
    device = block.device
    match = gp[None, :] == qp[:, None]
    junk = (gp < 0)[None, :] | (match & (gc[None, :] == qc[:, None]))
    hit = match & ~junk
    other = ~(match | junk)  # kept entries that are not true matches
    del match, junk
    nh = hit.sum(dim=1)
    ok = nh > 0
    h_max = int(nh.max()) if nb > 0 and num_g > 0 else 0
    if h_max == 0:
        return (torch.zeros(nb, dtype=torch.long, device=device),
                torch.zeros(nb, dtype=torch.float64, device=device), ok)

    # Hits of each query, padded to h_max: distance +inf and index >= num_g,
    # so pads sort after every real entry (also after real +inf distances).
    rows, cols = hit.nonzero(as_tuple=True)  # row-major: gallery-index order within a row
    del hit
    offsets = torch.cumsum(nh, 0) - nh
    slot = torch.arange(len(rows), device=device) - offsets[rows]
    hd = torch.full((nb, h_max), float("inf"), dtype=block.dtype, device=device)
    hd[rows, slot] = block[rows, cols]
    hidx = (num_g + torch.arange(h_max, device=device)).expand(nb, h_max).clone()
    hidx[rows, slot] = cols
    hd, perm = torch.sort(hd, dim=1, stable=True)  # by (distance, index)
    hidx = torch.gather(hidx, 1, perm)

    # b[j] = number of hits ranked before gallery entry j under (distance, index).
    b = torch.searchsorted(hd, block, right=False)
    # Entry j ties with some hit iff the hit at position b[j] has the same
    # distance; then the tied hits with a smaller gallery index also precede j.
    # Ties are rare, so they are fixed on the (few) tied entries only.
    tie_r, tie_j = ((torch.gather(hd, 1, b.clamp_max(h_max - 1)) == block) & other).nonzero(as_tuple=True)
    if len(tie_r) > 0:
        span = num_g + h_max + 1
        group = torch.searchsorted(hd, hd, right=False)  # start of each hit's tie group
        key_h = group * span + hidx  # sorted within each row
        b_t = b[tie_r, tie_j]
        key_j = (b_t * span + tie_j)[:, None]
        b[tie_r, tie_j] = torch.searchsorted(key_h[tie_r], key_j, right=False)[:, 0]
    counts = torch.zeros(nb, h_max + 1, dtype=torch.long, device=device)
    counts.scatter_add_(1, b, other.long())
    del b, other
    before = torch.cumsum(counts, dim=1)[:, :h_max]  # kept non-hits ranked before hit k
    k = torch.arange(h_max, device=device)[None, :]
    rank = before + k + 1  # kept rank (1-based) of hit k
    is_real = k < nh[:, None]
    prec = torch.where(is_real, (k + 1).to(torch.float64) / rank.to(torch.float64), 0.0)
    ap = ranking._sum_in_rank_order(prec) / nh.clamp_min(1).to(torch.float64)
    return rank[:, 0], ap, ok


def full_sort_rank_block(block, qp, qc, gp, gc):
    """Every row fully sorted by (distance, index) (a stable sort), the kept list walked in rank order: the
    precisions at the hits, added one by one with ``_sum_in_rank_order`` as ``evaluate_ranking`` does."""
    nb, num_g = block.shape
    order = torch.sort(block, dim=1, stable=True).indices
    g_p, g_c = gp[order], gc[order]
    match = g_p == qp[:, None]
    junk = (g_p < 0) | (match & (g_c == qc[:, None]))
    kept_hit = (match & ~junk).long()
    kept_rank = torch.cumsum((~junk).long(), dim=1)  # kept rank of every position (valid where kept)
    nh = kept_hit.sum(dim=1)
    h_max = int(nh.max()) if nb > 0 and num_g > 0 else 0
    first = torch.zeros(nb, dtype=torch.long)
    prec = torch.zeros(nb, max(h_max, 1), dtype=torch.float64)
    for i in range(nb):
        ranks = kept_rank[i][kept_hit[i].bool()]
        if len(ranks):
            first[i] = ranks[0]
            k = torch.arange(1, len(ranks) + 1)
            prec[i, : len(ranks)] = k.to(torch.float64) / ranks.to(torch.float64)
    ap = ranking._sum_in_rank_order(prec) / nh.clamp_min(1).to(torch.float64)
    return first, ap, nh > 0


def evaluate_with(monkeypatch, rank_block, *args, **kwargs):
    with monkeypatch.context() as m:
        m.setattr(ranking, "_rank_block", rank_block)
        return evaluate_ranking(*args, **kwargs)


def assert_identical(a, b):
    np.testing.assert_array_equal(a.valid_query, b.valid_query)
    np.testing.assert_array_equal(a.cmc, b.cmc)
    np.testing.assert_array_equal(a.all_ap, b.all_ap)
    assert a.mAP == b.mAP and a.num_valid_queries == b.num_valid_queries


def same_as_references(monkeypatch, *args, **kwargs):
    """``evaluate_ranking`` (counting) against the previous implementation and the full sort, bit for bit."""
    ours = evaluate_ranking(*args, **kwargs)
    for reference in (previous_rank_block, full_sort_rank_block):
        assert_identical(ours, evaluate_with(monkeypatch, reference, *args, **kwargs))
    return ours


def labels(rng, num_q, num_g, num_ids, num_cams):
    return (rng.integers(-1, num_ids, num_q), rng.integers(-1, num_ids, num_g), rng.integers(0, num_cams, num_q),
            rng.integers(0, num_cams, num_g))


@pytest.mark.parametrize("num_q,num_g,num_ids,block_size", [(1, 1, 1, 1), (7, 30, 3, 2), (50, 400, 12, 16),
                                                            (120, 1500, 60, 256), (33, 2000, 5, 7)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("as_torch", [False, True])
@pytest.mark.parametrize("dense_share", [-1.0, 2.0])  # every block located at once / candidate by candidate
def test_counting_is_identical_to_the_previous_ranking_and_a_full_sort(monkeypatch, num_q, num_g, num_ids,
                                                                       block_size, dtype, as_torch, dense_share):
    monkeypatch.setattr(ranking, "_DENSE_SHARE", dense_share)
    rng = np.random.default_rng(num_q * 1000 + num_g)
    qp, gp, qc, gc = labels(rng, num_q, num_g, num_ids, 3)
    qp[0] = max(qp[0], 0)
    gp[0], gc[0] = qp[0], (qc[0] + 1) % 3  # at least one valid query
    dist = rng.random((num_q, num_g)).astype(dtype)
    if as_torch:
        dist, qp, gp = torch.from_numpy(dist), torch.from_numpy(qp), torch.from_numpy(gp)
    same_as_references(monkeypatch, dist, qp, gp, qc, gc, max_rank=int(min(50, num_g + 3)), block_size=block_size)


def adversarial_cases():
    """Ties everywhere: few distinct values (hits tied with non-hits, junk and same-camera entries tied with both),
    all-equal rows, +-inf, -0.0 next to 0.0 (equal: ordered by index), queries without a valid match."""
    rng = np.random.default_rng(11)
    for case in range(60):
        num_q, num_g = int(rng.integers(1, 25)), int(rng.integers(1, 120))
        qp, gp, qc, gc = labels(rng, num_q, num_g, int(rng.integers(1, 6)), int(rng.integers(1, 4)))
        dist = rng.integers(-2, 3, (num_q, num_g)).astype(np.float64)
        kind = case % 4
        if kind == 1:
            dist[rng.random(num_q) < 0.5] = 1.0  # all-equal rows
        elif kind == 2:
            dist[rng.random((num_q, num_g)) < 0.2] = np.inf
            dist[rng.random((num_q, num_g)) < 0.1] = -np.inf
        elif kind == 3:
            dist = np.where(rng.random((num_q, num_g)) < 0.5, -0.0, 0.0)
        yield dist.astype(np.float32 if case % 2 else np.float64), qp, gp, qc, gc


def test_counting_is_identical_on_adversarial_ties(monkeypatch):
    checked = 0
    for dist, qp, gp, qc, gc in adversarial_cases():
        try:
            ref = evaluate_with(monkeypatch, full_sort_rank_block, dist, qp, gp, qc, gc, max_rank=5, block_size=4)
        except UserError:
            with pytest.raises(UserError, match="cross-camera match"):
                evaluate_ranking(dist, qp, gp, qc, gc, max_rank=5, block_size=4)
            continue
        ours = same_as_references(monkeypatch, dist, qp, gp, qc, gc, max_rank=5, block_size=4)
        assert_identical(ours, ref)
        checked += 1
    assert checked > 30


def test_candidates_located_in_small_chunks(monkeypatch):
    """The candidates are located in chunks of ``_CHUNK_ELEMENTS // h_max`` (memory bound): any chunk size
    gives the same numbers."""
    monkeypatch.setattr(ranking, "_DENSE_SHARE", 2.0)  # candidate by candidate
    args = continuous_case()
    ref = evaluate_ranking(*args, block_size=16)
    for chunk in (1, 37):
        monkeypatch.setattr(ranking, "_CHUNK_ELEMENTS", chunk)
        assert_identical(evaluate_ranking(*args, block_size=16), ref)


@pytest.mark.parametrize("dense_share", [-1.0, 2.0])  # every block located at once / candidate by candidate
def test_both_counting_paths_are_identical(monkeypatch, dense_share):
    monkeypatch.setattr(ranking, "_DENSE_SHARE", dense_share)
    args = continuous_case()
    same_as_references(monkeypatch, *args, block_size=16)
    for dist, qp, gp, qc, gc in adversarial_cases():
        try:
            same_as_references(monkeypatch, dist, qp, gp, qc, gc, max_rank=5, block_size=3)
        except UserError:
            pass


class _TiesTheOtherWay:
    """``torch`` for ranking.py, except that ``searchsorted`` puts an entry tied with a hit after it."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def searchsorted(sorted_sequence, values, right=False):
        return torch.searchsorted(sorted_sequence, values, right=True)


@pytest.mark.parametrize("dense_share", [-1.0, 2.0])
def test_a_counting_rule_breaking_ties_the_other_way_is_caught(monkeypatch, dense_share):
    """Negative twin: with ties broken the other way (non-hits tied with a hit ranked after it), the comparison of
    test_counting_is_identical_on_adversarial_ties fails, while continuous distances (no ties) do not notice."""
    cases, ref = [], []
    for case in adversarial_cases():
        try:
            ref.append(evaluate_with(monkeypatch, full_sort_rank_block, *case, max_rank=5, block_size=4))
            cases.append(case)
        except UserError:  # no valid query
            pass
    monkeypatch.setattr(ranking, "_DENSE_SHARE", dense_share)
    monkeypatch.setattr(ranking, "torch", _TiesTheOtherWay())
    caught = 0
    for case, expected in zip(cases, ref):
        try:
            assert_identical(evaluate_ranking(*case, max_rank=5, block_size=4), expected)
        except AssertionError:
            caught += 1
    assert caught > len(cases) // 4, (caught, len(cases))
    args = continuous_case()
    with monkeypatch.context() as m:
        m.setattr(ranking, "torch", torch)
        no_ties = evaluate_ranking(*args)
    assert_identical(evaluate_ranking(*args), no_ties)


def test_nan_anywhere_in_a_large_block_is_reported():
    dist = np.random.default_rng(5).random((40, 300))
    dist[17, 123] = np.nan
    with pytest.raises(UserError, match="NaN"):
        evaluate_ranking(dist, np.arange(40), np.arange(300), np.zeros(40), np.ones(300), block_size=8)


# ---------------------------------------------------------------------------
# re_ranking
# ---------------------------------------------------------------------------


def loop_re_ranking(q_g, q_q, g_g, k1, k2, lam):
    """The original algorithm with its loops (stable sort so ties are well defined)."""
    num_q = q_g.shape[0]
    full = np.block([[q_q, q_g], [q_g.T, g_g]]).astype(np.float64)
    dist = np.square(full).astype(np.float32)
    dist = (dist / dist.max(axis=0)).T
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):
        forward = rank[i, : k + 1]
        return [int(j) for j in forward if i in rank[j, : k + 1]]

    v = np.zeros((n, n))
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expansion = set(r_i)
        for c in r_i:
            r_c = reciprocal(c, half)
            if len(set(r_c) & set(r_i)) > 2.0 / 3.0 * len(r_c):
                expansion |= set(r_c)
        idx = sorted(expansion)
        w = np.exp(-dist[i, idx].astype(np.float64))
        v[i, idx] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    out = np.zeros((num_q, n - num_q))
    for i in range(num_q):
        for j in range(num_q, n):
            s = sum(min(v[i, k], v[j, k]) for k in range(n) if v[i, k] != 0 and v[j, k] != 0)
            out[i, j - num_q] = 1 - s / (2 - s)
    return out * (1 - lam) + dist[:num_q, num_q:] * lam


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))


@pytest.mark.parametrize(
    "num_q,num_g,k1,k2,lam,block",
    [(4, 14, 5, 3, 0.3, 256), (3, 20, 20, 6, 0.3, 256), (5, 12, 4, 1, 0.0, 3), (2, 9, 3, 2, 1.0, 1), (6, 15, 7, 4, 0.5, 4)],
)
def test_re_ranking_matches_loop_reference(num_q, num_g, k1, k2, lam, block):
    rng = np.random.default_rng(num_q * 100 + k1)
    centres = rng.normal(size=(4, 3)) * 2
    q = centres[rng.integers(0, 4, num_q)] + rng.normal(size=(num_q, 3))
    g = centres[rng.integers(0, 4, num_g)] + rng.normal(size=(num_g, 3))
    q_g, q_q, g_g = pairwise(q, g), pairwise(q, q), pairwise(g, g)
    expected = loop_re_ranking(q_g, q_q, g_g, k1, k2, lam)
    got = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam, block_size=block)
    assert got.shape == (num_q, num_g) and got.dtype == np.float32
    # both sides normalise with the same elementwise float32 operations (identical bits) and rank by a stable sort:
    # the same neighbour sets on any CPU; the values then differ by float64 rounding and our float32 output
    # (<= 2^-25 for values <= 1; measured 3e-8)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    got_t = re_ranking(torch.from_numpy(q_g), torch.from_numpy(q_q), torch.from_numpy(g_g), k1=k1, k2=k2,
                       lambda_value=lam, block_size=block)
    np.testing.assert_array_equal(got_t, got)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_re_ranking_with_tied_distances_matches_loop_reference(seed):
    # Manhattan distances between integer points: many ties, neighbours ordered by (distance, index).
    rng = np.random.default_rng(seed)
    q = rng.integers(0, 4, (5, 2))
    g = rng.integers(0, 4, (16, 2))

    def manhattan(a, b):
        return np.abs(a[:, None, :] - b[None, :, :]).sum(-1).astype(np.float64)

    q_g, q_q, g_g = manhattan(q, g), manhattan(q, q), manhattan(g, g)
    expected = loop_re_ranking(q_g, q_q, g_g, 6, 3, 0.3)
    got = re_ranking(q_g, q_q, g_g, k1=6, k2=3, lambda_value=0.3, block_size=4)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)


def test_re_ranking_improves_map_on_clustered_data():
    rng = np.random.default_rng(7)
    num_ids, per_id, dim = 30, 8, 16
    centres = rng.normal(size=(num_ids, dim))
    feats = np.repeat(centres, per_id, axis=0) + 0.6 * rng.normal(size=(num_ids * per_id, dim))
    pids = np.repeat(np.arange(num_ids), per_id)
    cams = np.tile(np.arange(per_id) % 4, num_ids)
    is_query = np.tile(np.arange(per_id) < 2, num_ids)
    qf, gf = feats[is_query], feats[~is_query]
    qp, gp, qc, gc = pids[is_query], pids[~is_query], cams[is_query], cams[~is_query]
    q_g, q_q, g_g = pairwise(qf, gf), pairwise(qf, qf), pairwise(gf, gf)
    base = evaluate_ranking(q_g, qp, gp, qc, gc)
    rr = re_ranking(q_g, q_q, g_g, k1=6, k2=3, lambda_value=0.3)
    assert rr.shape == q_g.shape and np.isfinite(rr).all() and (rr >= 0).all() and (rr <= 1 + 1e-6).all()
    improved = evaluate_ranking(rr, qp, gp, qc, gc)
    assert improved.mAP > base.mAP + 2, (base.mAP, improved.mAP)  # 89.1 -> 96.1


def test_re_ranking_rejects_bad_input():
    with pytest.raises(ValueError, match="g_g_dist"):
        re_ranking(np.zeros((2, 3)), np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(UserError, match="NaN"):
        re_ranking(np.full((1, 2), np.nan), np.zeros((1, 1)), np.zeros((2, 2)))
