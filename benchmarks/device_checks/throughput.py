"""Stage 3 of ``benchmarks/device_run.py``, ``throughput``: training images/s of Cluster Contrast, full ACFL and
the hng joint stage (``THROUGHPUT_METHODS``) on batches already on the device, against the compute floor (the same
model's forward + backward on the same batches).
"""

from __future__ import annotations

import copy
import time
import traceback
from typing import Any, Callable

from device_checks.context import StageContext, _config


THROUGHPUT_METHODS: dict[str, dict[str, Any]] = {
    "cluster_contrast": {},
    "full ACFL": {"memory": {"kind": "instance"}, "method": {"hard_samples": ["hpf", "hpi"]}},
    "hng joint stage": {"method": {"hard_samples": ["hng"]}},
}


def stage_throughput(ctx: StageContext) -> None:
    import torch
    import torch.nn.functional as F

    from hardreid.data.types import ReidDataset, Sample
    from hardreid.methods import Batch, EpochData
    from hardreid.models import model_from_config
    from hardreid.training.trainer import Trainer

    smoke = ctx.smoke
    n, clusters, batch, k = (400, 20, 8, 4) if smoke else (12936, 751, 64, 4)  # Market-1501: 12,936 images, 751 ids
    height, width = (64, 32) if smoke else (256, 128)
    warmup, steps = (1, 2) if smoke else (3, 12)
    backbones = {"mobilenet_v2": 2, "resnet50": 1}  # backbone -> last stride (configs/*/cpu_mobilenet.yaml, DESIGN)
    if smoke:
        backbones = {"mobilenet_v2": 2}
    fake = ReidDataset("throughput", "(batches made on the device)",
                       [Sample(f"/nonexistent/{i % clusters:04d}_c{1 + i % 6}s1_{i:06d}.jpg", i % clusters, i % 6)
                        for i in range(n)])
    g = torch.Generator().manual_seed(0)
    ctx.put("setup", {"images_in_memory": n, "clusters": clusters, "batch": f"{batch} = {batch // k} x {k}",
                      "size": f"{height}x{width}", "warmup_steps": warmup, "timed_steps": steps})

    def make_batches(views: int) -> list[Batch]:
        out = []
        for _ in range(2):
            ids = torch.randperm(clusters, generator=g)[: batch // k]
            indices = (ids[:, None] + clusters * torch.arange(k)[None, :]).flatten()  # k members of each cluster
            shape = (batch, 3, height, width)
            out.append(Batch(torch.randn(shape, generator=g).to(ctx.device), (indices % clusters).to(ctx.device),
                             (indices % 6).to(ctx.device), indices.to(ctx.device),
                             [torch.randn(shape, generator=g).to(ctx.device) for _ in range(views - 1)]))
        return out

    def timed(step: Callable[[int], None]) -> float:
        for i in range(warmup):
            step(i)
        ctx.synchronize()
        t = time.perf_counter()
        for i in range(steps):
            step(warmup + i)
        ctx.synchronize()
        return (time.perf_counter() - t) / steps

    for backbone, last_stride in backbones.items():
        base = _config(ctx, data={"batch_size": batch, "height": height, "width": width},
                       model={"backbone": backbone, "last_stride": last_stride})
        template = model_from_config(base)
        results: dict[str, Any] = {}
        trainer = Trainer(base, fake, ctx.tmp / backbone, model=copy.deepcopy(template))
        model, precision, scaler = trainer.model.train(), trainer.precision, trainer.scaler
        batches = make_batches(1)
        target = F.normalize(torch.randn(batch, model.feat_dim, generator=g), dim=1).to(ctx.device)

        def floor(i: int, optimise: bool = False) -> None:
            with precision.autocast():
                loss = (model(batches[i % 2].images).float() * target).sum()
            trainer.optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if optimise:
                scaler.step(trainer.optimizer)
                scaler.update()

        ctx.peak_gpu_mb(reset=True)
        floor_s = timed(floor)
        results["floor: forward + backward"] = {"seconds_per_step": floor_s, "images_per_s": batch / floor_s,
                                                "vs_floor": 1.0, "peak_gpu_mb": ctx.peak_gpu_mb(reset=True)}
        step_s = timed(lambda i: floor(i, optimise=True))
        results["floor + optimiser step"] = {"seconds_per_step": step_s, "images_per_s": batch / step_s,
                                             "vs_floor": step_s / floor_s, "peak_gpu_mb": ctx.peak_gpu_mb(reset=True)}
        ctx.put("backbones", results, backbone)
        trainer = model = None  # free the floor's copy before the methods
        for name, sections in THROUGHPUT_METHODS.items():
            if ctx.left() < 10:
                results[name] = {"skipped": "stage time limit"}
                continue
            try:
                cfg = _config(ctx, **{**sections, "data": {"batch_size": batch, "height": height, "width": width},
                                      "model": {"backbone": backbone, "last_stride": last_stride}})
                trainer = Trainer(cfg, fake, ctx.tmp / f"{backbone}_{name}", model=copy.deepcopy(template))
                features = F.normalize(torch.randn(n, trainer.model.feat_dim, generator=g), dim=1)
                labels = torch.arange(n) % clusters
                trainer.method.start_epoch(EpochData(0, features, labels, torch.arange(n) % 6, clusters), trainer.model)
                trainer.model.train()
                data = make_batches(trainer.method.num_views)
                seconds = timed(lambda i: trainer.train_step(data[i % 2], 0, i))
                results[name] = {"seconds_per_step": seconds, "images_per_s": batch / seconds,
                                 "vs_floor": seconds / floor_s, "peak_gpu_mb": ctx.peak_gpu_mb(reset=True)}
                trainer = None
            except Exception as exc:  # noqa: BLE001 - a stage reports any failure and goes on
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            if ctx.device.type == "cuda":
                torch.cuda.empty_cache()
            ctx.put("backbones", results, backbone)
