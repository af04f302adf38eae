"""The ``hardreid`` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .errors import UserError, clean_message
from .signals import SIGINT_EXIT, SIGTERM_EXIT, Terminated, sigterm_received, terminate_as_interrupt

FORMATS = ["auto", "market1501", "dukemtmc", "msmt17", "cuhk03np", "market", "folder"]


def _path(text: str) -> str:
    """argparse type of path arguments: an empty string is a mistake, not the current directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def _count(low: int) -> Callable[[str], int]:
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


def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _add_data_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--data-root", required=required, metavar="DIR", type=_path, help="data set folder (or its parent)")
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
def _resume_config(run_dir: Path, overrides: list[str]):
    """The run's own config.yaml (else the checkpoint's config) plus ``overrides``."""
    from .config import config_from_dict, load_config
    from .training.checkpoint import load_checkpoint

    last = run_dir / "checkpoints" / "last.pth"
    if (run_dir / "config.yaml").is_file():
        return load_config(run_dir / "config.yaml", overrides)
    if last.is_file():
        stored = load_checkpoint(last)["config"]
        return load_config(None, overrides, base=config_from_dict(stored, f"the config stored in {last}"))
    raise UserError(f"nothing to resume in {run_dir}: it holds no checkpoints/last.pth (start a new run "
                    "without --resume, or pass the --output folder of an earlier run)")


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .training import train

    run_dir = Path(args.output)
    overrides = list(args.overrides)
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.resume and args.config is None:
        cfg = _resume_config(run_dir, overrides)  # continue with the run's own resolved config
    elif args.config is None:
        raise UserError("train needs --config FILE (e.g. --config configs/cluster_contrast/market1501.yaml)")
    else:
        cfg = load_config(args.config, overrides)
    if cfg.model.weights:  # the run's config.yaml must work from any directory (resume, figures)
        cfg.model.weights = str(Path(cfg.model.weights).expanduser().resolve())
    if args.format:
        cfg.data.format = args.format
    dataset = _load_data(args, cfg)
    result = train(cfg, dataset, run_dir, resume=args.resume)
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
    from .evaluation.pipeline import check_evaluable, query_gallery_distances, score_distances
    from .files import atomic_write_text, check_writable_file
    from .training import resolve_device

    for flag, path in (("--json", args.json), ("--ranked-image", args.ranked_image)):
        if path is not None:
            check_writable_file(path, flag)  # before the evaluation, not after it
    model, cfg = _model_for_eval(args)
    device = resolve_device(args.device or "auto")
    dataset = _load_data(args, cfg)
    check_evaluable(dataset)
    start = time.time()
    dist = query_gallery_distances(model.to(device), dataset, cfg.data, cfg.eval, device, rerank=args.rerank)
    result = score_distances(dist, dataset, cfg.eval.max_rank)
    report = result.to_dict(percent=True)
    skipped = len(dataset.query) - result.num_valid_queries
    report.update({"num_query": len(dataset.query), "num_skipped_query": skipped, "num_gallery": len(dataset.gallery)})
    note = f" ({skipped} skipped: no gallery image of their identity from another camera)" if skipped else ""
    print(f"{dataset.name}: mAP {report['mAP']:.1f}  top-1 {report['cmc']['1']:.1f}  top-5 {report['cmc']['5']:.1f}  "
          f"top-10 {report['cmc']['10']:.1f}  ({result.num_valid_queries} of {len(dataset.query)} queries scored{note}, "
          f"{len(dataset.gallery)} gallery, {time.time() - start:.0f}s{', re-ranked' if args.rerank else ''})")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.ranked_image:
        from .viz.ranked import save_ranked_results

        save_ranked_results(dist, dataset, args.ranked_image)
        print(f"wrote {args.ranked_image}")
    return 0


# -- figures -----------------------------------------------------------------------------------
FIGURES = ["fig4", "fig5a", "fig5b"]


def cmd_figures(args: argparse.Namespace) -> int:
    from .files import check_writable_dir

    run_dir = Path(args.run)
    out_dir = Path(args.output) if args.output else run_dir / "figures"
    check_writable_dir(out_dir, "output folder")
    which = list(dict.fromkeys(args.which))
    if "fig5a" in which:
        from .viz.curves import plot_training_curves

        if not (run_dir / "metrics.json").is_file():
            raise UserError(f"{run_dir} has no metrics.json; pass the --output folder of 'hardreid train'")
        out_dir.mkdir(parents=True, exist_ok=True)
        print(f"wrote {plot_training_curves(run_dir, out_dir / 'fig5a_curves.png')}")
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
    from .files import atomic_write_text, check_writable_file

    if args.json:
        check_writable_file(args.json, "--json")
    options = {k: v for k, v in {"subset": args.subset, "camera_pattern": args.camera_pattern}.items() if v}
    report = inspect_dataset(args.root, format=args.format or "auto", verify_images=args.verify, **options)
    print(report.text())
    if args.json:
        atomic_write_text(args.json, json.dumps(report.to_dict(), indent=1))
    return 0


def cmd_datasets_synth(args: argparse.Namespace) -> int:
    from .data.synthetic import SyntheticConfig, generate_synthetic
    from .files import check_writable_dir

    check_writable_dir(args.output, "output folder")
    cfg = SyntheticConfig(num_train_ids=args.train_ids, num_test_ids=args.test_ids, num_cameras=args.cameras,
                          seed=args.seed)
    path = generate_synthetic(args.output, cfg, progress=True)
    print(f"synthetic data set written to {path}")
    return 0


# -- demo --------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    from .files import check_writable_dir

    check_writable_dir(args.output, "--output")
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
                              "  hardreid train --output runs/cc --data-root ~/data/market --resume train.epochs=80\n\n"
                              "Any config key can be overridden as section.key=value (see configs/base.yaml); every value\n"
                              "is checked before any work starts. --resume refuses changes to keys other than\n"
                              "train.epochs, train.eval_every, train.save_every, train.device, data.workers,\n"
                              "eval.batch_size, model.weights and model.pretrained.\n"
                              "Ctrl-C (SIGINT, exit code 130) and SIGTERM (exit code 143) stop cleanly: the last\n"
                              "finished checkpoint stays and --resume continues from it.")
    p.add_argument("--config", default=None, metavar="FILE", type=_path, help="YAML config (may inherit with _base_)")
    _add_data_args(p)
    p.add_argument("--output", required=True, metavar="RUN_DIR", type=_path, help="run directory (config, log, metrics, checkpoints)")
    p.add_argument("--weights", default=None, metavar="FILE", type=_path, help="ImageNet backbone weights, torchvision layout (timm for vit_small)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: config, auto)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from checkpoints/last.pth "
                                                         "(with its config.yaml unless --config is given)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=20")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="CMC / mAP of a checkpoint or an untrained backbone", formatter_class=_formatter,
                       description="Score a model on the query/gallery splits (Market-1501 protocol). Queries without a "
                                   "gallery image of their identity from another camera cannot be scored: they are "
                                   "skipped and counted. Output paths are checked before the evaluation starts.",
                       epilog="examples:\n"
                              "  hardreid evaluate --checkpoint runs/cc/checkpoints/best.pth --data-root ~/data/market --json result.json\n"
                              "  hardreid evaluate --backbone mobilenet_v2 --weights mobilenet_v2_imagenet.pth \\\n"
                              "      --data-root ../shared/data/cuhk03 --height 128 --width 64\n"
                              "  hardreid evaluate --checkpoint best.pth --data-root ~/data/market --rerank --ranked-image ranked.png")
    p.add_argument("--checkpoint", default=None, metavar="FILE", type=_path,
                   help="a hardreid checkpoint (best.pth / last.pth); read safely, nothing in it is run")
    p.add_argument("--backbone", default=None, help="untrained model: resnet18|resnet34|resnet50|mobilenet_v2|vit_small")
    p.add_argument("--weights", default=None, metavar="FILE", type=_path, help="backbone weights for --backbone (torchvision layout; timm for vit_small)")
    p.add_argument("--pretrained", action="store_true", help="download torchvision ImageNet weights (needs internet)")
    _add_data_args(p)
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--flip", action="store_true", help="average features with the mirrored image")
    p.add_argument("--height", type=_count(1), default=None, help="input height (default: the checkpoint's, else 256)")
    p.add_argument("--width", type=_count(1), default=None, help="input width (default: the checkpoint's, else 128)")
    p.add_argument("--workers", type=_count(0), default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")
    p.add_argument("--json", default=None, metavar="OUT.json", type=_path, help="write the numbers as JSON (percent)")
    p.add_argument("--ranked-image", default=None, metavar="OUT.png", type=_path, help="save a picture of ranked results")
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
    p.add_argument("--run", required=True, metavar="RUN_DIR", type=_path, help="run directory of 'hardreid train' (config.yaml, metrics.json, checkpoints/)")
    _add_data_args(p, required=False)
    p.add_argument("--which", nargs="+", choices=FIGURES, default=FIGURES, help="figures to make (default: all)")
    p.add_argument("--output", default=None, metavar="DIR", type=_path, help="where the PNG files go (default: RUN_DIR/figures)")
    p.add_argument("--checkpoint", default=None, metavar="FILE", type=_path, help="checkpoint for fig4 / fig5b (default: RUN_DIR/checkpoints/last.pth)")
    p.add_argument("--queries", type=_count(1), default=4, help="fig4: rows (queries from distinct clusters)")
    p.add_argument("--identities", type=_count(1), default=15, help="fig5b: identities shown (the paper: 15)")
    p.add_argument("--seed", type=_count(0), default=0, help="random choice of queries and identities")
    p.add_argument("--workers", type=_count(0), default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("demo", help="generate a synthetic set, train briefly on CPU, show before/after",
                       formatter_class=_formatter,
                       description="Generates a synthetic multi-camera data set, scores the untrained model, trains "
                                   "the Cluster Contrast baseline on CPU and scores it again (a few minutes).",
                       epilog="examples:\n  hardreid demo\n  hardreid demo --output /tmp/demo --epochs 4")
    p.add_argument("--output", default="hardreid_demo", metavar="DIR", type=_path, help="where data, run and pictures go")
    p.add_argument("--epochs", type=_count(1), default=None, help="training epochs (default: configs/demo.yaml's)")
    p.add_argument("--weights", default=None, metavar="FILE", type=_path, help="start from these MobileNetV2 weights")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("datasets", help="inspect data sets, generate the synthetic one", formatter_class=_formatter)
    dsub = p.add_subparsers(dest="datasets_command", metavar="ACTION")
    q = dsub.add_parser("inspect", help="counts per split and warnings", formatter_class=_formatter,
                        description="Images, identities and cameras per split, and warnings: duplicate files, names that "
                                    "do not parse, query identities without a cross-camera gallery match.",
                        epilog="examples:\n  hardreid datasets inspect ~/data/Market-1501-v15.09.15\n"
                               "  hardreid datasets inspect ~/crops --format folder --camera-pattern 'cam(\\d+)'")
    q.add_argument("root", metavar="DIR", type=_path)
    q.add_argument("--format", choices=FORMATS, default=None)
    q.add_argument("--subset", choices=["labeled", "detected"], default=None)
    q.add_argument("--camera-pattern", default=None, metavar="REGEX")
    q.add_argument("--verify", action="store_true", help="also open every image (slower)")
    q.add_argument("--json", default=None, metavar="OUT.json", type=_path)
    q.set_defaults(func=cmd_datasets_inspect)
    q = dsub.add_parser("synth", help="write the synthetic data set (Market-1501 layout)", formatter_class=_formatter,
                        epilog="examples:\n  hardreid datasets synth data/synthetic\n  hardreid datasets synth data/big --train-ids 300 --cameras 6")
    q.add_argument("output", metavar="DIR", type=_path)
    q.add_argument("--train-ids", type=_count(1), default=60)
    q.add_argument("--test-ids", type=_count(1), default=40)
    q.add_argument("--cameras", type=_count(2), default=4)
    q.add_argument("--seed", type=_count(0), default=0)
    q.set_defaults(func=cmd_datasets_synth)
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
        with terminate_as_interrupt():
            return func(args)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (signals.Terminated)
        terminated = isinstance(exc, Terminated)
        what = "terminated by SIGTERM" if terminated else "interrupted (Ctrl-C)"
        print(f"hardreid {args.command}: {what}{_resume_hint(args)}", file=sys.stderr)
        return SIGTERM_EXIT if terminated else SIGINT_EXIT
    except Exception as exc:  # noqa: BLE001 - sorted below; anything else keeps its traceback
        if sigterm_received():  # e.g. a loader worker the same SIGTERM killed first
            print(f"hardreid {args.command}: terminated by SIGTERM{_resume_hint(args)}", file=sys.stderr)
            return SIGTERM_EXIT
        if isinstance(exc, UserError):
            print(f"hardreid {args.command}: error: {clean_message(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):  # the machine, not the input: a full disk, a vanished mount, ...
            print(f"hardreid {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted training run (nothing for other commands)."""
    if args.command != "train" or not (Path(args.output) / "checkpoints" / "last.pth").is_file():
        return ""
    return (f"; checkpoints/last.pth holds the last finished epoch: continue with "
            f"hardreid train --output {args.output} --data-root {args.data_root} --resume")


if __name__ == "__main__":
    sys.exit(main())
