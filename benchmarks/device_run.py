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

The stages are the modules of ``benchmarks/device_checks/`` (one a stage, with ``StageContext`` in
``context.py`` and the Markdown report in ``reports.py``); this script runs them and writes the reports.

Run from the repository root (nothing needs installing; ``src/`` is put on the path)::

    python benchmarks/device_run.py --out results/device --data device_data/cuhk03 \\
        --weights device_data/mobilenet_v2_imagenet.pth
    python benchmarks/device_run.py --smoke --out /tmp/device_smoke
"""

from __future__ import annotations

import argparse
import math
import json
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

from device_checks.clustering import stage_pseudo_labels  # noqa: E402
from device_checks.context import StageContext  # noqa: E402
from device_checks.cuda_tests import stage_cuda_tests  # noqa: E402
from device_checks.methods_amp import METHODS, stage_methods_amp  # noqa: E402, F401 - METHODS: read by tests
from device_checks.ranking import stage_evaluation  # noqa: E402
from device_checks.real_data import stage_real_data  # noqa: E402
from device_checks.reports import write_reports  # noqa: E402
from device_checks.throughput import stage_throughput  # noqa: E402

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

# the stages: benchmarks/device_checks/, one module a stage
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
    cap = None if cap is None else cap * getattr(args, "cap_scale", 1.0)  # --cap-scale (callers may omit it)
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
    ap.add_argument("--cap-scale", type=float, default=1.0, metavar="F",
                    help="multiply every stage's time limit by F (a busy or slow machine; the budget still holds)")
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
    if not (args.cap_scale > 0 and math.isfinite(args.cap_scale)):
        ap.error(f"--cap-scale must be a positive number, got {args.cap_scale}")
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


if __name__ == "__main__":
    main()
