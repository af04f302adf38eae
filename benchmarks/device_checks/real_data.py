"""Stage 6 of ``benchmarks/device_run.py``, ``real_data``: Cluster Contrast against full ACFL on ``--data``
(the smoke run packs a tiny synthetic set instead), one epoch of each in turn until the time runs out.
"""

from __future__ import annotations

import time

from device_checks.context import REPO, StageContext, _loader_workers


def stage_real_data(ctx: StageContext) -> None:
    from hardreid.config import load_config
    from hardreid.data.datasets import load_dataset
    from hardreid.data.transforms import eval_transform
    from hardreid.evaluation.features import calibrate_batchnorm
    from hardreid.training.trainer import Trainer

    smoke, args = ctx.smoke, ctx.args
    root = args.data
    if root is None and smoke:  # the smoke run packs the tiny synthetic set as the device run packs real data
        import pack_data

        from hardreid.data.synthetic import SyntheticConfig, generate_synthetic

        tiny = generate_synthetic(ctx.tmp / "synthetic", SyntheticConfig(num_train_ids=10, num_test_ids=6, num_cameras=2,
                                                                          images_per_camera=3, num_distractors=2, seed=3))
        root = ctx.tmp / "packed"
        pack_data.pack(tiny, root, cap_mb=1.0, height=64, width=32, min_height=16, workers=1)
    if root is None:
        ctx.put("skipped", "no --data given")
        return
    height, width, iters, workers = (64, 32, 2, 0) if smoke else (256, 128, args.iters, _loader_workers())
    overrides = [f"data.height={height}", f"data.width={width}", f"data.workers={workers}", f"train.iters={iters}",
                 f"train.device={ctx.device}", "train.eval_every=1", f"train.seed={args.seed}",
                 # both methods as published: plain BatchNorm and the standard Jaccard distance (the ACFL CPU config
                 # is camera-aware since issue 26, configs/camera_aware.yaml; Cluster Contrast's official one is not)
                 "model.camera_bn=false", "cluster.jaccard=standard"]
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    if smoke:
        overrides += ["data.batch_size=8", "data.num_instances=4", "cluster.k1=6", "cluster.k2=2", "cluster.eps=0.6", "cluster.min_samples=2",
                      "train.amp_cpu=true"]
    configs = {"cluster_contrast": REPO / "configs" / "cluster_contrast" / "cpu_official.yaml",
               "full ACFL": REPO / "configs" / "acfl" / "cpu_mobilenet.yaml"}
    data = load_dataset("market", root)
    trainers = {}
    for name, path in configs.items():
        cfg = load_config(path, overrides)
        trainers[name] = Trainer(cfg, data, ctx.tmp / name.replace(" ", "_"))
        if trainers[name].wants_bn_calibration():
            calibrate_batchnorm(trainers[name].model, data.train, eval_transform(cfg.data), cfg.eval.batch_size,
                                cfg.data.workers, ctx.device)
    first = next(iter(trainers.values())).cfg
    ctx.put("setup", {"data": str(root), "train_images": len(data.train), "query": len(data.query),
                      "gallery": len(data.gallery), "configs": {k: str(v.relative_to(REPO)) for k, v in configs.items()},
                      "overrides": overrides, "batch": first.data.batch_size,
                      "lr": {name: t.cfg.optim.lr for name, t in trainers.items()}})
    epoch_seconds: dict[str, float] = {}
    max_epochs = 2 if smoke else first.train.epochs
    for epoch in range(max_epochs):
        need = sum(epoch_seconds.values())
        if epoch > 0 and 1.1 * need > ctx.left():
            ctx.put("stopped", f"after {epoch} epochs: the next pair needs ~{need:.0f}s, {ctx.left():.0f}s left")
            break
        for name, trainer in trainers.items():
            t = time.perf_counter()
            row = trainer.run_epoch(epoch)
            epoch_seconds[name] = time.perf_counter() - t
            keep = ("epoch", "mAP", "top1", "top5", "clusters", "outliers", "loss", "label_ari", "seconds",
                    "seconds_per_step")
            ctx.put("epochs", [*ctx.result.get("epochs", {}).get(name, []), {k: row[k] for k in keep if k in row}], name)
