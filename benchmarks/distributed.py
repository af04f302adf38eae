"""Speed of training with several processes (torchrun, DDP) against one, on the same machine.

Each row is one ``hardreid train`` run in its own process group: one process, then ``--nproc`` processes
started by ``torchrun --standalone`` (gloo on CPUs, NCCL on GPUs), with ``--threads`` threads per process
(OMP_NUM_THREADS). Every run has the same config, global batch and BatchNorm groups (``train.bn_chunk`` =
the batch share of a process), so the rows do the same work. From each run's metrics.json: seconds per
training step (``seconds_per_step``: loading, forward, backward, all-reduce, memory update) and per epoch
(``seconds``: extraction of the training set, clustering on rank 0, the steps), averaged over the epochs
before the last (the last one also evaluates).

Example (the numbers of benchmarks/README.md)::

    python benchmarks/distributed.py --data ../shared/data/cuhk03 \\
        --weights ../shared/weights/mobilenet_v2_imagenet.pth --epochs 3 --iters 20 --out bench_distributed

``--dry-run`` loads the config with every row's settings (so a wrong key fails here, not after the first row),
prints the command of every row and trains nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def overrides(processes: int, args: argparse.Namespace) -> list[str]:
    """The config overrides of a row (the same work in every row)."""
    share = args.batch_size // max(processes, args.nproc)  # the BatchNorm group of the largest world, in every row
    return [f"train.epochs={args.epochs}", f"train.iters={args.iters}", "train.eval_every=0",
            f"data.batch_size={args.batch_size}", f"train.bn_chunk={share}", f"data.workers={args.workers}",
            f"train.device={args.device}"]


def command(processes: int, args: argparse.Namespace, run_dir: Path) -> list[str]:
    """``hardreid train`` (one process) or the same under torchrun."""
    train = ["-m", "hardreid", "train", "--config", args.config, "--data-root", args.data, "--output", str(run_dir),
             *overrides(processes, args)]
    if args.weights:
        train += ["--weights", args.weights]
    if processes == 1:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes), *train]


def run_row(processes: int, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    run_dir = Path(args.out) / f"p{processes}_t{threads}"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    start = time.time()
    result = subprocess.run(command(processes, args, run_dir), env=env, capture_output=True, text=True)
    wall = time.time() - start
    (Path(args.out) / f"p{processes}_t{threads}.log").write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"run with {processes} processes failed (exit {result.returncode}); see "
                         f"{args.out}/p{processes}_t{threads}.log:\n{result.stderr[-2000:]}")
    rows = json.loads((run_dir / "metrics.json").read_text())
    epochs = [{"epoch": r["epoch"], "seconds": r["seconds"], "train_seconds": r["train_seconds"],
               "seconds_per_step": r["seconds_per_step"], "clusters": r["clusters"], "loss": r["loss"]} for r in rows]
    last = rows[-1]
    plain = epochs[:-1] or epochs  # the last epoch also evaluates
    return {"processes": processes, "threads_per_process": threads, "wall_seconds": round(wall, 1), "epochs": epochs,
            "mean_seconds_per_step": sum(e["seconds_per_step"] for e in epochs) / len(epochs),
            "mean_seconds_per_epoch": sum(e["seconds"] for e in plain) / len(plain),
            "mean_step_seconds_per_epoch": sum(e["train_seconds"] for e in plain) / len(plain),
            "mAP": last.get("mAP"), "world_size": last["world_size"]}


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| processes x threads | s / step | s / epoch | of which steps | of which extraction + clustering | "
             "mAP after the last epoch |", "|---|---|---|---|---|---|"]
    for r in rows:
        m = "" if r["mAP"] is None else f"{r['mAP']:.1f}"
        rest = r["mean_seconds_per_epoch"] - r["mean_step_seconds_per_epoch"]
        lines.append(f"| {r['processes']} x {r['threads_per_process']} | {r['mean_seconds_per_step']:.2f} | "
                     f"{r['mean_seconds_per_epoch']:.0f} | {r['mean_step_seconds_per_epoch']:.0f} | {rest:.0f} | {m} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="Market-layout data set")
    p.add_argument("--weights", default="", help="ImageNet backbone weights (torchvision layout)")
    p.add_argument("--config", default="cluster_contrast/cpu_official", help="packaged config name or YAML file")
    p.add_argument("--epochs", type=int, default=3, help="epochs (the last one also evaluates)")
    p.add_argument("--iters", type=int, default=20, help="steps per epoch")
    p.add_argument("--batch-size", type=int, default=64, help="global batch (data.batch_size)")
    p.add_argument("--nproc", type=int, default=2, help="processes of the several-process row")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="threads per process (one row each)")
    p.add_argument("--workers", type=int, default=2, help="data.workers (loader processes of each training process)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench_distributed")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config with every row's settings, print the rows' commands, train nothing")
    args = p.parse_args(argv)
    worlds = list(dict.fromkeys((1, args.nproc)))  # --nproc 1: one row per thread count, not the same run twice
    if args.dry_run:
        common.repo_src_on_path()
        from hardreid.config import load_config
        from hardreid.errors import UserError, clean_message

        try:
            for processes in worlds:
                load_config(args.config, overrides(processes, args))
        except UserError as exc:
            raise SystemExit(f"distributed: error: {clean_message(exc)}") from None
        for threads in args.threads:
            for processes in worlds:
                run_dir = Path(args.out) / f"p{processes}_t{threads}"
                print(f"OMP_NUM_THREADS={threads} {shlex.join(command(processes, args, run_dir))}")
        print(f"and write {Path(args.out) / 'distributed.json'}")
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    payload = common.result_header("distributed", argv)
    payload["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "dry_run")}
    rows = []
    for threads in args.threads:
        for processes in worlds:
            rows.append(run_row(processes, threads, args))
            print(markdown(rows[-1:]).splitlines()[-1], flush=True)
            payload["rows"] = rows
            common.write_json(Path(args.out) / "distributed.json", payload)
    print(markdown(rows))


if __name__ == "__main__":
    main()
