"""Benchmark the evaluation: Market-1501 CMC/mAP and k-reciprocal re-ranking at scale.

Builds a query/gallery split of the Market-1501 test size by default (3,368
queries, 15,913 gallery images: 750 identities seen by several cameras plus
distractors with pid 0) from realistic synthetic features
(``common.reid_features``), and squared Euclidean distances of the unit
features (as ``hardreid.evaluation.pipeline`` computes them).  Then, each in
a fresh subprocess (peak memory = that process's peak RSS, ``VmHWM``, inputs and
imports included):

* ``evaluate_ranking`` (CMC up to rank 50 and mAP), timed, and the distance
  matrix it ranks (as the pipeline computes it), timed in the same process;
* in the same process, one after the other (``--no-references`` skips them):
  the same metrics by a full stable sort of every gallery row (blockwise,
  vectorised torch: what ranking costs with a sort, the ranking before
  issue 25 counted instead) -- CMC and every AP identical bit for bit -- and,
  where torchreid is installed, its ``evaluate_rank`` (Cython if built) and its
  Euclidean ``compute_distance_matrix``, timed (``not installed`` otherwise);
* the same numbers from a plain per-query reference (torchreid's
  ``eval_market1501`` algorithm in numpy, stable sort) on a subset of the
  queries: the CMC and every AP must be identical;
* ``re_ranking`` (k1=20, k2=6, lambda=0.3) on the full split, timed, with
  the peak of numpy's allocations traced (``tracemalloc``) and compared with
  one dense (Q+G) x (Q+G) float32 matrix;
* ``re_ranking`` on a small random subset against a dense float64
  implementation of the original algorithm (max abs difference).

Example::

    python benchmarks/evaluation.py --out results/evaluation_market.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.repo_src_on_path()


# --------------------------------------------------------------------------- data


def market_split(num_query: int, num_gallery: int, num_ids: int, dim: int, seed: int,
                 distractor_fraction: float = 0.1755) -> dict[str, np.ndarray]:
    """Query/gallery features, pids and camids with exactly the requested sizes.

    ``num_ids`` identities (long-tailed sizes) plus distractors: about
    ``distractor_fraction`` of the gallery (Market: 2,793 of 15,913) made of
    small identities of 1-5 images, all labelled pid 0, like Market's
    low-quality detections.  Every identity gives one query per camera it was
    seen by (trimmed or topped up to ``num_query``); the rest is gallery.  Pids
    of real identities start at 1.
    """
    rng = np.random.default_rng(seed)
    n = num_query + num_gallery
    n_distractor = int(round(distractor_fraction * num_gallery))
    d_sizes = []
    while sum(d_sizes) < n_distractor:
        d_sizes.append(int(min(rng.integers(1, 6), n_distractor - sum(d_sizes))))
    real = n - n_distractor
    if 2 * num_ids > real:
        raise SystemExit(f"--ids {num_ids} is too many for {real} non-distractor images (each identity needs "
                         f"at least 2): use --ids {real // 2} or fewer")
    r_sizes = rng.lognormal(0.0, 0.5, size=num_ids)
    r_sizes = np.maximum(2, np.floor(r_sizes / r_sizes.sum() * real)).astype(np.int64)
    while r_sizes.sum() < real:  # fix the rounding
        r_sizes[rng.integers(num_ids)] += 1
    while r_sizes.sum() > real:
        j = rng.integers(num_ids)
        if r_sizes[j] > 2:
            r_sizes[j] -= 1
    sizes = np.concatenate([r_sizes, d_sizes]).astype(np.int64)
    feats, pids, camids = common.reid_features(n, dim, seed=seed, outlier_fraction=0.0, sizes=sizes)
    is_distractor = pids >= num_ids
    pid_out = np.where(is_distractor, 0, pids + 1)
    candidates = []  # one image per (identity, camera)
    seen: set[tuple[int, int]] = set()
    for i in rng.permutation(n):
        if is_distractor[i]:
            continue
        key = (int(pids[i]), int(camids[i]))
        if key not in seen:
            seen.add(key)
            candidates.append(i)
    candidates = np.array(candidates)
    if candidates.size >= num_query:
        query = rng.choice(candidates, size=num_query, replace=False)
    else:  # top up with further images of real identities
        rest = np.setdiff1d(np.flatnonzero(~is_distractor), candidates)
        query = np.concatenate([candidates, rng.choice(rest, size=num_query - candidates.size, replace=False)])
    query = np.sort(query)
    gallery = np.setdiff1d(np.arange(n), query)
    return {
        "qf": feats[query], "gf": feats[gallery],
        "q_pids": pid_out[query], "g_pids": pid_out[gallery],
        "q_camids": camids[query], "g_camids": camids[gallery],
    }


def squared_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """2 - 2 a.b, clamped at 0 (float32): the evaluation pipeline's own function."""
    import torch

    from hardreid.evaluation.pipeline import squared_distance as pipeline_distance

    return pipeline_distance(torch.from_numpy(a), torch.from_numpy(b)).numpy()


# --------------------------------------------------------------------------- simple references


def plain_market_eval(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                      g_camids: np.ndarray, max_rank: int) -> tuple[np.ndarray, float, np.ndarray]:
    """torchreid's python ``eval_market1501`` (plus the pid -1 junk rule), one query at a time."""
    num_q, num_g = distmat.shape
    all_cmc, all_ap = [], []
    for i in range(num_q):
        order = np.argsort(distmat[i], kind="stable")
        matches = (g_pids[order] == q_pids[i]).astype(np.int32)
        remove = ((g_pids[order] == q_pids[i]) & (g_camids[order] == q_camids[i])) | (g_pids[order] == -1)
        raw = matches[~remove]
        if not raw.any():
            continue
        cmc = raw.cumsum()
        cmc[cmc > 1] = 1
        if cmc.size < max_rank:
            cmc = np.concatenate([cmc, np.full(max_rank - cmc.size, cmc[-1])])
        all_cmc.append(cmc[:max_rank])
        hits = raw.cumsum()
        precision = hits / (np.arange(raw.size) + 1.0)
        all_ap.append(float((precision * raw).sum() / raw.sum()))
    cmc = np.asarray(all_cmc, dtype=np.float64).sum(0) / len(all_cmc)
    return cmc, float(np.mean(all_ap)), np.asarray(all_ap)



def full_sort_ranking(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
                      g_camids: np.ndarray, max_rank: int, block_size: int = 256) -> tuple[np.ndarray, float, np.ndarray]:
    """CMC (percent), mAP and per-query AP (percent) by a full stable sort of each gallery row, blockwise.

    The same quotients as ``evaluate_ranking`` (hits / kept rank, float64), added one by one in rank order: the
    numbers must be identical bit for bit, only the work differs (a sort of all 15,913 entries per query)."""
    import torch

    d = torch.from_numpy(np.ascontiguousarray(distmat))
    gp, gc = torch.from_numpy(g_pids).long(), torch.from_numpy(g_camids).long()
    qp_all, qc_all = torch.from_numpy(q_pids).long(), torch.from_numpy(q_camids).long()
    first, aps = [], []
    for start in range(0, d.shape[0], block_size):
        block = d[start:start + block_size]
        qp, qc = qp_all[start:start + block_size, None], qc_all[start:start + block_size, None]
        order = torch.sort(block, dim=1, stable=True).indices
        g_p, g_c = gp[order], gc[order]
        match = g_p == qp
        kept = (g_p >= 0) & ~(match & (g_c == qc))
        hit = match & kept
        kept_rank = torch.cumsum(kept.long(), dim=1)
        nh = hit.sum(dim=1)
        h_max = max(int(nh.max()), 1)
        rows, cols = hit.nonzero(as_tuple=True)
        slot = torch.arange(len(rows)) - (torch.cumsum(nh, 0) - nh)[rows]
        ranks = torch.ones(len(qp), h_max, dtype=torch.long)
        ranks[rows, slot] = kept_rank[rows, cols]
        k = torch.arange(1, h_max + 1)[None, :]
        prec = torch.where(k <= nh[:, None], k.to(torch.float64) / ranks.to(torch.float64), 0.0)
        ap = prec.cumsum(dim=1)[:, -1] / nh.clamp_min(1).to(torch.float64)  # one by one, in rank order
        valid = nh > 0
        first.append(ranks[valid, 0])
        aps.append(ap[valid])
    fh, all_ap = torch.cat(first), torch.cat(aps).numpy()
    cmc = (fh[None, :] <= torch.arange(1, max_rank + 1)[:, None]).sum(dim=1).to(torch.float64) / len(fh)
    return 100.0 * cmc.numpy(), 100.0 * float(all_ap.mean()), 100.0 * all_ap


def torchreid_metrics() -> tuple[Any, Any] | str:
    """torchreid's ``metrics.rank`` module and ``compute_distance_matrix``, or why they cannot be imported.

    torchreid is a reference here, never a dependency: put a built copy on ``PYTHONPATH`` (see
    ``benchmarks/README.md``).  Importing ``torchreid`` runs its ``__init__``, which imports all of torchreid
    (data sets, models, OpenCV, ...); where that fails, only the metrics submodules are loaded, from the same
    folder, without the package's ``__init__`` (they need numpy and torch only).  Its fallback to the Python
    evaluator (Cython extension not built) is a warning at import: ``rank.IS_CYTHON_AVAI`` records it.
    """
    import importlib
    import importlib.util
    import types

    try:
        from torchreid.metrics import compute_distance_matrix, rank

        return rank, compute_distance_matrix
    except Exception as exc:  # noqa: BLE001 - any import failure: try the metrics alone
        reason = f"{type(exc).__name__}: {exc}"
    for name in [m for m in sys.modules if m == "torchreid" or m.startswith("torchreid.")]:
        del sys.modules[name]  # a half-imported package
    try:
        spec = importlib.util.find_spec("torchreid")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return f"not installed ({reason})"
    package = types.ModuleType("torchreid")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["torchreid"] = package
    try:
        rank = importlib.import_module("torchreid.metrics.rank")
        distance = importlib.import_module("torchreid.metrics.distance")
    except Exception as exc2:  # noqa: BLE001
        return f"not importable ({reason}; metrics alone: {type(exc2).__name__}: {exc2})"
    return rank, distance.compute_distance_matrix


def torchreid_ranking(rank: Any, distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                      q_camids: np.ndarray, g_camids: np.ndarray, max_rank: int) -> tuple[np.ndarray, float]:
    """torchreid's ``evaluate_rank`` (its Cython extension when built): CMC and mAP in percent."""
    cython = bool(getattr(rank, "IS_CYTHON_AVAI", False))
    cmc, m_ap = rank.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                                   use_metric_cuhk03=False, use_cython=cython)
    return 100.0 * np.asarray(cmc, dtype=np.float64), 100.0 * float(m_ap)


def _timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """``fn(*args)``, its wall seconds and this process's CPU seconds (steadier on a busy machine)."""
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - t, time.process_time() - c


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": float(np.min(values)), "median": float(np.median(values)), "all": [round(v, 4) for v in values]}


def kernel_sets() -> dict[str, Any]:
    """Which vector kernels torch and numpy dispatch to here, and the environment variables that limit them."""
    import torch

    try:
        from numpy._core._multiarray_umath import __cpu_features__ as features
    except ImportError:  # numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as features
    names = ("ATEN_CPU_CAPABILITY", "NPY_DISABLE_CPU_FEATURES", "OPENBLAS_CORETYPE", "MKL_ENABLE_INSTRUCTIONS",
             "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
    try:
        from hardreid.evaluation.distance import numpy_blas_preferred
    except ImportError:  # a checkout from before hardreid.evaluation.distance: torch's product
        def numpy_blas_preferred() -> bool:
            return False

    return {
        "hardreid_cpu_product": "numpy's BLAS" if numpy_blas_preferred() else "torch's",
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "numpy_avx512f": bool(features.get("AVX512F")), "numpy_avx512_skx": bool(features.get("AVX512_SKX")),
        "numpy_x86_v4": bool(features.get("X86_V4")), "numpy_avx2": bool(features.get("AVX2")),
        "env": {k: os.environ.get(k) for k in names},
    }


def compare_with_torchreid(ours: Any, cmc: np.ndarray, m_ap: float) -> dict[str, Any]:
    """torchreid's CMC and mAP (float32 arithmetic) against ours (float64): the CMC as counts of queries, exactly;
    the mAP to float32's precision (torchreid adds the per-query APs in float32)."""
    n = ours.num_valid_queries
    counts_ours = np.rint(ours.cmc / 100.0 * n).astype(np.int64)
    counts_tr = np.rint(cmc / 100.0 * n).astype(np.int64)
    diff_map = abs(m_ap - ours.mAP)
    return {
        "max_abs_diff_cmc": float(np.abs(cmc - ours.cmc).max()),
        "abs_diff_mAP": diff_map,
        "cmc_counts_identical": bool(np.array_equal(counts_ours, counts_tr)),
        "identical": bool(np.array_equal(counts_ours, counts_tr) and diff_map <= 1e-5 * max(ours.mAP, 1.0)),
    }


def dense_re_ranking(q_g: np.ndarray, q_q: np.ndarray, g_g: np.ndarray, k1: int, k2: int, lam: float) -> np.ndarray:
    """The original re-ranking with dense (Q+G)^2 matrices, V in float64 and a stable sort (small inputs only)."""
    num_q = q_g.shape[0]
    full = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    dist = np.square(full).astype(np.float32)
    top = dist.max(axis=0)
    top[top == 0] = 1.0
    dist = np.transpose(dist / top)
    n = dist.shape[0]
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> np.ndarray:
        fwd = rank[i, : k + 1]
        back = rank[fwd, : k + 1]
        return fwd[np.where(back == i)[0]]

    v = np.zeros((n, n), dtype=np.float64)
    half = int(np.around(k1 / 2.0))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expansion = r_i
        for c in r_i:
            r_c = reciprocal(c, half)
            if len(np.intersect1d(r_c, r_i)) > 2.0 / 3.0 * len(r_c):
                expansion = np.append(expansion, r_c)
        expansion = np.unique(expansion)
        w = np.exp(-dist[i, expansion].astype(np.float64))
        v[i, expansion] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    inv = [np.where(v[:, c] != 0)[0] for c in range(n)]
    jac = np.zeros((num_q, n - num_q))
    for i in range(num_q):
        s = np.zeros(n)
        for c in np.where(v[i] != 0)[0]:
            s[inv[c]] += np.minimum(v[i, c], v[inv[c], c])
        jac[i] = 1 - s[num_q:] / (2 - s[num_q:])
    return jac * (1 - lam) + dist[:num_q, num_q:] * lam


# --------------------------------------------------------------------------- runs (in subprocesses)


def _load(folder: str, *names: str) -> list[np.ndarray]:
    return [np.load(os.path.join(folder, f"{name}.npy")) for name in names]


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_ranking(folder: str, max_rank: int, check_queries: int, seed: int, threads: int | None = None,
                references: bool = True, rounds: int = 3) -> dict[str, Any]:
    _set_threads(threads)
    import torch

    from hardreid.evaluation import evaluate_ranking
    from hardreid.evaluation.pipeline import squared_distance as pipeline_distance

    dist, qp, gp, qc, gc = _load(folder, "q_g", "q_pids", "g_pids", "q_camids", "g_camids")
    rss0 = common.rss_mb()
    t = time.perf_counter()
    res = evaluate_ranking(dist, qp, gp, qc, gc, max_rank=max_rank)
    seconds = time.perf_counter() - t
    peak_eval = common.peak_rss_mb()
    out: dict[str, Any] = {"seconds": seconds, "rss_start_mb": rss0, "peak_rss_after_eval_mb": peak_eval,
                           "result": res.to_dict(), "kernels": kernel_sets()}
    if references:
        qf, gf = _load(folder, "qf", "gf")
        tq, tg = torch.from_numpy(qf), torch.from_numpy(gf)
        t = time.perf_counter()
        cmc, m_ap, aps = full_sort_ranking(dist, qp, gp, qc, gc, max_rank)
        out["full_sort"] = {
            "seconds": time.perf_counter() - t,
            "identical": bool(np.array_equal(cmc, res.cmc) and np.array_equal(aps, res.all_ap) and m_ap == res.mAP),
        }
        tr = torchreid_metrics()
        tr_out: dict[str, Any] = {"available": not isinstance(tr, str)}
        if isinstance(tr, str):
            tr_out["reason"] = tr
        else:
            tr_out["cython"] = bool(getattr(tr[0], "IS_CYTHON_AVAI", False))
            tr_out["rank_module"] = getattr(tr[0], "__file__", None)
        # Alternating rounds in this one process (order swapped every round): each side's distance matrix from
        # the features, then its ranking of the same matrix (the one ours computes, saved above).
        wall: dict[str, list[float]] = {}
        cpu: dict[str, list[float]] = {}

        def record(name: str, fn: Any, *args: Any) -> Any:
            value, w, c = _timed(fn, *args)
            wall.setdefault(name, []).append(w)
            cpu.setdefault(name, []).append(c)
            return value

        same_distances = True
        for r in range(rounds):
            sides = ["ours", "torchreid"] if r % 2 == 0 else ["torchreid", "ours"]
            for side in sides:
                if side == "ours":
                    d = record("ours_distance", pipeline_distance, tq, tg)
                    same_distances &= bool(np.array_equal(d.numpy(), dist))
                    ours = record("ours_ranking", evaluate_ranking, d, qp, gp, qc, gc, max_rank)
                    del d
                elif not isinstance(tr, str):
                    d_tr = record("torchreid_distance", tr[1], tq, tg, "euclidean")
                    del d_tr
                    tr_cmc, tr_map = record("torchreid_ranking", torchreid_ranking, tr[0], dist, qp, gp, qc, gc,
                                            max_rank)
        out["distance_seconds"] = float(np.min(wall["ours_distance"]))
        out["ours_distance_identical_to_input"] = same_distances
        out["ours_identical_across_rounds"] = bool(np.array_equal(ours.cmc, res.cmc)
                                                   and np.array_equal(ours.all_ap, res.all_ap))
        out["rounds"] = {"n": rounds, "wall_s": {k: _spread(v) for k, v in wall.items()},
                         "cpu_s": {k: _spread(v) for k, v in cpu.items()}}
        if not isinstance(tr, str):
            tr_out.update(compare_with_torchreid(res, tr_cmc, tr_map))
            tr_out["mAP"], tr_out["rank1"] = tr_map, float(tr_cmc[0])
            for kind, src in (("wall_s", wall), ("cpu_s", cpu)):
                ours_total = np.add(src["ours_distance"], src["ours_ranking"])
                tr_total = np.add(src["torchreid_distance"], src["torchreid_ranking"])
                out["rounds"][kind]["ours_total"] = _spread(list(ours_total))
                out["rounds"][kind]["torchreid_total"] = _spread(list(tr_total))
                out["rounds"][kind]["speedup_min"] = float(tr_total.min() / ours_total.min())
                out["rounds"][kind]["speedup_median"] = float(np.median(tr_total) / np.median(ours_total))
        out["torchreid"] = tr_out
    # identical numbers: plain per-query reference on a subset of the queries
    rng = np.random.default_rng(seed)
    sub = np.arange(dist.shape[0]) if check_queries < 0 or check_queries >= dist.shape[0] else \
        np.sort(rng.choice(dist.shape[0], size=check_queries, replace=False))
    ours = evaluate_ranking(dist[sub], qp[sub], gp, qc[sub], gc, max_rank=max_rank)
    t = time.perf_counter()
    cmc, m_ap, aps = plain_market_eval(dist[sub], qp[sub], gp, qc[sub], gc, max_rank)
    out["check"] = {
        "queries": int(sub.size),
        "plain_reference_seconds": time.perf_counter() - t,
        # ours are percent (RankingResult's unit), the plain reference gives fractions
        "max_abs_diff_cmc": float(np.abs(ours.cmc - 100.0 * cmc).max()),
        "abs_diff_mAP": abs(ours.mAP - 100.0 * m_ap),
        "max_abs_diff_ap": float(np.abs(ours.all_ap - 100.0 * aps).max()),
        "identical": bool(np.array_equal(ours.cmc, 100.0 * cmc) and np.abs(ours.all_ap - 100.0 * aps).max() <= 1e-10),
    }
    return out


def run_rerank(folder: str, k1: int, k2: int, lam: float, trace: bool, threads: int | None = None) -> dict[str, Any]:
    _set_threads(threads)
    from hardreid.evaluation import evaluate_ranking, re_ranking

    q_g, q_q, g_g, qp, gp, qc, gc = _load(folder, "q_g", "q_q", "g_g", "q_pids", "g_pids", "q_camids", "g_camids")
    rss0 = common.rss_mb()
    if trace:
        tracemalloc.start()
    t = time.perf_counter()
    final = re_ranking(q_g, q_q, g_g, k1=k1, k2=k2, lambda_value=lam)
    seconds = time.perf_counter() - t
    out: dict[str, Any] = {"seconds": seconds, "rss_start_mb": rss0, "peak_rss_after_rerank_mb": common.peak_rss_mb()}
    if trace:
        out["traced_numpy_peak_mb"] = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
        out["note"] = "timed with tracemalloc on (slower)"
    res = evaluate_ranking(final, qp, gp, qc, gc, max_rank=50)
    out["result"] = res.to_dict()
    return out


def run_rerank_check(folder: str, k1: int, k2: int, lam: float, nq: int, ng: int, seed: int) -> dict[str, Any]:
    from hardreid.evaluation import re_ranking

    q_g, q_q, g_g = _load(folder, "q_g", "q_q", "g_g")
    rng = np.random.default_rng(seed)
    qs = np.sort(rng.choice(q_g.shape[0], size=min(nq, q_g.shape[0]), replace=False))
    gs = np.sort(rng.choice(q_g.shape[1], size=min(ng, q_g.shape[1]), replace=False))
    a, b, c = q_g[np.ix_(qs, gs)], q_q[np.ix_(qs, qs)], g_g[np.ix_(gs, gs)]
    ours = re_ranking(a, b, c, k1=k1, k2=k2, lambda_value=lam)
    t = time.perf_counter()
    ref = dense_re_ranking(a, b, c, k1, k2, lam)
    return {"queries": int(qs.size), "gallery": int(gs.size), "dense_reference_seconds": time.perf_counter() - t,
            "max_abs_diff": float(np.abs(ours - ref).max()),
            "same_top1_fraction": float(np.mean(ours.argmin(1) == ref.argmin(1)))}


# --------------------------------------------------------------------------- driver


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num-query", type=int, default=3368)
    ap.add_argument("--num-gallery", type=int, default=15913)
    ap.add_argument("--ids", type=int, default=750, help="identities with queries (Market test: 750)")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--max-rank", type=int, default=50)
    ap.add_argument("--check-queries", type=int, default=500,
                    help="queries checked against the plain reference (-1: all)")
    ap.add_argument("--no-references", action="store_true",
                    help="skip the full-sort ranking and torchreid (when installed) timed beside evaluate_ranking")
    ap.add_argument("--rounds", type=int, default=3,
                    help="alternating rounds of ours and torchreid (distances + ranking) in one process (>= 1)")
    ap.add_argument("--no-rerank", action="store_true", help="skip re-ranking")
    ap.add_argument("--rerank-check", type=int, nargs=2, default=[300, 1500], metavar=("Q", "G"),
                    help="subset size for the dense re-ranking check (0 0: skip)")
    ap.add_argument("--k1", type=int, default=20)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--lambda-value", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--out", metavar="JSON")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds must be at least 1, got {args.rounds}")

    t = time.perf_counter()
    split = market_split(args.num_query, args.num_gallery, args.ids, args.dim, args.seed)
    tmp = tempfile.TemporaryDirectory(prefix="hardreid_eval_")
    folder = tmp.name
    np.save(os.path.join(folder, "q_g.npy"), squared_distance(split["qf"], split["gf"]))
    if not args.no_references:
        np.save(os.path.join(folder, "qf.npy"), split["qf"])
        np.save(os.path.join(folder, "gf.npy"), split["gf"])
    for key in ("q_pids", "g_pids", "q_camids", "g_camids"):
        np.save(os.path.join(folder, f"{key}.npy"), split[key])
    if not args.no_rerank or args.rerank_check[0] > 0:
        np.save(os.path.join(folder, "q_q.npy"), squared_distance(split["qf"], split["qf"]))
        np.save(os.path.join(folder, "g_g.npy"), squared_distance(split["gf"], split["gf"]))
    nq, ng = args.num_query, args.num_gallery
    data = {
        "num_query": nq, "num_gallery": ng, "dim": args.dim,
        "query_ids": int(np.unique(split["q_pids"]).size), "distractors": int((split["g_pids"] == 0).sum()),
        "prepare_s": round(time.perf_counter() - t, 1),
    }
    del split
    print(f"split: {nq} queries x {ng} gallery ({data['distractors']} distractors), D={args.dim}", flush=True)

    runs: dict[str, Any] = {}

    def isolated(name: str, fn: Any, *fargs: Any) -> None:
        load = common.load_average()
        r = common.run_isolated(fn, *fargs)
        out = r["result"]
        out["peak_rss_mb"] = r["peak_rss_mb"]
        out["cpu_s"] = r["cpu_s"]
        out["load_average_before"] = load
        out["load_average_after"] = common.load_average()
        runs[name] = out
        sec = out.get("seconds")
        print(f"{name}: " + (f"{sec:.2f}s, " if sec is not None else "") + f"peak RSS {out['peak_rss_mb']:.0f} MB, "
              f"load {load}", flush=True)

    isolated("evaluate_ranking", run_ranking, folder, args.max_rank, args.check_queries, args.seed, args.threads,
             not args.no_references, args.rounds)
    if not args.no_rerank:
        isolated("re_ranking", run_rerank, folder, args.k1, args.k2, args.lambda_value, False, args.threads)
        isolated("re_ranking_traced", run_rerank, folder, args.k1, args.k2, args.lambda_value, True, args.threads)
    if args.rerank_check[0] > 0:
        isolated("re_ranking_check", run_rerank_check, folder, args.k1, args.k2, args.lambda_value,
                 args.rerank_check[0], args.rerank_check[1], args.seed)
    tmp.cleanup()

    n = nq + ng
    payload = {
        **common.result_header("evaluation", argv),
        "params": {"max_rank": args.max_rank, "k1": args.k1, "k2": args.k2, "lambda_value": args.lambda_value,
                   "threads": args.threads, "references": not args.no_references,
                   "rounds": args.rounds},
        "data": data,
        "input_mb": {"q_g": nq * ng * 4 / 2**20, "q_q": nq * nq * 4 / 2**20, "g_g": ng * ng * 4 / 2**20},
        "dense_joint_matrix_float32_mb": n * n * 4 / 2**20,
        "runs": runs,
    }
    _print_summary(payload)
    if args.out:
        common.write_json(args.out, payload)
        print(f"wrote {args.out}")
    return payload


def _print_summary(p: dict[str, Any]) -> None:
    r = p["runs"]
    ev = r["evaluate_ranking"]
    print(f"\nevaluate_ranking {p['data']['num_query']} x {p['data']['num_gallery']}: {ev['seconds']:.2f}s, "
          f"peak RSS {ev['peak_rss_mb']:.0f} MB (start {ev['rss_start_mb']:.0f} MB); mAP {ev['result']['mAP']:.2f} "
          f"rank-1 {ev['result']['cmc']['1']:.2f}; identical to the plain reference on "
          f"{ev['check']['queries']} queries: {ev['check']['identical']}")
    if "full_sort" in ev:
        fs, tr, rounds = ev["full_sort"], ev["torchreid"], ev["rounds"]
        print(f"  full stable sort of every row {fs['seconds']:.2f}s ({fs['seconds'] / ev['seconds']:.1f}x "
              f"evaluate_ranking), identical: {fs['identical']}; kernels: torch {ev['kernels']['torch_cpu_capability']}"
              f", numpy AVX-512 {ev['kernels']['numpy_avx512f'] and ev['kernels']['numpy_x86_v4']}")
        if not tr.get("available"):
            print(f"  torchreid: {tr['reason']}")
        else:
            print(f"  torchreid ({'Cython' if tr['cython'] else 'python'} evaluate_rank) identical: {tr['identical']} "
                  f"(CMC counts {tr['cmc_counts_identical']}, |mAP diff| {tr['abs_diff_mAP']:.1e})")
        for kind in ("wall_s", "cpu_s"):
            t = rounds[kind]
            line = f"  {rounds['n']} rounds, {kind} min / median:"
            for name in ("ours_distance", "ours_ranking", "ours_total", "torchreid_distance", "torchreid_ranking",
                         "torchreid_total"):
                if name in t:
                    line += f" {name} {t[name]['min']:.2f} / {t[name]['median']:.2f};"
            if "speedup_min" in t:
                line += f" torchreid / ours {t['speedup_min']:.2f}x (min) {t['speedup_median']:.2f}x (median)"
            print(line)
    if "re_ranking" in r:
        rr = r["re_ranking"]
        tr = r["re_ranking_traced"]
        print(f"re_ranking: {rr['seconds']:.2f}s, peak RSS {rr['peak_rss_mb']:.0f} MB (inputs loaded: "
              f"{rr['rss_start_mb']:.0f} MB), numpy peak {tr['traced_numpy_peak_mb']:.0f} MB vs one dense "
              f"(Q+G)^2 float32 {p['dense_joint_matrix_float32_mb']:.0f} MB; mAP {rr['result']['mAP']:.2f}")
    if "re_ranking_check" in r:
        c = r["re_ranking_check"]
        print(f"re_ranking vs dense original on {c['queries']} x {c['gallery']}: max |diff| {c['max_abs_diff']:.2e}, "
              f"same rank-1 gallery image: {100 * c['same_top1_fraction']:.1f}% of the queries")
    print(f"load average now {common.load_average()}")


if __name__ == "__main__":
    main()
