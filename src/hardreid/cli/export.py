"""``hardreid export``: ONNX / TorchScript / torch.export file of a model, with a parity check."""

from __future__ import annotations

import argparse
import sys
import time

from .common import add_model_args, add_overwrite_arg, claim_output_files, count, feature_model, finite, formatter, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the export command to ``sub`` (the subparsers of ``hardreid``)."""
    from ..export.formats import FORMATS  # the formats export_model writes

    p = sub.add_parser("export", help="ONNX / TorchScript / torch.export file of a model, with a parity check",
                       formatter_class=formatter,
                       description="Exports the evaluated model of a checkpoint (an EMA teacher where the method evaluates "
                                   "one) with a dynamic batch axis: input 'images' B x 3 x H x W (normalised RGB), output "
                                   "'features' B x D (L2-normalised). ONNX uses opset 18 and needs 'pip install "
                                   "hardreid[export]'. Then runs the file (onnxruntime for ONNX) and compares its features "
                                   "with PyTorch's: exit code 1 when they differ by more than --tolerance.",
                       epilog="examples:\n"
                              "  hardreid export --checkpoint best.pth --format onnx --output model.onnx --images ~/data/market/query\n"
                              "  hardreid export --checkpoint best.pth --format torchscript --output model.ts\n"
                              "  hardreid export --backbone resnet50 --format onnx --output r50.onnx --height 256 --width 128")
    add_model_args(p, extraction=False)
    p.add_argument("--format", choices=FORMATS, default="onnx", help="default onnx")
    p.add_argument("--output", required=True, metavar="FILE", type=path_arg, help="the exported file")
    p.add_argument("--images", default=None, metavar="DIR", type=path_arg, help="real images for the parity check (default: random inputs)")
    p.add_argument("--parity-images", type=count(1), default=32, metavar="N", help="images in the parity check (default 32)")
    p.add_argument("--tolerance", type=finite(0), default=1e-4, help="largest allowed |feature difference| (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--json", default=None, metavar="OUT.json", type=path_arg, help="write the parity numbers as JSON")
    add_overwrite_arg(p, "an --output / --json file that exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..files import atomic_write_json
    from ..version import __version__
    from ..export.formats import ONNX_OPSET, check_parity, export_model, exported_runner, parity_images

    claim_output_files(args, {"--checkpoint": args.checkpoint, "--weights": args.weights, "--images": args.images},
                       "output", "json")  # before the export, not after it
    fm = feature_model(args, "export")
    d = fm.cfg.data
    identity = fm.identity()
    metadata = {"version": __version__, **{k: identity[k] for k in ("backbone", "feat_dim", "height", "width", "mean",
                                                                     "std", "sha256", "weights_used")},
                "input": "images: float32 B x 3 x H x W, RGB, (pixel / 255 - mean) / std",
                "output": "features: float32 B x feat_dim, L2-normalised"}
    start = time.time()
    path = export_model(fm.model, args.format, args.output, d.height, d.width, metadata)
    opset = f", opset {ONNX_OPSET}" if args.format == "onnx" else ""
    print(f"exported {fm.model.backbone_name} ({fm.weights_used} weights) as {args.format}{opset}, input B x 3 x "
          f"{d.height} x {d.width} (dynamic batch) -> {path} ({path.stat().st_size / 2**20:.1f} MB, {time.time() - start:.0f}s)")
    if fm.model.camera_bn_images is not None:
        print("note: trained with model.camera_bn: the exported model carries the global BatchNorm statistics (the "
              "mixture of the cameras'), without the per-camera recalibration that extract and evaluate apply")
    if args.no_check:
        return 0
    if args.images:
        images, where = parity_images(args.images, d, args.parity_images), f"images from {args.images}"
    else:
        import torch

        images = torch.randn(8, 3, d.height, d.width, generator=torch.Generator().manual_seed(0))
        where = "random inputs (pass --images DIR to check on real images)"
    parity = check_parity(fm.model, exported_runner(args.format, path), images, args.tolerance)
    print(f"{parity.text()}; {where}")
    if args.json:
        atomic_write_json(args.json, {"format": args.format, "file": str(path), "opset": ONNX_OPSET if opset else None,
                                      "inputs": where, **parity.to_dict(), **metadata})
        print(f"wrote {args.json}")
    if not parity.ok:
        print(f"hardreid export: error: the exported model differs from PyTorch by {parity.max_abs_diff:.2e} "
              f"(more than --tolerance {args.tolerance:g})", file=sys.stderr)
        return 1
    return 0
