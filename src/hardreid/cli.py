"""The ``hardreid`` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import UserError, clean_message

FORMATS = ["auto", "market1501", "dukemtmc", "msmt17", "cuhk03np", "market", "folder"]


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data-root", required=required, metavar="DIR", help="data set folder (or its parent)")
    p.add_argument("--format", choices=FORMATS, default=None, help="data set layout (default: the config's, else auto-detect)")
    p.add_argument("--subset", choices=["labeled", "detected"], default=None, help="CUHK03-NP subset")
    p.add_argument("--camera-pattern", default=None, metavar="REGEX",
                   help="folder format: regex whose first group is the camera id in a file name")


def _load_data(args: argparse.Namespace, cfg=None):
    from .data.datasets import detect_format, load_dataset

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


# -- train -------------------------------------------------------------------------------------
def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import train

    run_dir = Path(args.output)
    config_file = args.config
    if args.resume and config_file is None and (run_dir / "config.yaml").is_file():
        config_file = run_dir / "config.yaml"  # continue with the run's own resolved config
    if config_file is None:
        raise UserError("train needs --config FILE (e.g. --config configs/cluster_contrast/market1501.yaml)")
    overrides = list(args.overrides)
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    cfg = load_config(config_file, overrides)
    if cfg.model.weights:  # the run's config.yaml must work from any directory (resume, figures)
        cfg.model.weights = str(Path(cfg.model.weights).expanduser().resolve())
    if args.format:
        cfg.data.format = args.format
    dataset = _load_data(args, cfg)
    result = train(cfg, dataset, run_dir, resume=args.resume)
    from . import distributed

    if not distributed.is_main():  # several processes (torchrun): rank 0 reports
        return 0
    final = result.final
    if "mAP" in final:
        print(f"final: mAP {final['mAP']:.1f}  top-1 {final['top1']:.1f}  top-5 {final['top5']:.1f}  top-10 {final['top10']:.1f}")
    print(f"run saved in {run_dir} (checkpoints/last.pth, metrics.csv, train.log)")
    return 0


# -- evaluate ----------------------------------------------------------------------------------
def _model_for_eval(args: argparse.Namespace):
    """(model, config) from a checkpoint, or an untrained backbone with optional ImageNet weights."""
    from .config import Config, config_from_dict
    from .training import model_from_config
    from .training.checkpoint import load_checkpoint, load_model_state

    if args.checkpoint:
        state = load_checkpoint(args.checkpoint)
        cfg = config_from_dict(state["config"])
        if args.backbone and args.backbone != cfg.model.backbone:
            raise UserError(f"checkpoint {args.checkpoint} holds a '{cfg.model.backbone}' model, not '{args.backbone}'; drop --backbone")
        cfg.model.weights, cfg.model.pretrained = "", False
        model = model_from_config(cfg)
        load_model_state(model, state, args.checkpoint, for_evaluation=True)
    else:
        if not args.backbone:
            raise UserError("evaluate needs --checkpoint FILE or --backbone NAME [--weights FILE]")
        cfg = Config()
        cfg.data.height = args.height or cfg.data.height  # a ViT's position grid follows the input size
        cfg.data.width = args.width or cfg.data.width
        cfg.model.backbone = args.backbone
        cfg.model.weights = args.weights or ""
        cfg.model.pretrained = args.pretrained
        model = model_from_config(cfg)
    if args.height:
        cfg.data.height = args.height
    if args.width:
        cfg.data.width = args.width
    cfg.data.workers = args.workers
    cfg.eval.flip = args.flip or cfg.eval.flip
    return model, cfg


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.pipeline import query_gallery_distances, score_distances
    from .training import resolve_device

    model, cfg = _model_for_eval(args)
    device = resolve_device(args.device or "auto")
    dataset = _load_data(args, cfg)
    start = time.time()
    dist = query_gallery_distances(model.to(device), dataset, cfg.data, cfg.eval, device, rerank=args.rerank)
    result = score_distances(dist, dataset, cfg.eval.max_rank)
    report = result.to_dict(percent=True)
    report.update({"num_query": len(dataset.query), "num_gallery": len(dataset.gallery)})
    print(f"{dataset.name}: mAP {report['mAP']:.1f}  top-1 {report['cmc']['1']:.1f}  top-5 {report['cmc']['5']:.1f}  "
          f"top-10 {report['cmc']['10']:.1f}  ({len(dataset.query)} queries, {len(dataset.gallery)} gallery, "
          f"{time.time() - start:.0f}s{', re-ranked' if args.rerank else ''})")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.ranked_image:
        from .viz.ranked import save_ranked_results

        save_ranked_results(dist, dataset, args.ranked_image)
        print(f"wrote {args.ranked_image}")
    return 0


# -- figures -----------------------------------------------------------------------------------
FIGURES = ["fig4", "fig5a", "fig5b"]


def cmd_figures(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    out_dir = Path(args.output) if args.output else run_dir / "figures"
    which = list(dict.fromkeys(args.which))
    if "fig5a" in which:
        from .viz.curves import plot_training_curves

        if not (run_dir / "metrics.json").is_file():
            raise UserError(f"{run_dir} has no metrics.json; pass the --output folder of 'hardreid train'")
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"wrote {plot_training_curves(run_dir, out_dir / 'fig5a_curves.png', diagnostics=False)}")
    needs_model = [w for w in which if w != "fig5a"]
    if needs_model:
        from .training import resolve_device
        from .viz.figures import hard_positive_figure, load_run_model, run_state, tsne_of_run

        if not args.data_root:
            raise UserError(f"{' and '.join(needs_model)} need the training images: pass --data-root DIR "
                            "(the data set the run was trained on)")
        cfg, model = load_run_model(run_dir, args.checkpoint)
        cfg.data.workers = args.workers
        if args.format:
            cfg.data.format = args.format
        dataset = _load_data(args, cfg)
        device = resolve_device(args.device or "auto")
        state = run_state(cfg, model, dataset, device)
        if "fig4" in which:
            path = hard_positive_figure(state, dataset, out_dir / "fig4_hard_positives.png", args.queries, args.seed,
                                        device=device)
            print(f"wrote {path}")
        if "fig5b" in which:
            result = tsne_of_run(state, dataset, out_dir / "fig5b_tsne.png", args.identities, args.seed)
            print(f"wrote {result.path} ({len(result.identities)} identities, colour = {result.labelled_by})")
    return 0


# -- datasets ----------------------------------------------------------------------------------
def cmd_datasets_inspect(args: argparse.Namespace) -> int:
    from .data.inspect import inspect_dataset

    options = {k: v for k, v in {"subset": args.subset, "camera_pattern": args.camera_pattern}.items() if v}
    report = inspect_dataset(args.root, format=args.format or "auto", verify_images=args.verify, **options)
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 0


def cmd_datasets_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import SyntheticConfig, generate_synthetic

    cfg = SyntheticConfig(num_train_ids=args.train_ids, num_test_ids=args.test_ids, num_cameras=args.cameras,
                          images_per_camera=args.images_per_camera, train_images_per_id=args.train_images_per_id,
                          camera_colour_strength=args.colour_strength, seed=args.seed)
    path = generate_synthetic(args.output, cfg, progress=True)
    print(f"synthetic data set written to {path}")
    return 0


def cmd_datasets_subsample(args: argparse.Namespace) -> int:
    from .data.subsample import subsample_dataset

    report = subsample_dataset(args.source, args.output, args.max_per_id, seed=args.seed, format=args.format or "auto")
    print(report.text())
    return 0


# -- demo --------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(Path(args.output), epochs=args.epochs, weights=args.weights)
    return 0


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardreid", formatter_class=_formatter,
        description="Unsupervised person / vehicle re-identification: train from unlabelled crops, evaluate, search.",
        epilog="examples:\n  hardreid demo\n  hardreid datasets inspect ~/data/Market-1501-v15.09.15\n"
               "  hardreid train --config configs/cluster_contrast/market1501.yaml --data-root ~/data/market --output runs/cc\n"
               "  hardreid evaluate --checkpoint runs/cc/checkpoints/best.pth --data-root ~/data/market\n"
               "  hardreid figures --run runs/acfl --data-root ~/data/market\n\n"
               "Run 'hardreid COMMAND --help' for the options of each command.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on unlabelled training images", formatter_class=_formatter,
                       description="Train a method (Cluster Contrast baseline, ...) on the training split; evaluates on "
                                   "query/gallery when the data set has them.",
                       epilog="examples:\n"
                              "  hardreid train --config configs/cluster_contrast/market1501.yaml --data-root ~/data/market --output runs/cc\n"
                              "  hardreid train --config configs/cluster_contrast/cpu_mobilenet.yaml --data-root ../shared/data/cuhk03 \\\n"
                              "      --output runs/cuhk03 --weights ../shared/weights/mobilenet_v2_imagenet.pth train.epochs=20\n"
                              "  hardreid train --output runs/cc --data-root ~/data/market --resume      # continue a run\n"
                              "  # 4 GPUs of one machine (data.batch_size is the global batch, shared by the processes):\n"
                              "  torchrun --nproc_per_node 4 -m hardreid train --config configs/acfl/market1501.yaml \\\n"
                              "      --data-root ~/data/market --output runs/acfl\n"
                              "  # 2 machines x 4 GPUs (run on each machine, --node_rank 0 and 1):\n"
                              "  torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 --rdzv_backend c10d \\\n"
                              "      --rdzv_endpoint HOST0:29400 -m hardreid train --config ... --data-root ... --output ...\n\n"
                              "Any config key can be overridden as section.key=value (see configs/base.yaml).")
    p.add_argument("--config", default=None, metavar="FILE", help="YAML config (may inherit with _base_)")
    _add_data_args(p)
    p.add_argument("--output", required=True, metavar="RUN_DIR", help="run directory (config, log, metrics, checkpoints)")
    p.add_argument("--weights", default=None, metavar="FILE", help="ImageNet backbone weights, torchvision layout (timm for vit_small)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: config, auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from checkpoints/last.pth")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=20")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="CMC / mAP of a checkpoint or an untrained backbone", formatter_class=_formatter,
                       description="Score a model on the query/gallery splits (Market-1501 protocol).",
                       epilog="examples:\n"
                              "  hardreid evaluate --checkpoint runs/cc/checkpoints/best.pth --data-root ~/data/market --json result.json\n"
                              "  hardreid evaluate --backbone mobilenet_v2 --weights mobilenet_v2_imagenet.pth \\\n"
                              "      --data-root ../shared/data/cuhk03 --height 128 --width 64\n"
                              "  hardreid evaluate --checkpoint best.pth --data-root ~/data/market --rerank --ranked-image ranked.png")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="a hardreid checkpoint (best.pth / last.pth)")
    p.add_argument("--backbone", default=None, help="untrained model: resnet18|resnet34|resnet50|mobilenet_v2|vit_small")
    p.add_argument("--weights", default=None, metavar="FILE", help="backbone weights for --backbone (torchvision layout; timm for vit_small)")
    p.add_argument("--pretrained", action="store_true", help="download torchvision ImageNet weights (needs internet)")
    _add_data_args(p)
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--flip", action="store_true", help="average features with the mirrored image")
    p.add_argument("--height", type=int, default=None, help="input height (default: the checkpoint's, else 256)")
    p.add_argument("--width", type=int, default=None, help="input width (default: the checkpoint's, else 128)")
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the numbers as JSON (percent)")
    p.add_argument("--ranked-image", default=None, metavar="OUT.png", help="save a picture of ranked results")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("figures", help="the ACFL paper's pictures (Fig. 4, 5a, 5b) from a run", formatter_class=_formatter,
                       description="Pictures of a training run, as in the ACFL paper: fig4 = query, easy positive and "
                                   "generated hard positive (with the change magnified); fig5a = top-1, mAP, clusters "
                                   "and outliers per epoch; fig5b = t-SNE of the training features of 15 random "
                                   "identities. fig4 and fig5b re-extract and re-cluster the training set with the "
                                   "checkpoint's model and the run's config.",
                       epilog="examples:\n"
                              "  hardreid figures --run runs/acfl --data-root ~/data/market\n"
                              "  hardreid figures --run runs/acfl --which fig5a                 # curves only, no data needed\n"
                              "  hardreid figures --run runs/acfl --data-root ~/data/market --which fig4 fig5b \\\n"
                              "      --checkpoint runs/acfl/checkpoints/best.pth --output figures/acfl --queries 6")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="run directory of 'hardreid train' (config.yaml, metrics.json, checkpoints/)")
    _add_data_args(p, required=False)
    p.add_argument("--which", nargs="+", choices=FIGURES, default=FIGURES, help="figures to make (default: all)")
    p.add_argument("--output", default=None, metavar="DIR", help="where the PNG files go (default: RUN_DIR/figures)")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="checkpoint for fig4 / fig5b (default: RUN_DIR/checkpoints/last.pth)")
    p.add_argument("--queries", type=int, default=4, help="fig4: rows (queries from distinct clusters)")
    p.add_argument("--identities", type=int, default=15, help="fig5b: identities shown (the paper: 15)")
    p.add_argument("--seed", type=int, default=0, help="random choice of queries and identities")
    p.add_argument("--workers", type=int, default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("demo", help="generate a synthetic set, train briefly on CPU, show before/after",
                       formatter_class=_formatter,
                       description="Generates a synthetic multi-camera data set, scores the untrained model, trains "
                                   "the Cluster Contrast baseline on CPU and scores it again (a few minutes).",
                       epilog="examples:\n  hardreid demo\n  hardreid demo --output /tmp/demo --epochs 4")
    p.add_argument("--output", default="hardreid_demo", metavar="DIR", help="where data, run and pictures go")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: configs/demo.yaml's)")
    p.add_argument("--weights", default=None, metavar="FILE", help="start from these MobileNetV2 weights")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("datasets", help="inspect data sets, generate the synthetic one, subsample identities",
                       formatter_class=_formatter)
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    q = dsub.add_parser("inspect", help="counts per split and warnings", formatter_class=_formatter,
                        description="Images, identities and cameras per split, and warnings: duplicate files, names that "
                                    "do not parse, query identities without a cross-camera gallery match.",
                        epilog="examples:\n  hardreid datasets inspect ~/data/Market-1501-v15.09.15\n"
                               "  hardreid datasets inspect ~/crops --format folder --camera-pattern 'cam(\\d+)'")
    q.add_argument("root", metavar="DIR")
    q.add_argument("--format", choices=FORMATS, default=None)
    q.add_argument("--subset", choices=["labeled", "detected"], default=None)
    q.add_argument("--camera-pattern", default=None, metavar="REGEX")
    q.add_argument("--verify", action="store_true", help="also open every image (slower)")
    q.add_argument("--json", default=None, metavar="OUT.json")
    q.set_defaults(func=cmd_datasets_inspect)
    q = dsub.add_parser("synth", help="write the synthetic data set (Market-1501 layout)", formatter_class=_formatter,
                        epilog="examples:\n  hardreid datasets synth data/synthetic\n"
                               "  hardreid datasets synth data/big --train-ids 300 --cameras 6\n"
                               "  # few-shot: 2 images per training identity, 2 cameras, strong colour casts\n"
                               "  hardreid datasets synth data/fewshot2 --train-ids 400 --cameras 2 --train-images-per-id 2 "
                               "--colour-strength 3")
    q.add_argument("output", metavar="DIR")
    q.add_argument("--train-ids", type=int, default=60)
    q.add_argument("--test-ids", type=int, default=40)
    q.add_argument("--cameras", type=int, default=4)
    q.add_argument("--images-per-camera", type=int, default=4, metavar="N",
                   help="images of an identity in each of its cameras (default 4)")
    q.add_argument("--train-images-per-id", type=int, default=0, metavar="N",
                   help="few-shot: exactly N images per training identity, over its cameras in turn (default 0: off)")
    q.add_argument("--colour-strength", type=float, default=1.0, metavar="S",
                   help="camera illumination / colour cast differences: 0 none, 1 default, 2-4 strong")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=cmd_datasets_synth)
    q = dsub.add_parser("subsample", help="keep at most K training images per identity (Market-layout copy)",
                        formatter_class=_formatter,
                        description="Writes a Market-1501-layout copy of SRC with at most K training images per "
                                    "identity, spread over its cameras; query and gallery unchanged. Files are hard "
                                    "links where possible, else symbolic links, else copies.",
                        epilog="examples:\n  hardreid datasets subsample ../shared/data/cuhk03 data/cuhk03_k4 --max-per-id 4\n"
                               "  hardreid datasets subsample ~/data/Market-1501-v15.09.15 data/market_k2 --max-per-id 2 --seed 1")
    q.add_argument("source", metavar="SRC", help="data set in Market-1501 layout (market1501, dukemtmc, market)")
    q.add_argument("output", metavar="DST", help="new or empty folder (or an earlier subsample, replaced)")
    q.add_argument("--max-per-id", type=int, required=True, metavar="K", help="training images kept per identity")
    q.add_argument("--seed", type=int, default=0, help="which images are kept (default 0)")
    q.add_argument("--format", choices=["auto", "market1501", "dukemtmc", "market"], default=None,
                   help="layout of SRC (default: auto-detect)")
    q.set_defaults(func=cmd_datasets_subsample)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        # `hardreid` or `hardreid datasets` without an action: show the relevant help.
        (parser if args.command is None else parser._subparsers._group_actions[0].choices[args.command]).print_help()
        return 2
    try:
        return func(args)
    except UserError as exc:
        from . import distributed

        where = f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.world_size() > 1 else ""
        print(f"hardreid {args.command}: error{where}: {clean_message(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
