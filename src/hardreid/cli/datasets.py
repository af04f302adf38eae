"""``hardreid datasets inspect | synth | subsample``."""

from __future__ import annotations

import argparse
import json

from .common import FORMATS, SUBSETS, add_overwrite_arg, claim_output_files, count, finite, formatter, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the datasets command to ``sub`` (the subparsers of ``hardreid``)."""
    from ..data.subsample import MARKET_LAYOUT_FORMATS

    p = sub.add_parser("datasets", help="inspect data sets, generate the synthetic one, subsample identities",
                       formatter_class=formatter)
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    q = dsub.add_parser("inspect", help="counts per split and warnings", formatter_class=formatter,
                        description="Images, identities and cameras per split, and warnings: duplicate files, names that "
                                    "do not parse, query identities without a cross-camera gallery match.",
                        epilog="examples:\n  hardreid datasets inspect ~/data/Market-1501-v15.09.15\n"
                               "  hardreid datasets inspect ~/crops --format folder --camera-pattern 'cam(\\d+)'")
    q.add_argument("root", metavar="DIR", type=path_arg)
    q.add_argument("--format", choices=FORMATS, default=None)
    q.add_argument("--subset", choices=SUBSETS, default=None)
    q.add_argument("--camera-pattern", default=None, metavar="REGEX")
    q.add_argument("--verify", action="store_true", help="also open every image (slower)")
    q.add_argument("--json", default=None, metavar="OUT.json", type=path_arg)
    add_overwrite_arg(q, "a --json file that exists")
    q.set_defaults(func=run_inspect)
    q = dsub.add_parser("synth", help="write the synthetic data set (Market-1501 layout)", formatter_class=formatter,
                        epilog="examples:\n  hardreid datasets synth data/synthetic\n"
                               "  hardreid datasets synth data/big --train-ids 300 --cameras 6\n"
                               "  # few-shot: 2 images per training identity, 2 cameras, strong colour casts\n"
                               "  hardreid datasets synth data/fewshot2 --train-ids 400 --cameras 2 --train-images-per-id 2 "
                               "--colour-strength 3")
    q.add_argument("output", metavar="DIR", type=path_arg)
    q.add_argument("--train-ids", type=count(1), default=60)
    q.add_argument("--test-ids", type=count(1), default=40)
    q.add_argument("--cameras", type=count(2), default=4)
    q.add_argument("--images-per-camera", type=count(1), default=4, metavar="N",
                   help="images of an identity in each of its cameras (default 4)")
    q.add_argument("--train-images-per-id", type=count(0), default=0, metavar="N",
                   help="few-shot: exactly N images per training identity, over its cameras in turn (default 0: off)")
    q.add_argument("--colour-strength", type=finite(0), default=1.0, metavar="S",
                   help="camera illumination / colour cast differences: 0 none, 1 default, 2-4 strong")
    q.add_argument("--seed", type=count(0), default=0)
    q.set_defaults(func=run_synth)
    q = dsub.add_parser("subsample", help="keep at most K training images per identity (Market-layout copy)",
                        formatter_class=formatter,
                        description="Writes a Market-1501-layout copy of SRC with at most K training images per "
                                    "identity, spread over its cameras; query and gallery unchanged. Files are hard "
                                    "links where possible, else symbolic links, else copies.",
                        epilog="examples:\n  hardreid datasets subsample ~/data/cuhk03 data/cuhk03_k4 --max-per-id 4\n"
                               "  hardreid datasets subsample ~/data/Market-1501-v15.09.15 data/market_k2 --max-per-id 2 --seed 1")
    q.add_argument("source", metavar="SRC", help="data set in Market-1501 layout (market1501, dukemtmc, market)")
    q.add_argument("output", metavar="DST", help="new or empty folder (or an earlier subsample, replaced)")
    q.add_argument("--max-per-id", type=count(1), required=True, metavar="K", help="training images kept per identity")
    q.add_argument("--seed", type=count(0), default=0, help="which images are kept (default 0)")
    q.add_argument("--format", choices=["auto", *MARKET_LAYOUT_FORMATS], default=None,
                   help="layout of SRC (default: auto-detect)")
    q.set_defaults(func=run_subsample)


def run_inspect(args: argparse.Namespace) -> int:
    from ..data.inspect import inspect_dataset
    from ..files import atomic_write_text

    claim_output_files(args, {"DIR": args.root}, "json")
    options = {k: v for k, v in {"subset": args.subset, "camera_pattern": args.camera_pattern}.items() if v}
    report = inspect_dataset(args.root, format=args.format or "auto", verify_images=args.verify, **options)
    print(report.text())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1))
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from ..data.synthetic import SyntheticConfig, generate_synthetic
    from ..files import check_writable_dir

    check_writable_dir(args.output, "output folder")
    cfg = SyntheticConfig(num_train_ids=args.train_ids, num_test_ids=args.test_ids, num_cameras=args.cameras,
                          images_per_camera=args.images_per_camera, train_images_per_id=args.train_images_per_id,
                          camera_colour_strength=args.colour_strength, seed=args.seed)
    path = generate_synthetic(args.output, cfg, progress=True)
    print(f"synthetic data set written to {path}")
    return 0


def run_subsample(args: argparse.Namespace) -> int:
    from ..data.subsample import subsample_dataset

    report = subsample_dataset(args.source, args.output, args.max_per_id, seed=args.seed, format=args.format or "auto")
    print(report.text())
    return 0
