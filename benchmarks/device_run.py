"""One command that measures hardreid on a GPU within a hard wall-time budget (default 8 minutes).

Stages, in this order, each in its own subprocess with its own time limit; a stage that would start with too
little time left is skipped, one that runs out of time is stopped, and the report says so:

1. ``cuda_tests``     the tests marked ``cuda`` (``pytest -m cuda``): passed / failed / skipped.
2. ``methods_amp``    one short epoch of every method (each base; each generator on Cluster Contrast; full
                      ACFL and hng on each base) under the run's mixed precision (float16 autocast on CUDA) on a
                      synthetic set it generates: pass / fail, loss finite, seconds per step.
3. ``throughput``     training images/s of Cluster Contrast, full ACFL and the hng joint stage, MobileNetV2 and
                      ResNet-50 at 256x128, batch 64 (16 x 4) already on the device (``Trainer.train_step``),
                      against the compute floor: the same model's forward + backward on the same batches.
4. ``pseudo_labels``  Jaccard distance + DBSCAN, exact and fast search, on the GPU at N = 12,936, 100,000 and the
                      largest N (up to 500,000) the time left allows, against the CPU at 12,936
                      (``benchmarks/pseudo_labels.py``'s features and runner, D = 2048).
5. ``evaluation``     CMC / mAP at the Market-1501 test size (GPU and CPU) and at 100,000 x 100,000 on the GPU
                      (``benchmarks/evaluation.py``'s split generator).
6. ``real_data``      if ``--data`` is given and time is left: Cluster Contrast against full ACFL on that data set
                      (``configs/cluster_contrast/cpu_official.yaml``, ``configs/acfl/cpu_mobilenet.yaml`` at 256x128, MobileNetV2 from
                      ``--weights``), one epoch of each in turn until the time runs out.

It writes ``device_run.json``, ``device_run.md`` and ``device_run.log`` (every stage's output) into ``--out``,
rewritten after each stage. One GPU cannot test multi-GPU training: that check is the CPU test with 2 gloo
processes against one (tests/test_distributed.py).

``--smoke`` runs every stage at toy size on the CPU (bfloat16 autocast) so that the script cannot rot; its
numbers are not GPU numbers.

Run from the repository root (nothing needs installing; ``src/`` is put on the path)::

    python benchmarks/device_run.py --out results/device --data device_data/cuhk03 \\
        --weights device_data/mobilenet_v2_imagenet.pth
    python benchmarks/device_run.py --smoke --out /tmp/device_smoke
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import common  # noqa: E402

common.repo_src_on_path()

REPORT_RESERVE_S = 8.0  # kept back from every stage for the reports and a killed stage's clean-up
KILL_GRACE_S = 3.0  # a stage gets this long after its limit to finish writing before it is killed
MULTI_GPU_NOTE = ("One GPU cannot test multi-GPU training (torchrun, DDP, NCCL): that check is the CPU test with "
                  "2 gloo processes against one (tests/test_distributed.py), not part of this run.")
SMOKE_NOTE = "Smoke run: every stage at toy size on the CPU (bfloat16 autocast); these are not GPU numbers."


@dataclass(frozen=True)
class Stage:
    name: str
    cap_s: float | None  # time limit of a full run (None: whatever is left)
    smoke_cap_s: float  # time limit of a smoke run
    min_s: float  # skipped when less than this is left
    what: str


STAGES = [
    Stage("cuda_tests", 75, 30, 15, "the tests marked cuda (pytest -m cuda)"),
    Stage("methods_amp", 100, 40, 20, "one short epoch of every method under mixed precision, synthetic data"),
    Stage("throughput", 80, 25, 20, "training images/s against the forward + backward floor"),
    Stage("pseudo_labels", 180, 20, 30, "Jaccard distance + DBSCAN, exact and fast, GPU vs CPU"),
    Stage("evaluation", 60, 15, 10, "CMC / mAP at Market-1501 test size and 100k x 100k"),
    Stage("real_data", None, 35, 45, "Cluster Contrast vs full ACFL on --data, as many epochs as fit"),
]
STAGE_NAMES = [s.name for s in STAGES]


# =============================================================================================== stage side


class StageContext:
    """What a stage's subprocess knows: its arguments, its time limit, and a result dict saved at every change."""

    def __init__(self, args: argparse.Namespace) -> None:
        import torch

        self.args = args
        self.smoke: bool = args.smoke
        self.device = torch.device(args.device)
        self.path = Path(args.stage_out)
        self.start = time.perf_counter()
        self.limit = float(args.stage_seconds)
        # next to the result file, in the driver's temporary folder: removed with it, even after a stopped stage
        self.tmp = Path(tempfile.mkdtemp(prefix=f"hardreid_{args.stage}_", dir=self.path.parent))
        self.result: dict[str, Any] = {}
        if args.threads:
            torch.set_num_threads(args.threads)

    def left(self) -> float:
        return self.limit - (time.perf_counter() - self.start)

    def put(self, key: str, value: Any, item: str | None = None) -> None:
        """``result[key] = value`` (or ``result[key][item] = value``), then save (a killed stage keeps it)."""
        if item is None:
            self.result[key] = value
        else:
            self.result.setdefault(key, {})[item] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=common._jsonable))
        tmp.replace(self.path)

    def synchronize(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def peak_gpu_mb(self, reset: bool = False) -> float | None:
        import torch

        if self.device.type != "cuda":
            return None
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        if reset:
            torch.cuda.reset_peak_memory_stats(self.device)
        return round(peak, 1)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _available_bytes() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines() if Path("/proc/meminfo").is_file() else []:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024.0
    return math.inf


def _loader_workers() -> int:
    """Data-loading processes: up to 8, none when /dev/shm (where workers hand batches over) is small,
    as in some containers: a full /dev/shm kills the loader."""
    try:
        st = os.statvfs("/dev/shm")
        free_gb = st.f_bavail * st.f_frsize / 2**30
    except OSError:
        free_gb = 0.0
    return min(8, _cores()) if free_gb >= 2.0 else 0


def _config(ctx: StageContext, **sections: dict[str, Any]):
    """The stages' training settings: ResNet-50 at 256x128 on the device, MobileNetV2 at 64x32 in a smoke run."""
    from hardreid.config import Config, apply_dict

    smoke = ctx.smoke
    settings: dict[str, dict[str, Any]] = {
        "data": {"format": "market", "height": 64 if smoke else 256, "width": 32 if smoke else 128,
                 "workers": 0 if smoke else _loader_workers(), "batch_size": 8 if smoke else 32, "num_instances": 4},
        "model": {"backbone": "mobilenet_v2" if smoke else "resnet50", "last_stride": 2 if smoke else 1},
        "cluster": {"k1": 6 if smoke else 10, "k2": 2 if smoke else 3, "eps": 0.6, "min_samples": 2},
        "train": {"epochs": 1, "iters": 1 if smoke else 12, "eval_every": 0, "device": str(ctx.device), "seed": 0,
                  "amp": True, "amp_cpu": True},
        "eval": {"batch_size": 32 if smoke else 128},
        "hng": {"warmup_epochs": 0, "pictures": 0, **({"ngf": 8, "ndf": 8} if smoke else {})},
    }
    for section, values in sections.items():
        settings.setdefault(section, {}).update(values)
    return apply_dict(Config(), settings, "device_run")


# ---------------------------------------------------------------------------------------------- 1. tests


def stage_cuda_tests(ctx: StageContext) -> None:
    import importlib.util
    import xml.etree.ElementTree as ET

    if importlib.util.find_spec("pytest") is None:
        ctx.put("skipped", "pytest is not installed")
        return
    junit = ctx.tmp / "junit.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "cuda", "-rfEs", f"--junitxml={junit}",
           *files]  # only the files that hold cuda tests: collecting the others costs half a minute
    ctx.put("command", " ".join(cmd[1:]))
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=max(5.0, ctx.left() - 2))
    print(proc.stdout[-5000:], proc.stderr[-2000:], flush=True)
    tests = []
    if junit.is_file():
        for case in ET.parse(junit).getroot().iter("testcase"):
            outcome = "passed"
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    detail = (node.get("message") or "")[:300]
                    break
            else:
                detail = ""
            tests.append({"test": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                          "seconds": round(float(case.get("time", 0.0)), 2), "detail": detail})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    ctx.put("tests", tests)
    ctx.put("summary", {**counts, "exit_code": proc.returncode, "seconds": round(time.perf_counter() - t, 1)})


# ---------------------------------------------------------------------------------------------- 2. methods

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


# ---------------------------------------------------------------------------------------------- 3. throughput

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


# ---------------------------------------------------------------------------------------------- 4. pseudo labels


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


# ---------------------------------------------------------------------------------------------- 5. evaluation


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


# ---------------------------------------------------------------------------------------------- 6. real data


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
                 f"train.device={ctx.device}", "train.eval_every=1", f"train.seed={args.seed}"]
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


STAGE_FUNCTIONS: dict[str, Callable[[StageContext], None]] = {
    "cuda_tests": stage_cuda_tests, "methods_amp": stage_methods_amp, "throughput": stage_throughput,
    "pseudo_labels": stage_pseudo_labels, "evaluation": stage_evaluation, "real_data": stage_real_data,
}


def run_stage_here(args: argparse.Namespace) -> int:
    ctx = StageContext(args)
    try:
        STAGE_FUNCTIONS[args.stage](ctx)
        return 0
    except Exception as exc:  # noqa: BLE001 - reported to the parent through the result file
        traceback.print_exc()
        ctx.put("error", f"{type(exc).__name__}: {exc}"[:1000])
        return 1


# =============================================================================================== driver side


def _stage_args(args: argparse.Namespace, stage: str, out: Path, seconds: float) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--stage-out", str(out),
           "--stage-seconds", f"{seconds:.1f}", "--device", args.device, "--seed", str(args.seed), "--iters", str(args.iters)]
    if args.smoke:
        cmd.append("--smoke")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.data:
        cmd += ["--data", str(Path(args.data).resolve())]
    if args.weights:
        cmd += ["--weights", str(Path(args.weights).resolve())]
    return cmd


def run_stage(stage: Stage, args: argparse.Namespace, deadline: float, log, workdir: Path) -> dict[str, Any]:
    """Run one stage in a subprocess with its time limit; its (possibly partial) results and status."""
    left = deadline - time.monotonic() - REPORT_RESERVE_S
    cap = stage.smoke_cap_s if args.smoke else stage.cap_s
    limit = left if cap is None else min(cap, left)
    if limit < (stage.min_s if not args.smoke else min(stage.min_s, 5.0)):
        return {"status": "skipped", "note": f"time budget: {max(left, 0):.0f}s left, the stage needs {stage.min_s:.0f}s"}
    out = workdir / f"{stage.name}.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log.write(f"\n===== {stage.name} ({stage.what}): limit {limit:.0f}s =====\n")
    log.flush()
    t = time.monotonic()
    proc = subprocess.Popen(_stage_args(args, stage.name, out, limit), cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    try:
        rc = proc.wait(timeout=limit + KILL_GRACE_S)
        status = "ok" if rc == 0 else f"failed (exit code {rc})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        status = "stopped at its time limit (partial results)"
    seconds = time.monotonic() - t
    try:
        result = json.loads(out.read_text()) if out.is_file() else {}
    except json.JSONDecodeError:
        result = {}
    if "error" in result:
        status = "failed"
    if "skipped" in result and status == "ok":
        status = "skipped"
    log.write(f"===== {stage.name}: {status} in {seconds:.1f}s =====\n")
    log.flush()
    return {"status": status, "seconds": round(seconds, 1), "limit_s": round(limit, 1), **result}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="examples:\n  python benchmarks/device_run.py --out results/device --data "
                                        "device_data/cuhk03 --weights device_data/mobilenet_v2_imagenet.pth\n"
                                        "  python benchmarks/device_run.py --smoke --out /tmp/device_smoke")
    ap.add_argument("--out", type=Path, help="folder for device_run.json / .md / .log (required)")
    ap.add_argument("--budget-min", type=float, default=None,
                    help="hard wall-time budget in minutes (default 8; 2.8 with --smoke)")
    ap.add_argument("--smoke", action="store_true", help="every stage at toy size on the CPU (not GPU numbers)")
    ap.add_argument("--device", default=None, help="default: cuda (cpu with --smoke)")
    ap.add_argument("--stages", nargs="+", choices=STAGE_NAMES, default=STAGE_NAMES, help="a subset of the stages")
    ap.add_argument("--data", help="a (packed) Market-layout data set for the real_data stage (benchmarks/pack_data.py)")
    ap.add_argument("--weights", help="MobileNetV2 ImageNet weights (torchvision layout) for the real_data stage")
    ap.add_argument("--iters", type=int, default=100, help="training steps per epoch in the real_data stage (default 100)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in every stage (default: torch's; 1 with --smoke, whose tensors are tiny)")
    ap.add_argument("--stage", choices=STAGE_NAMES, help=argparse.SUPPRESS)
    ap.add_argument("--stage-out", help=argparse.SUPPRESS)
    ap.add_argument("--stage-seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.device = args.device or ("cpu" if args.smoke else "cuda")
    if args.smoke and args.threads is None:
        args.threads = 1
    if args.stage:
        sys.exit(run_stage_here(args))
    if args.out is None:
        ap.error("--out DIR is required")
    if args.data and not Path(args.data).is_dir():
        ap.error(f"--data {args.data} is not a folder (pack one with benchmarks/pack_data.py)")
    if args.weights and not Path(args.weights).is_file():
        ap.error(f"--weights {args.weights} is not a file")
    budget_s = 60.0 * (args.budget_min if args.budget_min is not None else (2.8 if args.smoke else 8.0))
    start, deadline = time.monotonic(), time.monotonic() + budget_s
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("no CUDA device here: use --smoke (or --device cpu for a slow full run)")
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        **common.result_header("device_run", argv), "smoke": args.smoke, "device": args.device,
        "budget_s": budget_s, "notes": [MULTI_GPU_NOTE] + ([SMOKE_NOTE] if args.smoke else []), "stages": {},
    }
    report["machine"]["nvidia_smi"] = _nvidia_smi()
    with tempfile.TemporaryDirectory(prefix="hardreid_device_run_") as workdir, \
            open(args.out / "device_run.log", "w") as log:
        for stage in STAGES:
            if stage.name not in args.stages:
                continue
            print(f"[{time.monotonic() - start:5.0f}s] {stage.name} ...", flush=True)
            result = run_stage(stage, args, deadline, log, Path(workdir))
            report["stages"][stage.name] = result
            report["elapsed_s"] = round(time.monotonic() - start, 1)
            print(f"[{time.monotonic() - start:5.0f}s] {stage.name}: {result['status']}", flush=True)
            write_reports(report, args.out)
    print(f"wrote {args.out / 'device_run.json'} and device_run.md in {report['elapsed_s']:.0f}s "
          f"(budget {budget_s:.0f}s)")
    return report


def _nvidia_smi() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# =============================================================================================== reports


def write_reports(report: dict[str, Any], out: Path) -> None:
    common.write_json(out / "device_run.json", report)
    (out / "device_run.md").write_text(markdown(report))


def _f(x: Any, spec: str = ".2f") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *["| " + " | ".join(_f(c) for c in row) + " |" for row in rows]]


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    lines = [f"# hardreid device run ({report['date']})", "",
             f"Machine: {m.get('gpu') or 'no GPU'} ({m.get('nvidia_smi') or '-'}), CUDA {m.get('cuda')}, "
             f"{m.get('cpu')}, {m.get('usable_cores')} cores, {m.get('ram_gb')} GB RAM; torch {m.get('torch')}, "
             f"Python {m.get('python')}.", "",
             f"Command: `{report['command']}`. Budget {report['budget_s']:.0f}s, used {report.get('elapsed_s', 0):.0f}s.", "",
             *[f"- {note}" for note in report["notes"]], "",
             *_table(["stage", "status", "seconds", "limit"],
                     [[name, s["status"], s.get("seconds"), s.get("limit_s")] for name, s in report["stages"].items()])]
    for name, s in report["stages"].items():
        lines += ["", f"## {name}", ""]
        if s.get("note"):
            lines.append(s["note"])
        if s.get("error"):
            lines.append(f"Error: `{s['error'][:300]}`")
        if s.get("skipped"):
            lines.append(f"Skipped: {s['skipped']}")
        render = RENDERERS.get(name)
        if render is not None and s["status"] != "skipped":
            try:
                lines += render(s)
            except Exception as exc:  # noqa: BLE001 - a partial result must not lose the report
                lines.append(f"(could not render: {type(exc).__name__}: {exc})")
    return "\n".join(lines) + "\n"


def _render_tests(s: dict[str, Any]) -> list[str]:
    out = []
    if "summary" in s:
        out.append(", ".join(f"{k} {v}" for k, v in s["summary"].items()))
    if s.get("tests"):
        out += ["", *_table(["test", "outcome", "s", "detail"],
                            [[t["test"], t["outcome"], t["seconds"], t["detail"][:80]] for t in s["tests"]])]
    return out


def _render_methods(s: dict[str, Any]) -> list[str]:
    setup = s.get("setup", {})
    out = [", ".join(f"{k} {v}" for k, v in setup.items()), ""]
    rows = [[name, {True: "pass", False: "FAIL", None: "skipped"}[r.get("ok")], r.get("loss"), r.get("seconds_per_step"),
             r.get("amp_skipped_steps"), r.get("clusters"), r.get("peak_gpu_mb"),
             (r.get("error") or ", ".join(r.get("nonfinite", [])) or r.get("skipped") or "")[:100]]
            for name, r in s.get("methods", {}).items()]
    return out + _table(["method", "result", "loss", "s / step", "scaler-skipped steps", "clusters", "peak GPU MB",
                         "note"], rows)


def _render_throughput(s: dict[str, Any]) -> list[str]:
    out = [", ".join(f"{k} {v}" for k, v in s.get("setup", {}).items()), ""]
    rows = []
    for backbone, results in s.get("backbones", {}).items():
        for name, r in results.items():
            rows.append([backbone, name, r.get("images_per_s"), r.get("seconds_per_step"), r.get("vs_floor"),
                         r.get("peak_gpu_mb"), r.get("error") or r.get("skipped") or ""])
    return out + _table(["backbone", "step", "images / s", "s / step", "x floor", "peak GPU MB", "note"], rows)


def _render_pseudo(s: dict[str, Any]) -> list[str]:
    out = [", ".join(f"{k} {v}" for k, v in s.get("setup", {}).items()),
           f"Feature generation (s): {s.get('generate_s', {})}; largest N run: {s.get('largest_n')}", ""]
    rows = [[r.get("n"), r.get("device"), r.get("mode"), r.get("knn_s"), r.get("jaccard_rest_s"), r.get("dbscan_s"),
             r.get("total_s"), r.get("peak_gpu_mb"), r.get("peak_rss_mb"),
             f"{r['ari']} ({r['ari_vs']})" if "ari" in r else "-", (r.get("error") or r.get("clusters") or "")[:60]]
            for r in s.get("runs", {}).values()]
    return out + _table(["N", "device", "mode", "kNN s", "rest s", "DBSCAN s", "total s", "GPU MB", "RSS MB",
                         "ARI (vs)", "clusters / error"], rows)


def _render_evaluation(s: dict[str, Any]) -> list[str]:
    rows = [[name, r.get("queries"), r.get("gallery"), r.get("device"), r.get("distance_s"), r.get("total_s"),
             r.get("mAP"), r.get("top1"), r.get("peak_gpu_mb"), r.get("error") or r.get("skipped") or ""]
            for name, r in s.get("runs", {}).items()]
    return _table(["run", "queries", "gallery", "device", "distances s", "total s", "mAP", "top-1", "peak GPU MB",
                   "note"], rows)


def _render_real(s: dict[str, Any]) -> list[str]:
    out = [", ".join(f"{k} {v}" for k, v in s.get("setup", {}).items() if k != "overrides"), ""]
    if s.get("stopped"):
        out += [f"Stopped {s['stopped']}.", ""]
    rows = [[name, e.get("epoch"), e.get("mAP"), e.get("top1"), e.get("clusters"), e.get("label_ari"), e.get("loss"),
             e.get("seconds_per_step"), e.get("seconds")]
            for name, epochs in s.get("epochs", {}).items() for e in epochs]
    return out + _table(["method", "epoch", "mAP", "top-1", "clusters", "label ARI", "loss", "s / step",
                         "epoch s"], rows)


RENDERERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "cuda_tests": _render_tests, "methods_amp": _render_methods, "throughput": _render_throughput,
    "pseudo_labels": _render_pseudo, "evaluation": _render_evaluation, "real_data": _render_real,
}


if __name__ == "__main__":
    main()
