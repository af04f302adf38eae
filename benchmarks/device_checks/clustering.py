"""Stage 4 of ``benchmarks/device_run.py``, ``pseudo_labels``: Jaccard distance + DBSCAN, exact and fast search,
on the device at growing N (the largest the time left allows) against the CPU, through
``benchmarks/pseudo_labels.py``'s runner on ``common.reid_features``.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from typing import Any

import common

from device_checks.context import StageContext


def stage_pseudo_labels(ctx: StageContext) -> None:
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    import pseudo_labels as bench

    smoke, dev = ctx.smoke, str(ctx.device)
    dim = 64 if smoke else 2048
    small, big = (600, 1500) if smoke else (12936, 100000)
    larger = (3000,) if smoke else (500000, 300000, 200000)
    k1, k2, eps, min_samples = 30, 6, [0.5], 4
    ctx.put("setup", {"dim": dim, "k1": k1, "k2": k2, "eps": eps[0], "min_samples": min_samples,
                      "device": dev, "features": "benchmarks/common.reid_features"})
    labels: dict[str, Any] = {}
    timings: dict[int, dict[str, Any]] = {}

    def features(n: int) -> tuple[str, float]:
        t = time.perf_counter()
        feats, _, _ = common.reid_features(n, dim, seed=0)
        path = str(ctx.tmp / f"features_{n}.npy")
        np.save(path, feats)
        return path, time.perf_counter() - t

    def run(n: int, path: str, device: str, mode: str) -> None:
        key = f"{n} {device} {mode}"
        try:
            out = bench.run_hardreid(path, mode, k1, k2, eps, min_samples, ctx.args.threads, device=device)
        except Exception as exc:  # noqa: BLE001 - e.g. out of memory at the largest N
            traceback.print_exc()
            ctx.put("runs", {"n": n, "device": device, "mode": mode, "error": f"{type(exc).__name__}: {exc}"[:500]}, key)
            return
        labels[key] = out.pop("labels")[str(eps[0])]
        sec = out["seconds"]
        row = {"n": n, "device": device, "mode": mode, "knn_s": sec["knn"], "jaccard_rest_s": sec["jaccard_rest"],
               "dbscan_s": sec["dbscan"][str(eps[0])], "total_s": sec["total"], "peak_gpu_mb": out["peak_gpu_mb"],
               "peak_rss_mb": round(out["peak_rss_after_jaccard_mb"]), "clusters": out["cluster_stats"][str(eps[0])]}
        reference = f"{n} cpu exact" if f"{n} cpu exact" in labels else f"{n} {device} exact"
        if reference != key and reference in labels:  # agreement of the labels with the exact search's
            row["ari"] = round(float(adjusted_rand_score(labels[reference], labels[key])), 4)
            row["ari_vs"] = reference.split(" ", 1)[1]
        timings.setdefault(n, {})[f"{device} {mode}"] = sec
        ctx.put("runs", row, key)

    path, gen_s = features(small)
    ctx.put("generate_s", round(gen_s, 1), str(small))
    for device, mode in (("cpu", "exact"), ("cpu", "fast"), (dev, "exact"), (dev, "fast")):
        if device == "cpu" and dev == "cpu" and mode in ("exact", "fast") and f"{small} cpu {mode}" in labels:
            continue
        run(small, path, device, mode)
    path, gen_big = features(big)
    ctx.put("generate_s", round(gen_big, 1), str(big))
    for mode in ("exact", "fast"):
        if ctx.left() > 10:
            run(big, path, dev, mode)
    os.remove(path)
    fast = timings.get(big, {}).get(f"{dev} fast")
    exact = timings.get(big, {}).get(f"{dev} exact")
    chosen = None
    if fast is not None:
        for n in larger:  # the largest N whose estimated time fits (search ~ N^2, the rest ~ N, generation ~ N)
            r = n / big
            est_fast = gen_big * r + fast["knn"] * r * r + 1.2 * fast["jaccard_rest"] * r + 5
            est_exact = exact["knn"] * r * r + 1.2 * exact["jaccard_rest"] * r if exact else math.inf
            ctx.put("estimates_s", {"fast": round(est_fast), "then exact": round(est_exact)}, str(n))
            if est_fast < 0.85 * ctx.left():
                chosen = n
                path, gen_s = features(n)
                ctx.put("generate_s", round(gen_s, 1), str(n))
                run(n, path, dev, "fast")
                if est_exact < 0.85 * ctx.left():
                    run(n, path, dev, "exact")
                break
    ctx.put("largest_n", chosen or big)
