"""``hardreid info``: parameters and FLOPs of a model."""

from __future__ import annotations

import argparse

from ..errors import UserError
from .common import add_overwrite_arg, claim_output_files, count, feature_model, formatter, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the info command to ``sub`` (the subparsers of ``hardreid``)."""
    p = sub.add_parser("info", help="parameters and FLOPs of a model at its input size", formatter_class=formatter,
                       description="Parameters and FLOPs per image (torch.utils.flop_counter: convolutions and matrix "
                                   "products, 2 FLOPs per multiply-add) of the configured model at the configured input "
                                   "size, of a checkpoint's model, or of every backbone. Training writes the same into "
                                   "RUN_DIR/model_info.json.",
                       epilog="examples:\n  hardreid info --config acfl/market1501\n"
                              "  hardreid info --config cluster_contrast/cpu_mobilenet --all-backbones\n"
                              "  hardreid info --checkpoint runs/cc/checkpoints/best.pth --json info.json")
    p.add_argument("--config", default=None, metavar="NAME_OR_FILE", help="packaged config name or YAML file")
    p.add_argument("--checkpoint", default=None, metavar="FILE", type=path_arg, help="a hardreid checkpoint")
    p.add_argument("--backbone", default=None, help="a plain backbone: resnet18, resnet34, resnet50, mobilenet_v2, vit_small, "
                   "vit_small_pass, vit_small_pass_mean, vit_small_ics")
    p.add_argument("--all-backbones", action="store_true", help="one line per backbone at the config's input size")
    p.add_argument("--height", type=count(1), default=None, help="input height (default: the config's)")
    p.add_argument("--width", type=count(1), default=None, help="input width (default: the config's)")
    p.add_argument("--json", default=None, metavar="OUT.json", type=path_arg)
    add_overwrite_arg(p, "a --json file that exists")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.backbone=resnet18")
    p.set_defaults(func=run, weights=None, flip=False, workers=0)


def run(args: argparse.Namespace) -> int:
    from ..config import load_config
    from ..files import atomic_write_json

    claim_output_files(args, {"--checkpoint": args.checkpoint, "--config": args.config}, "json")
    from ..export.info import backbone_table, info_text, model_info

    if args.config and (args.checkpoint or args.backbone):
        raise UserError("info takes --config, or --checkpoint / --backbone, not both")
    if args.config or not (args.checkpoint or args.backbone):
        cfg = load_config(args.config, args.overrides) if args.config else load_config(None, args.overrides)
        cfg.data.height, cfg.data.width = args.height or cfg.data.height, args.width or cfg.data.width
        if args.all_backbones:
            rows = backbone_table(cfg)
        else:
            from ..models import model_from_config

            cfg.model.weights, cfg.model.pretrained = "", False  # counting needs no weights
            rows = [model_info(model_from_config(cfg), cfg.data.height, cfg.data.width)]
    else:
        fm = feature_model(args, "info")
        rows = [model_info(fm.model, fm.cfg.data.height, fm.cfg.data.width)]
    for row in rows:
        print(info_text(row) if "error" not in row else f"{row['backbone']:<13} not available: {row['error']}")
    if args.json:
        atomic_write_json(args.json, rows if len(rows) > 1 else rows[0])
        print(f"wrote {args.json}")
    return 0
