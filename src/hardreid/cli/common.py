"""What several commands share: argument types and groups, loading a data set or a feature model."""

from __future__ import annotations

import argparse
import math
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


def compile_arg(text: str) -> bool | str:
    """--compile MODE: a torch.compile mode, or off / false (eager)."""
    from ..config.fields import COMPILE_MODES, compile_mode

    try:
        return compile_mode(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: off, or a torch.compile mode ({', '.join(COMPILE_MODES)})") from err


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


def add_model_args(p: argparse.ArgumentParser, size: bool = True, extraction: bool = True) -> None:
    """--checkpoint, or --backbone with --weights; input size, flip (and --compile where the command extracts
    features: ``extraction``), workers, device."""
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
    if size and extraction:
        p.add_argument("--compile", nargs="?", const="default", default=None, type=compile_arg, metavar="MODE",
                       help="extract through torch.compile (inductor; MODE default | reduce-overhead | max-autotune; "
                            "off: eager, also for a checkpoint trained with train.compile). The first batches "
                            "compile (minutes on a CPU; seconds from the cache, train.compile_cache or "
                            "~/.cache/hardreid/inductor), then extraction ran 1.45-1.7x faster on the CPU of "
                            "benchmarks/README.md: worth it for large folders. Default: as the checkpoint was trained")
    p.add_argument("--workers", type=count(0), default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")


def finite(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """argparse type: a finite number within [low, high] (nan, inf and out-of-range values are refused)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"<= {high:g}" if low is None else f"in [{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {text}")
        return value
    return parse


def add_overwrite_arg(p: argparse.ArgumentParser, what: str = "output files that exist") -> None:
    p.add_argument("--overwrite", action="store_true",
                   help=f"replace {what} (without it hardreid refuses to; it never writes over its inputs)")


def claim_output_files(args: argparse.Namespace, inputs: dict[str, str | None], *names: str) -> None:
    """Each given output file option (``json`` = --json, ...) may be written: it is new (or --overwrite), not one of
    ``inputs`` (option -> path) and not another output of this command. Checked before any work."""
    from ..errors import UserError
    from ..outputs import claim_file, refuse_input_overlap

    given = [(name, getattr(args, name)) for name in names if getattr(args, name, None) is not None]
    for index, (name, path) in enumerate(given):
        option = "--" + name.replace("_", "-")
        claim_file(path, option, inputs=inputs, overwrite=getattr(args, "overwrite", False))
        for other, other_path in given[:index]:
            try:
                refuse_input_overlap(path, option, {"--" + other.replace("_", "-"): other_path})
            except UserError:
                raise UserError(f"{option} and --{other.replace('_', '-')} name the same file {path}: give each output "
                                "its own file") from None


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
                            args.height, args.width, flip=True if args.flip else None,
                            compile=getattr(args, "compile", None))
    fm.cfg.data.workers = args.workers
    return fm
