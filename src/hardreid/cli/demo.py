"""``hardreid demo``: synthetic data, a short CPU training, before / after."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_overwrite_arg, count, formatter, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the demo command to ``sub`` (the subparsers of ``hardreid``)."""
    p = sub.add_parser("demo", help="generate a synthetic set, train briefly on CPU, show before/after",
                       formatter_class=formatter,
                       description="Generates a synthetic multi-camera data set, scores the untrained model, trains "
                                   "the Cluster Contrast baseline on CPU and scores it again (a few minutes).",
                       epilog="examples:\n  hardreid demo\n  hardreid demo --output /tmp/demo --epochs 4\n"
                              "  OMP_NUM_THREADS=1 hardreid demo --output /tmp/demo2 --seed 2   # one thread, another seed\n\n"
                              "PyTorch uses as many threads as OMP_NUM_THREADS says (default: one per core).")
    p.add_argument("--output", default="hardreid_demo", metavar="DIR", type=path_arg, help="where data, run and pictures go")
    p.add_argument("--epochs", type=count(1), default=None, help="training epochs (default: the demo's 15)")
    p.add_argument("--weights", default=None, metavar="FILE", type=path_arg, help="start from these MobileNetV2 weights")
    add_overwrite_arg(p, "the files of a folder that is not an earlier demo's")
    p.add_argument("--seed", type=count(0), default=None,
                   help="train.seed: random init, sampling and augmentation (default: the demo's 1; the data set stays the same)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo
    from ..outputs import claim_folder

    claim_folder(args.output, "demo", overwrite=args.overwrite,
                 earlier_version=lambda folder: [n for n in ("demo.log", "demo_result.json", "data", "run") if (folder / n).exists()]
                 if (folder / "demo.log").is_file() else [])
    settings = None if args.seed is None else {"train": {"seed": args.seed}}
    run_demo(Path(args.output), epochs=args.epochs, weights=args.weights, settings=settings)
    return 0
