"""``hardreid extract``: features of a folder of images (resumable)."""

from __future__ import annotations

import argparse
import time

from .common import add_model_args, count, feature_model, formatter, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the extract command to ``sub`` (the subparsers of ``hardreid``)."""
    p = sub.add_parser("extract", help="features of any folder of images (resumable)", formatter_class=formatter,
                       description="Features of every image under a folder (recursive, any layout), with the evaluated "
                                   "model of a checkpoint (an EMA teacher where the method evaluates one) or a plain "
                                   "backbone. Writes FEATS_DIR/features.npy (N x D float32, L2-normalised), images.jsonl "
                                   "(path, camera and identity when the name is Market-style) and manifest.json (model, "
                                   "input size, flip). Works in shards: run it again to resume an interrupted extraction.",
                       epilog="examples:\n"
                              "  hardreid extract --checkpoint runs/cc/checkpoints/best.pth --images ~/crops --output feats\n"
                              "  hardreid extract --checkpoint best.pth --images ~/data/market/bounding_box_test --output gallery_feats --flip\n"
                              "  hardreid extract --backbone mobilenet_v2 --weights mobilenet_v2_imagenet.pth --height 128 --width 64 \\\n"
                              "      --images ~/crops --output feats_imagenet")
    add_model_args(p)
    p.add_argument("--images", required=True, metavar="DIR", type=path_arg, help="folder of images (searched recursively) or one image")
    p.add_argument("--output", required=True, metavar="FEATS_DIR", type=path_arg, help="where the features go")
    p.add_argument("--batch-size", type=count(1), default=128, help="images per forward pass (default 128)")
    p.add_argument("--shard-size", type=count(1), default=4096, help="images per resumable shard (default 4096)")
    p.add_argument("--overwrite", action="store_true", help="replace features of other images or another model in FEATS_DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.features import extract_folder
    from ..runtime import resolve_device

    fm = feature_model(args, "extract")
    start = time.time()
    fs = extract_folder(fm, args.images, args.output, batch_size=args.batch_size, workers=args.workers,
                        device=resolve_device(args.device or "auto"), shard_size=args.shard_size, overwrite=args.overwrite)
    n, dim = fs.features.shape
    print(f"{n} images -> {args.output}/features.npy ({n} x {dim}, float32, L2-normalised), images.jsonl, manifest.json "
          f"({time.time() - start:.0f}s)")
    return 0
