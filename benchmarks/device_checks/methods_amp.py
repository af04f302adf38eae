"""Stage 2 of ``benchmarks/device_run.py``, ``methods_amp``: one short epoch of every method (``METHODS``) under
the run's mixed precision on a synthetic set: pass / fail, loss finite, seconds per step.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import traceback
from typing import Any

from device_checks.context import StageContext, _config


# name -> config sections: each base alone, each generator / add-on on Cluster Contrast, full ACFL and hng on
# every base (the combinations users train; every base x generator pair runs on CPU in tests/test_precision.py)
METHODS: dict[str, dict[str, Any]] = {
    "cluster_contrast": {},
    "acfl (cc, instance memory, hpf+hpi)": {"memory": {"kind": "instance"}, "method": {"hard_samples": ["hpf", "hpi"]}},
    "acfl, queue memory": {"memory": {"kind": "queue"}, "method": {"hard_samples": ["hpf", "hpi"]}},
    "cc + hpf": {"method": {"hard_samples": ["hpf"]}},
    "cc + align": {"method": {"hard_samples": ["align"]}},
    "cc + hng": {"method": {"hard_samples": ["hng"]}},
    "cc + camera_proxy + mean_teacher": {"method": {"hard_samples": ["camera_proxy", "mean_teacher"]}},
    "spcl": {"method": {"base": "spcl"}},
    "spcl + hpf+hpi": {"method": {"base": "spcl", "hard_samples": ["hpf", "hpi"]}},
    "spcl + hng": {"method": {"base": "spcl", "hard_samples": ["hng"]}},
    "ice": {"method": {"base": "ice"}},
    "ice + hpf+hpi": {"method": {"base": "ice", "hard_samples": ["hpf", "hpi"]}},
    "ice + hng": {"method": {"base": "ice", "hard_samples": ["hng"]}},
}


def stage_methods_amp(ctx: StageContext) -> None:
    import torch

    from hardreid.data.datasets import load_dataset
    from hardreid.data.synthetic import SyntheticConfig, generate_synthetic
    from hardreid.data.transforms import eval_transform
    from hardreid.evaluation.features import calibrate_batchnorm
    from hardreid.precision import training_precision
    from hardreid.models import model_from_config
    from hardreid.training.trainer import Trainer

    smoke = ctx.smoke
    syn = SyntheticConfig(num_train_ids=10 if smoke else 32, num_test_ids=6 if smoke else 16,
                          num_cameras=2 if smoke else 4, images_per_camera=3, num_distractors=2 if smoke else 10, seed=5)
    t = time.perf_counter()
    data = load_dataset("market", generate_synthetic(ctx.tmp / "synthetic", syn))
    train_only = dataclasses.replace(data, query=[], gallery=[])
    cfg = _config(ctx)
    precision = training_precision(cfg.train.amp, cfg.train.amp_dtype, cfg.train.amp_cpu, ctx.device)
    template = model_from_config(cfg).to(ctx.device)  # random init, BatchNorm calibrated once, copied per method
    calibrate_batchnorm(template, data.train, eval_transform(cfg.data), cfg.eval.batch_size, cfg.data.workers, ctx.device)
    ctx.put("setup", {"train_images": len(data.train), "query": len(data.query), "gallery": len(data.gallery),
                      "backbone": cfg.model.backbone, "size": f"{cfg.data.height}x{cfg.data.width}",
                      "batch": cfg.data.batch_size, "steps": cfg.train.iters, "loader_workers": cfg.data.workers,
                      "autocast": str(precision.dtype).replace("torch.", "") if precision.enabled else "off",
                      "grad_scaler": precision.scaler, "seconds": round(time.perf_counter() - t, 1)})
    per_method = None
    for i, (name, sections) in enumerate(METHODS.items()):
        if per_method is not None and ctx.left() < 1.5 * per_method:
            ctx.put("methods", {"ok": None, "skipped": "stage time limit"}, name)
            continue
        t = time.perf_counter()
        try:
            trainer = Trainer(_config(ctx, **sections), data if i == 0 else train_only, ctx.tmp / "runs" / str(i),
                              model=copy.deepcopy(template))
            row = trainer.run_epoch(0)
            terms = {k: v for k, v in row.items() if k.startswith("loss")}
            bad = [k for k, v in terms.items() if not math.isfinite(v)]
            skipped = row.get("amp_skipped_steps", 0.0)  # float16: the gradient scaler's first steps overflow
            result = {"ok": not bad and skipped < cfg.train.iters, "loss": row["loss"], "nonfinite": bad,
                      "amp_skipped_steps": skipped, "seconds_per_step": row["seconds_per_step"],
                      "clusters": row["clusters"], "peak_gpu_mb": ctx.peak_gpu_mb(reset=True)}
            if "mAP" in row:
                result["mAP"] = row["mAP"]
            del trainer
        except Exception as exc:  # noqa: BLE001 - one method's failure is a result, the others still run
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        result["seconds"] = round(time.perf_counter() - t, 2)
        per_method = max(per_method or 0.0, result["seconds"])
        if ctx.device.type == "cuda":
            torch.cuda.empty_cache()
        ctx.put("methods", result, name)
