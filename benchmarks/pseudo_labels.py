"""Benchmark the pseudo-label pipeline: k-reciprocal Jaccard distance + DBSCAN.

Generates realistic clustered re-ID features (``common.reid_features``) at the
chosen N and D, then runs every mode in a fresh subprocess and records

* the time of each stage: kNN search, the rest of the Jaccard distance
  (k-reciprocal sets, weights, query expansion, Jaccard), DBSCAN, total;
* the peak resident memory of that subprocess (``VmHWM``: interpreter,
  imports and the features included, the same for every mode) and its RSS
  when the stage started;
* the agreement of the labels: adjusted Rand index (ARI) of every mode
  against the exact labels (and against the generator's identities, for
  information).

``--clusterers eps-auto hdbscan`` also times, on the distance of each mode,
``cluster.eps: auto`` (the SSG / MMT rule, then DBSCAN) and
``cluster.algorithm: hdbscan``; ``--camera mean standardize penalty`` runs
the camera-aware variants of the exact mode, each in its own subprocess
(``cluster.camera_normalize`` mean / standardize, ``cluster.same_camera_penalty``
``--penalty``), with DBSCAN at the first eps; their labels are compared with
the plain exact labels and the identities.  ``--camera camera_aware`` (and
``camera_aware_fast``, its ``cluster.search: fast`` twin) runs the CA-Jaccard
distance (``cluster.jaccard: camera_aware``, ``--k1-intra`` ... ``--k2-inter``,
the paper's values by default): seconds and peak memory next to the standard
Jaccard's in the same table.

``--reference PATH`` times, in the same run, a user-supplied copy of the
``faiss_rerank.py`` shared by SpCL / Cluster Contrast / ICE (its CPU branch,
``search_option=3``) followed by scikit-learn's DBSCAN on the dense matrix,
as those code bases do.  That code is not part of hardreid and never copied
into it: it is imported from the given path (a sibling ``faiss_utils.py`` is
used when present, else a minimal CPU stand-in).  The reference needs about
three dense N x N float32 matrices; it is skipped when that exceeds the
available memory.

Example::

    python benchmarks/pseudo_labels.py --n 12936 --dim 2048 --modes exact fast \\
        --reference /path/to/faiss_rerank.py --out results/pseudo_labels_12936.json
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common

common.repo_src_on_path()


# --------------------------------------------------------------------------- runs (in subprocesses)


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_hardreid(path: str, mode: str, k1: int, k2: int, eps: list[float], min_samples: int,
                 threads: int | None, device: str = "cpu", clusterers: tuple[str, ...] = (),
                 camera: str | None = None, penalty: float = 0.1,
                 ca_k: tuple[int, int, int, int] = (5, 20, 2, 4)) -> dict[str, Any]:
    """One mode of hardreid: Jaccard distance (kNN timed separately) then DBSCAN at each eps.

    ``device``: where the features are (the kNN search runs there; the rest of the Jaccard distance on the CPU).
    ``clusterers``: also eps auto and / or HDBSCAN on the same distance (timed, with the peak RSS after each).
    ``camera``: ``mean`` / ``standardize`` (camera normalisation, timed, before the Jaccard distance) or
    ``penalty`` (same-camera penalty ``penalty`` in the Jaccard distance) or ``camera_aware`` (CA-Jaccard with
    ``ca_k`` = k1_intra, k1_inter, k2_intra, k2_inter); the camera ids come from ``<path>.cams.npy``.
    """
    _set_threads(threads)
    import torch

    import hardreid.pseudo_labels.ca_jaccard as caj
    import hardreid.pseudo_labels.jaccard as jac
    from hardreid.pseudo_labels import auto_eps, camera_normalize, cluster_statistics, dbscan_labels, hdbscan_labels

    feats = torch.from_numpy(np.load(path)).to(device)
    cuda = feats.device.type == "cuda"
    cams = np.load(path.replace(".npy", ".cams.npy")) if camera else None
    # replaced in jaccard.py and ca_jaccard.py, where the distances look the search up (it is defined in knn.py)
    knn_name = "_knn_candidates" if mode == "exact" else "_fast_knn_candidates"
    knn_fn = getattr(jac, knn_name)
    knn_time = [0.0]

    def timed_knn(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = knn_fn(*args, **kwargs)
        if cuda:
            torch.cuda.synchronize()
        knn_time[0] += time.perf_counter() - t
        return out

    setattr(jac, knn_name, timed_knn)
    setattr(caj, knn_name, timed_knn)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss0 = common.rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    t_camera = None
    try:
        if camera in ("mean", "standardize"):
            feats = camera_normalize(feats, cams, camera)
            t_camera = time.perf_counter() - t
        if camera == "camera_aware":
            dist = caj.compute_camera_aware_jaccard_distance(feats, cams, *ca_k, mode=mode)
        else:
            dist = jac.compute_jaccard_distance(feats, k1=k1, k2=k2, mode=mode, camids=cams,
                                                same_camera_penalty=penalty if camera == "penalty" else 0.0)
    finally:
        setattr(jac, knn_name, knn_fn)
        setattr(caj, knn_name, knn_fn)
    t_jaccard = time.perf_counter() - t
    cpu_jaccard = time.process_time() - cpu
    peak_jaccard = common.peak_rss_mb()
    labels, t_dbscan, stats = {}, {}, {}
    for e in eps:
        t = time.perf_counter()
        lab = dbscan_labels(dist, eps=e, min_samples=min_samples)
        t_dbscan[str(e)] = time.perf_counter() - t
        labels[str(e)] = lab
        stats[str(e)] = cluster_statistics(lab).text()
    extra: dict[str, Any] = {}
    for name in clusterers:
        t, cpu = time.perf_counter(), time.process_time()
        if name == "eps-auto":
            value = auto_eps(dist)
            t_rule = time.perf_counter() - t
            lab = dbscan_labels(dist, eps=value, min_samples=min_samples)
            extra[name] = {"eps": value, "rule_s": t_rule}
        else:
            lab = hdbscan_labels(dist, min_samples, min_samples)
            extra[name] = {}
        extra[name].update({"seconds": time.perf_counter() - t, "cpu_s": time.process_time() - cpu,
                            "peak_rss_mb": common.peak_rss_mb(),
                            "stats": cluster_statistics(lab).text()})
        labels[name] = lab
    return {
        "seconds": {
            "knn": knn_time[0],
            "jaccard_rest": t_jaccard - knn_time[0] - (t_camera or 0.0),
            "jaccard": t_jaccard,
            "jaccard_cpu": cpu_jaccard,
            "camera_normalize": t_camera,
            "dbscan": t_dbscan,
            "total": t_jaccard + t_dbscan[str(eps[0])],
        },
        "clusterers": extra,
        "rss_start_mb": rss0,
        "peak_rss_after_jaccard_mb": peak_jaccard,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "device": str(feats.device),
        "nnz_per_row": dist.nnz / dist.shape[0],
        "result_mb": (dist.data.nbytes + dist.indices.nbytes + dist.indptr.nbytes) / 2**20,
        "labels": labels,
        "cluster_stats": stats,
    }


class _TimedIndex:
    """Wraps a faiss index; accumulates the time of ``add`` and ``search``."""

    seconds = 0.0

    def __init__(self, index: Any) -> None:
        self._index = index

    def add(self, x: Any) -> Any:
        t = time.perf_counter()
        out = self._index.add(x)
        _TimedIndex.seconds += time.perf_counter() - t
        return out

    def search(self, x: Any, k: int) -> Any:
        t = time.perf_counter()
        out = self._index.search(x, k)
        _TimedIndex.seconds += time.perf_counter() - t
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._index, name)


def _load_reference(path: str) -> types.ModuleType:
    """Import ``path`` as ``_hardreid_reference.<name>`` so that ``from .faiss_utils import ...`` works."""
    path = os.path.abspath(path)
    folder = os.path.dirname(path)
    pkg = types.ModuleType("_hardreid_reference")
    pkg.__path__ = [folder]  # type: ignore[attr-defined]
    sys.modules["_hardreid_reference"] = pkg
    if not os.path.exists(os.path.join(folder, "faiss_utils.py")):
        import faiss

        shim = types.ModuleType("_hardreid_reference.faiss_utils")

        def _gpu_only(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("GPU search is not available in this benchmark (use the CPU branch)")

        shim.index_init_cpu = lambda dim: faiss.IndexFlatL2(dim)  # type: ignore[attr-defined]
        shim.index_init_gpu = shim.search_index_pytorch = shim.search_raw_array_pytorch = _gpu_only  # type: ignore[attr-defined]
        sys.modules["_hardreid_reference.faiss_utils"] = shim
    name = "_hardreid_reference." + Path(path).stem
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import the reference from {path}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    if not hasattr(mod, "compute_jaccard_distance"):
        raise SystemExit(f"{path} defines no compute_jaccard_distance(features, k1, k2, ...)")
    return mod


def run_reference(path: str, ref_path: str, k1: int, k2: int, eps: list[float], min_samples: int,
                  threads: int | None) -> dict[str, Any]:
    """The reference faiss_rerank.compute_jaccard_distance (CPU branch) + sklearn DBSCAN(precomputed)."""
    _set_threads(threads)
    import torch
    from sklearn.cluster import DBSCAN

    from hardreid.pseudo_labels import relabel_by_first_occurrence

    mod = _load_reference(ref_path)
    if hasattr(mod, "index_init_cpu"):
        init = mod.index_init_cpu
        mod.index_init_cpu = lambda dim: _TimedIndex(init(dim))
    feats = torch.from_numpy(np.load(path))
    params = inspect.signature(mod.compute_jaccard_distance).parameters
    kwargs: dict[str, Any] = {"k1": k1, "k2": k2}
    if "search_option" in params:
        kwargs["search_option"] = 3  # CPU
    if "print_flag" in params:
        kwargs["print_flag"] = False
    rss0 = common.rss_mb()
    t = time.perf_counter()
    dist = mod.compute_jaccard_distance(feats, **kwargs)
    t_jaccard = time.perf_counter() - t
    peak_jaccard = common.peak_rss_mb()
    labels, t_dbscan = {}, {}
    for e in eps:
        t = time.perf_counter()
        lab = DBSCAN(eps=e, min_samples=min_samples, metric="precomputed", n_jobs=-1).fit_predict(dist)
        t_dbscan[str(e)] = time.perf_counter() - t
        labels[str(e)] = relabel_by_first_occurrence(lab)
    knn = _TimedIndex.seconds if hasattr(mod, "index_init_cpu") else None
    return {
        "seconds": {
            "knn": knn,
            "jaccard_rest": None if knn is None else t_jaccard - knn,
            "jaccard": t_jaccard,
            "dbscan": t_dbscan,
            "total": t_jaccard + t_dbscan[str(eps[0])],
        },
        "rss_start_mb": rss0,
        "peak_rss_after_jaccard_mb": peak_jaccard,
        "labels": labels,
    }


# --------------------------------------------------------------------------- driver


def _available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("inf")


def _ari(a: np.ndarray, b: np.ndarray) -> float:
    from sklearn.metrics import adjusted_rand_score

    return float(adjusted_rand_score(a, b))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=12936, help="number of images (default: Market-1501 train, 12,936)")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048, ResNet-50)")
    ap.add_argument("--modes", nargs="*", default=["exact", "fast"], choices=["exact", "fast"],
                    help="standard Jaccard modes (default exact fast; none: only the --camera variants)")
    ap.add_argument("--clusterers", nargs="*", default=[], choices=["eps-auto", "hdbscan"],
                    help="also time cluster.eps=auto and / or cluster.algorithm=hdbscan on each mode's distance")
    ap.add_argument("--camera", nargs="*", default=[],
                    choices=["mean", "standardize", "penalty", "camera_aware", "camera_aware_fast"],
                    help="camera-aware variants of the exact mode, each in its own process: camera_normalize "
                         "mean / standardize, same_camera_penalty --penalty, cluster.jaccard camera_aware "
                         "(CA-Jaccard; camera_aware_fast: with cluster.search fast)")
    ap.add_argument("--k1-intra", type=int, default=5, help="camera_aware: cluster.k1_intra (default 5, the paper's)")
    ap.add_argument("--k1-inter", type=int, default=20, help="camera_aware: cluster.k1_inter (default 20)")
    ap.add_argument("--k2-intra", type=int, default=2, help="camera_aware: cluster.k2_intra (default 2)")
    ap.add_argument("--k2-inter", type=int, default=4, help="camera_aware: cluster.k2_inter (default 4)")
    ap.add_argument("--penalty", type=float, default=0.1, help="same_camera_penalty of --camera penalty (default 0.1)")
    ap.add_argument("--reference", metavar="PATH", help="a copy of faiss_rerank.py to time in the same run")
    ap.add_argument("--k1", type=int, default=30)
    ap.add_argument("--k2", type=int, default=6)
    ap.add_argument("--eps", type=float, nargs="+", default=[0.5, 0.6],
                    help="DBSCAN radii; the first one counts in 'total' (default 0.5 0.6)")
    ap.add_argument("--min-samples", type=int, default=4)
    ap.add_argument("--cameras", type=int, default=6,
                    help="cameras of the synthetic features (default 6, Market-1501; MSMT17 has 15)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="runs per mode (fresh process each); the fastest is reported")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--out", metavar="JSON", help="write the results here")
    args = ap.parse_args(argv)

    t = time.perf_counter()
    feats, pids, camids = common.reid_features(args.n, args.dim, num_cams=args.cameras, seed=args.seed)
    t_gen = time.perf_counter() - t
    tmp = tempfile.TemporaryDirectory(prefix="hardreid_bench_")
    path = os.path.join(tmp.name, "features.npy")
    np.save(path, feats)
    np.save(path.replace(".npy", ".cams.npy"), camids)
    data = {
        "n": args.n, "dim": args.dim, "seed": args.seed, "identities": int(pids.max() + 1),
        "cameras": int(camids.max() + 1), "outliers": int((pids < 0).sum()), "generate_s": round(t_gen, 2),
        **common.feature_stats(feats, pids),
    }
    del feats
    print(f"features: N={args.n} D={args.dim} ids={data['identities']} cos same/diff id "
          f"{data['cos_same_id']}/{data['cos_diff_id']} (generated in {t_gen:.1f}s)", flush=True)

    runs: dict[str, dict[str, Any]] = {}
    # (name, function, positional arguments, keyword arguments); the optional ones by keyword, so that a change
    # of run_hardreid's signature cannot shift them into the wrong parameter (clusterers once landed in `device`)
    plan: list[tuple[str, Any, tuple, dict[str, Any]]] = []
    for mode in args.modes:
        plan.append((mode, run_hardreid, (path, mode, args.k1, args.k2, args.eps, args.min_samples, args.threads),
                     {"device": "cpu", "clusterers": tuple(args.clusterers)}))
    ca_k = (args.k1_intra, args.k1_inter, args.k2_intra, args.k2_inter)
    for camera in args.camera:
        mode = "fast" if camera == "camera_aware_fast" else "exact"
        name = camera.replace("_fast", "-fast") if camera.startswith("camera_aware") else f"camera-{camera}"
        plan.append((name, run_hardreid,
                     (path, mode, args.k1, args.k2, args.eps, args.min_samples, args.threads),
                     {"device": "cpu", "camera": camera.replace("_fast", ""), "penalty": args.penalty,
                      "ca_k": ca_k}))
    if args.reference:
        need_mb = 3 * 4 * args.n**2 / 2**20
        if need_mb > 0.9 * _available_mb():
            print(f"reference skipped: it needs ~{need_mb / 1024:.1f} GB (three dense N x N float32 matrices), "
                  f"{_available_mb() / 1024:.1f} GB available", flush=True)
            runs["reference"] = {"skipped": f"needs ~{need_mb / 1024:.1f} GB"}
        else:
            plan.append(("reference", run_reference,
                         (path, args.reference, args.k1, args.k2, args.eps, args.min_samples, args.threads), {}))
    for name, fn, fargs, fkwargs in plan:
        outs = []
        for rep in range(args.repeat):
            load_before = common.load_average()
            r = common.run_isolated(fn, *fargs, **fkwargs)
            out = r["result"]
            out["peak_rss_mb"] = r["peak_rss_mb"]
            out["cpu_s"] = r["cpu_s"]  # whole subprocess call: loading the features, Jaccard, every DBSCAN
            out["load_average_before"] = load_before
            out["load_average_after"] = common.load_average()
            sec = out["seconds"]
            print(f"{name:17s} run {rep + 1}: total {sec['total']:.2f}s (kNN {_fmt(sec['knn'])}s, jaccard "
                  f"{sec['jaccard']:.2f}s, dbscan {sec['dbscan'][str(args.eps[0])]:.2f}s; CPU {out['cpu_s']:.1f}s), peak RSS "
                  f"{out['peak_rss_mb']:.0f} MB, load {load_before} -> {out['load_average_after']}", flush=True)
            outs.append(out)
        best = min(outs, key=lambda o: o["seconds"]["total"])
        best["all_totals_s"] = [o["seconds"]["total"] for o in outs]
        best["all_peak_rss_mb"] = [o["peak_rss_mb"] for o in outs]
        runs[name] = best
    tmp.cleanup()

    # agreement of the labels
    exact = runs.get("exact")
    for name, run in runs.items():
        if "labels" not in run:
            continue
        run["ari_vs_identities"] = {e: _ari(pids, lab) for e, lab in run["labels"].items()}
        if exact is not None and name != "exact":
            run["ari_vs_exact"] = {e: _ari(exact["labels"][e], lab) for e, lab in run["labels"].items()
                                   if e in exact["labels"]}
    ref = runs.get("reference", {})
    for name, run in runs.items():
        if name != "reference" and "seconds" in ref and "seconds" in run:
            run["speedup_vs_reference"] = {
                "jaccard": ref["seconds"]["jaccard"] / run["seconds"]["jaccard"],
                "total": ref["seconds"]["total"] / run["seconds"]["total"],
            }
            run["peak_rss_fraction_of_reference"] = run["peak_rss_mb"] / ref["peak_rss_mb"]
    for run in runs.values():
        run.pop("labels", None)

    payload = {
        **common.result_header("pseudo_labels", argv),
        "params": {"k1": args.k1, "k2": args.k2, "eps": args.eps, "min_samples": args.min_samples,
                   "threads": args.threads, "repeat": args.repeat, "clusterers": args.clusterers,
                   "camera": args.camera, "penalty": args.penalty, "ca_k": list(ca_k)},
        "features": data,
        "runs": runs,
    }
    _print_table(payload, args.eps[0])
    if args.out:
        common.write_json(args.out, payload)
        print(f"wrote {args.out}")
    return payload


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def _print_table(payload: dict[str, Any], eps: float) -> None:
    e = str(eps)
    print(f"\nN={payload['features']['n']} D={payload['features']['dim']} "
          f"load {payload['machine']['load_average_1_5_15']}  (DBSCAN eps={e})")
    print(f"{'mode':18s}{'kNN s':>8s}{'rest s':>8s}{'DBSCAN s':>10s}{'total s':>9s}{'Jac CPU s':>10s}{'peak MB':>9s}"
          f"{'x ref':>7s}{'ARI/exact':>11s}{'ARI/ids':>9s}")
    for name, run in payload["runs"].items():
        if "seconds" not in run:
            print(f"{name:18s} {run.get('skipped', '')}")
            continue
        s = run["seconds"]
        print(f"{name:18s}{_fmt(s['knn']):>8s}{_fmt(s['jaccard_rest']):>8s}{_fmt(s['dbscan'][e]):>10s}"
              f"{_fmt(s['total']):>9s}{_fmt(s.get('jaccard_cpu')):>10s}{_fmt(run['peak_rss_mb'], '.0f'):>9s}"
              f"{_fmt(run.get('speedup_vs_reference', {}).get('total'), '.1f'):>7s}"
              f"{_fmt(run.get('ari_vs_exact', {}).get(e), '.4f'):>11s}"
              f"{_fmt(run.get('ari_vs_identities', {}).get(e), '.3f'):>9s}")
        if s.get("camera_normalize") is not None:
            print(f"{'':18s}camera normalisation {s['camera_normalize']:.2f}s (in 'rest s')")
        for cname, c in run.get("clusterers", {}).items():
            eps_note = f" (eps {c['eps']:.3f}, rule {c['rule_s']:.2f}s)" if "eps" in c else ""
            print(f"{'':18s}{cname}: {c['seconds']:.2f}s (CPU {c['cpu_s']:.2f}s){eps_note}, peak {c['peak_rss_mb']:.0f} MB, "
                  f"ARI/ids {_fmt(run['ari_vs_identities'].get(cname), '.3f')}: {c['stats']}")


if __name__ == "__main__":
    main()
