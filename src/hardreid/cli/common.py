"""What several commands share: argument types and groups, loading a data set or a feature model."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

#: --format of the commands that read a data set: ``auto`` and the loaders of ``hardreid.data.datasets.FORMATS``, in
#: the order the help shows them (tests/test_cli.py checks that the two agree).
FORMATS = ["auto", "market1501", "dukemtmc", "msmt17", "cuhk03np", "market", "folder"]
#: --subset (CUHK03-NP): ``hardreid.data.datasets.CUHK03NP_SUBSETS``, in the order the help shows them.
SUBSETS = ["labeled", "detected"]


def path_arg(text: str) -> str:
    """argparse type of path arguments: an empty string is a mistake, not the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def count(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value
    return parse


def formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data-root", required=required, metavar="DIR", type=path_arg, help="data set folder (or its parent)")
    p.add_argument("--format", choices=FORMATS, default=None, help="data set layout (default: the config's, else auto-detect)")
    p.add_argument("--subset", choices=SUBSETS, default=None, help="CUHK03-NP subset")
    p.add_argument("--camera-pattern", default=None, metavar="REGEX",
                   help="folder format: regex whose first group is the camera id in a file name")


def add_model_args(p: argparse.ArgumentParser, size: bool = True) -> None:
    """--checkpoint, or --backbone with --weights; input size, flip, workers, device."""
    p.add_argument("--checkpoint", default=None, metavar="FILE", type=path_arg,
                   help="a hardreid checkpoint (best.pth / last.pth); read safely, nothing in it is run")
    p.add_argument("--backbone", default=None, help="untrained model: resnet18, resnet34, resnet50, mobilenet_v2, vit_small, "
                   "vit_small_pass, vit_small_pass_mean, vit_small_ics")
    p.add_argument("--weights", default=None, metavar="FILE", type=path_arg,
                   help="backbone weights for --backbone (torchvision layout; timm for vit_small; "
                   "PASS / TransReID-SSL files as published for vit_small_pass / vit_small_ics)")
    p.add_argument("--pretrained", action="store_true", help="download torchvision ImageNet weights (needs internet)")
    if size:
        p.add_argument("--flip", action="store_true", help="average features with the mirrored image")
        p.add_argument("--height", type=count(1), default=None, help="input height (default: the checkpoint's, else 256)")
        p.add_argument("--width", type=count(1), default=None, help="input width (default: the checkpoint's, else 128)")
    p.add_argument("--workers", type=count(0), default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")


def check_output_files(args: argparse.Namespace, *names: str) -> None:
    """Each given output file option (``json`` = --json, ...) can be written: checked before any work."""
    from ..files import check_writable_file

    for name in names:
        path = getattr(args, name, None)
        if path is not None:
            check_writable_file(path, "--" + name.replace("_", "-"))


def load_data(args: argparse.Namespace, cfg=None):
    """The data set of --data-root / --format / --subset / --camera-pattern (the config's settings where not given)."""
    from ..data.datasets import detect_format, load_dataset

    data_cfg = cfg.data if cfg is not None else None
    fmt = args.format or (data_cfg.format if data_cfg else "auto")
    if fmt == "auto":
        fmt = detect_format(args.data_root)
    options = {}
    if fmt == "cuhk03np":
        options["subset"] = args.subset or (data_cfg.subset if data_cfg else "detected")
    pattern = args.camera_pattern if args.camera_pattern is not None else (data_cfg.camera_pattern if data_cfg else "")
    if fmt == "folder" and pattern:
        options["camera_pattern"] = pattern
    for flag, value, wanted in (("--subset", args.subset, "cuhk03np"), ("--camera-pattern", args.camera_pattern, "folder")):
        if value and fmt != wanted:
            print(f"warning: {flag} is ignored: it applies to the {wanted} format, not {fmt}", file=sys.stderr)
    dataset = load_dataset(fmt, args.data_root, **options)
    for warning in dataset.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return dataset


def feature_model(args: argparse.Namespace, command: str = "evaluate"):
    """A checkpoint's evaluated model, or an untrained backbone (``--backbone``, ``--weights``)."""
    from ..errors import UserError
    from ..retrieval.model import load_feature_model

    if not (args.checkpoint or args.backbone):
        raise UserError(f"{command} needs --checkpoint FILE or --backbone NAME [--weights FILE]")
    fm = load_feature_model(args.checkpoint, args.backbone, args.weights, getattr(args, "pretrained", False),
                            args.height, args.width, flip=True if args.flip else None)
    fm.cfg.data.workers = args.workers
    return fm
