"""What a stage of ``benchmarks/device_run.py`` runs with: ``StageContext`` (its arguments, time limit, device
and a result dict saved at every change, so that a stopped stage keeps its partial results), the machine's cores,
free memory and loader workers, and ``_config``, the training settings the stages share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import common

REPO = Path(__file__).resolve().parents[2]


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
