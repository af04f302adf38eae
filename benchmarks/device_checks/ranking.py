"""Stage 5 of ``benchmarks/device_run.py``, ``evaluation``: CMC / mAP at the Market-1501 test size (device and
CPU) and at 100,000 x 100,000 on the device, on ``benchmarks/evaluation.py``'s split generator.
"""

from __future__ import annotations

import time
import traceback

from device_checks.context import StageContext, _available_bytes


def stage_evaluation(ctx: StageContext) -> None:
    import torch

    import evaluation as bench
    from hardreid.evaluation import evaluate_ranking

    smoke, dev = ctx.smoke, ctx.device
    sizes = {"market1501_test": (60, 300, 20, 64) if smoke else (3368, 15913, 750, 2048),
             "100k_x_100k": (400, 400, 80, 32) if smoke else (100000, 100000, 7782, 256)}
    ctx.put("setup", {name: {"queries": q, "gallery": g, "ids": ids, "dim": d} for name, (q, g, ids, d) in sizes.items()})
    for name, (nq, ng, ids, dim) in sizes.items():
        t = time.perf_counter()
        split = bench.market_split(nq, ng, ids, dim, seed=0)
        ctx.put("generate_s", round(time.perf_counter() - t, 1), name)
        devices = [dev] if name != "market1501_test" or dev.type == "cpu" else [dev, torch.device("cpu")]
        for device in devices:
            if ctx.left() < 5:
                ctx.put("runs", {"skipped": "stage time limit"}, f"{name} {device.type}")
                continue
            if device.type == "cpu" and nq * ng * 4 > 0.25 * _available_bytes():
                ctx.put("runs", {"skipped": f"the {nq} x {ng} matrix needs {nq * ng * 4 / 2**30:.0f} GB"},
                        f"{name} {device.type}")
                continue
            try:
                qf, gf = torch.from_numpy(split["qf"]).to(device), torch.from_numpy(split["gf"]).to(device)
                ctx.peak_gpu_mb(reset=True)
                ctx.synchronize()
                t = time.perf_counter()
                dist = qf @ gf.t()  # 2 - 2 q.g in place (hardreid.evaluation.pipeline.squared_distance, one matrix)
                dist.mul_(-2.0).add_(2.0).clamp_(min=0.0)
                ctx.synchronize()
                t_dist = time.perf_counter() - t
                result = evaluate_ranking(dist, split["q_pids"], split["g_pids"], split["q_camids"], split["g_camids"],
                                          max_rank=50)
                ctx.synchronize()
                seconds = time.perf_counter() - t
                ctx.put("runs", {"queries": nq, "gallery": ng, "device": device.type, "distance_s": round(t_dist, 3),
                                 "total_s": round(seconds, 3), "mAP": round(result.mAP, 2),
                                 "top1": round(float(result.cmc[0]), 2), "peak_gpu_mb": ctx.peak_gpu_mb()},
                        f"{name} {device.type}")
                del qf, gf, dist
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory
                traceback.print_exc()
                ctx.put("runs", {"error": f"{type(exc).__name__}: {exc}"[:500]}, f"{name} {device.type}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
