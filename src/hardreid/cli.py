"""The ``hardreid`` command: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable

from .version import __version__
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


def _add_model_args(p: argparse.ArgumentParser, size: bool = True) -> None:
    """--checkpoint, or --backbone with --weights; input size, flip, workers, device."""
    p.add_argument("--checkpoint", default=None, metavar="FILE", type=_path,
                   help="a hardreid checkpoint (best.pth / last.pth); read safely, nothing in it is run")
    p.add_argument("--backbone", default=None, help="untrained model: resnet18, resnet34, resnet50, mobilenet_v2, vit_small, "
                   "vit_small_pass, vit_small_pass_mean, vit_small_ics")
    p.add_argument("--weights", default=None, metavar="FILE", type=_path,
                   help="backbone weights for --backbone (torchvision layout; timm for vit_small; "
                   "PASS / TransReID-SSL files as published for vit_small_pass / vit_small_ics)")
    p.add_argument("--pretrained", action="store_true", help="download torchvision ImageNet weights (needs internet)")
    if size:
        p.add_argument("--flip", action="store_true", help="average features with the mirrored image")
        p.add_argument("--height", type=_count(1), default=None, help="input height (default: the checkpoint's, else 256)")
        p.add_argument("--width", type=_count(1), default=None, help="input width (default: the checkpoint's, else 128)")
    p.add_argument("--workers", type=_count(0), default=2, help="data loading processes")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default auto)")


def _check_output_files(args: argparse.Namespace, *names: str) -> None:
    """Each given output file option (``json`` = --json, ...) can be written: checked before any work."""
    from .files import check_writable_file

    for name in names:
        path = getattr(args, name, None)
        if path is not None:
            check_writable_file(path, "--" + name.replace("_", "-"))


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
    from .runs import train

    run_dir = Path(args.output)
    overrides = list(args.overrides)
    if args.weights:
        overrides.append(f"model.weights={args.weights}")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.resume and args.config is None:
        cfg = _resume_config(run_dir, overrides)  # continue with the run's own resolved config
    elif args.config is None:
        raise UserError("train needs --config NAME_OR_FILE (e.g. --config cluster_contrast/market1501; "
                        "'hardreid configs' lists them)")
    else:
        cfg = load_config(args.config, overrides)
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
def _feature_model(args: argparse.Namespace, command: str = "evaluate"):
    """A checkpoint's evaluated model, or an untrained backbone (``--backbone``, ``--weights``)."""
    from .retrieval.model import load_feature_model

    if not (args.checkpoint or args.backbone):
        raise UserError(f"{command} needs --checkpoint FILE or --backbone NAME [--weights FILE]")
    fm = load_feature_model(args.checkpoint, args.backbone, args.weights, getattr(args, "pretrained", False),
                            args.height, args.width, flip=True if args.flip else None)
    fm.cfg.data.workers = args.workers
    return fm


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluation.pipeline import check_evaluable, query_gallery_distances, score_distances
    from .files import atomic_write_text
    from .runtime import resolve_device

    _check_output_files(args, "json", "ranked_image", "html")  # before the evaluation, not after it
    fm = _feature_model(args)
    model, cfg = fm.model, fm.cfg
    device = resolve_device(args.device or "auto")
    dataset = _load_data(args, cfg)
    check_evaluable(dataset)
    start = time.time()
    dist = query_gallery_distances(model.to(device), dataset, cfg.data, cfg.eval, device, rerank=args.rerank)
    result = score_distances(dist, dataset, cfg.eval.max_rank)
    report = result.to_dict()
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
    if args.html:
        from .viz.report import evaluation_rows, write_report

        rows = evaluation_rows(dist, dataset, result.all_ap, result.valid_query, topk=args.top_k,
                               max_queries=args.html_queries, cosine=not args.rerank)
        summary = [f"{dataset.name} at {dataset.root}: mAP {result.mAP:.1f}, top-1 {result.rank(1):.1f}, "
                   f"top-5 {result.rank(5):.1f}, top-10 {result.rank(10):.1f} (percent; {result.num_valid_queries} "
                   f"valid queries, {len(dataset.gallery)} gallery images{', re-ranked' if args.rerank else ''})",
                   f"{len(rows)} queries shown, spread from the best to the worst average precision; "
                   f"{'re-ranked distances' if args.rerank else 'captions: rank and cosine similarity'}; "
                   "same identity and camera as the query, and junk, left out (Market-1501 protocol)"]
        write_report(rows, args.html, f"hardreid evaluate: {fm.model.backbone_name}", summary)
        print(f"wrote {args.html}")
    return 0


# -- extract / index / search --------------------------------------------------------------------
def cmd_extract(args: argparse.Namespace) -> int:
    from .retrieval.features import extract_folder
    from .runtime import resolve_device

    fm = _feature_model(args, "extract")
    start = time.time()
    fs = extract_folder(fm, args.images, args.output, batch_size=args.batch_size, workers=args.workers,
                        device=resolve_device(args.device or "auto"), shard_size=args.shard_size, overwrite=args.overwrite)
    n, dim = fs.features.shape
    print(f"{n} images -> {args.output}/features.npy ({n} x {dim}, float32, L2-normalised), images.jsonl, manifest.json "
          f"({time.time() - start:.0f}s)")
    return 0


def cmd_index(args: argparse.Namespace) -> int:
    from .retrieval.index import build_index

    index = build_index(args.features, args.output, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe)
    meta = index.meta
    recall = f", recall@10 against exact search {meta['recall_at_10']:.3f}" if "recall_at_10" in meta else ""
    params = "".join(f" {k}={v}" for k, v in meta["params"].items())
    print(f"{meta['kind']} index of {meta['num_gallery']} x {meta['dim']} features{params} in {meta['build_seconds']:.1f}s"
          f"{recall} -> {args.output}")
    return 0


def _search_queries(args: argparse.Namespace, index):
    """Query features: a features folder as it is, else images through the gallery's model and settings."""
    from .retrieval.features import MANIFEST
    from .retrieval.model import load_feature_model
    from .retrieval.search import queries_from_features, queries_from_images
    from .runtime import resolve_device

    query = Path(args.query)
    if (query / MANIFEST).is_file():
        return queries_from_features(query)
    gallery = index.model
    size = dict(height=gallery["height"], width=gallery["width"], flip=gallery["flip"])
    if args.checkpoint or args.backbone:
        fm = load_feature_model(args.checkpoint, args.backbone, args.weights, **size)
    elif gallery.get("file") and Path(gallery["file"]).is_file():  # the model the gallery was extracted with
        print(f"query model: {gallery['file']} (the gallery's)", file=sys.stderr)
        ck = gallery["file"] if gallery["source"] == "checkpoint" else None
        fm = load_feature_model(ck, None if ck else gallery["backbone"], None if ck else gallery["file"], **size)
    else:
        raise UserError("search with query images needs the gallery's model: pass --checkpoint FILE (or --backbone "
                        "NAME --weights FILE) as used for 'hardreid extract', or --query FEATS_DIR")
    return queries_from_images(fm, query, args.batch_size, args.workers, resolve_device(args.device or "auto"))


def cmd_search(args: argparse.Namespace) -> int:
    from .retrieval import search as retrieval
    from .retrieval.index import GalleryIndex

    _check_output_files(args, "json", "csv", "html")  # before the search, not after it
    index = GalleryIndex.load(args.index)
    queries = _search_queries(args, index)
    results = retrieval.search_gallery(index, queries, args.top_k)
    for r in results[:args.show]:
        hits = "  ".join(f"{h.rank}. {h.path} {h.score:.3f}{'' if h.match is None else ' +' if h.match else ' -'}"
                         for h in r.hits[:5])
        print(f"{r.query}: {hits}{' ...' if len(r.hits) > 5 else ''}")
    if len(results) > args.show:
        print(f"... and {len(results) - args.show} more queries")
    known = [h.match for r in results for h in r.hits[:1] if h.match is not None]
    if known:
        print(f"top-1 correct for {sum(known)} of {len(known)} queries with known identities")
    outputs = []
    if args.json:
        outputs.append(retrieval.write_json(results, args.json, index, queries))
    if args.csv:
        outputs.append(retrieval.write_csv(results, args.csv))
    if args.html:
        from .viz.report import search_rows, write_report

        rows = search_rows(results, index.image_root, queries.root)
        summary = [f"{len(results)} queries from {queries.root} against {len(index)} gallery images in {index.image_root} "
                   f"({index.meta['kind']} index); captions: rank and cosine similarity"]
        outputs.append(write_report(rows, args.html, "hardreid search", summary))
    for path in outputs:
        print(f"wrote {path}")
    return 0


# -- export / info / configs ---------------------------------------------------------------------
def cmd_export(args: argparse.Namespace) -> int:
    from .version import __version__
    from .export.formats import ONNX_OPSET, check_parity, export_model, exported_runner, parity_images

    fm = _feature_model(args, "export")
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
        Path(args.json).write_text(json.dumps({"format": args.format, "file": str(path), "opset": ONNX_OPSET if opset else None,
                                               "inputs": where, **parity.to_dict(), **metadata}, indent=1))
        print(f"wrote {args.json}")
    if not parity.ok:
        print(f"hardreid export: error: the exported model differs from PyTorch by {parity.max_abs_diff:.2e} "
              f"(more than --tolerance {args.tolerance:g})", file=sys.stderr)
        return 1
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .config import load_config
    from .export.info import backbone_table, info_text, model_info

    if args.config and (args.checkpoint or args.backbone):
        raise UserError("info takes --config, or --checkpoint / --backbone, not both")
    if args.config or not (args.checkpoint or args.backbone):
        cfg = load_config(args.config, args.overrides) if args.config else load_config(None, args.overrides)
        cfg.data.height, cfg.data.width = args.height or cfg.data.height, args.width or cfg.data.width
        if args.all_backbones:
            rows = backbone_table(cfg)
        else:
            from .models import model_from_config

            cfg.model.weights, cfg.model.pretrained = "", False  # counting needs no weights
            rows = [model_info(model_from_config(cfg), cfg.data.height, cfg.data.width)]
    else:
        fm = _feature_model(args, "info")
        rows = [model_info(fm.model, fm.cfg.data.height, fm.cfg.data.width)]
    for row in rows:
        print(info_text(row) if "error" not in row else f"{row['backbone']:<13} not available: {row['error']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows if len(rows) > 1 else rows[0], indent=1))
        print(f"wrote {args.json}")
    return 0


def cmd_configs(args: argparse.Namespace) -> int:
    from .config import CONFIG_DIR, packaged_configs

    names = [n for n in packaged_configs() if args.filter in n]
    print("\n".join(names) if names else f"no packaged config name contains '{args.filter}'")
    print(f"({len(names)} configs in {CONFIG_DIR}; use them as --config NAME, e.g. --config acfl/market1501)", file=sys.stderr)
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
        print(f"wrote {plot_training_curves(run_dir, out_dir / 'fig5a_curves.png', diagnostics=False)}")
    needs_model = [w for w in which if w != "fig5a"]
    if needs_model:
        from .runtime import resolve_device
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
    from .files import check_writable_dir

    check_writable_dir(args.output, "--output")
    settings = None if args.seed is None else {"train": {"seed": args.seed}}
    run_demo(Path(args.output), epochs=args.epochs, weights=args.weights, settings=settings)
    return 0


# -- parser ------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hardreid", formatter_class=_formatter,
        description="Unsupervised person / vehicle re-identification: train from unlabelled crops, evaluate, search.",
        epilog="examples:\n  hardreid demo\n  hardreid datasets inspect ~/data/Market-1501-v15.09.15\n"
               "  hardreid train --config cluster_contrast/market1501 --data-root ~/data/market --output runs/cc\n"
               "  hardreid evaluate --checkpoint runs/cc/checkpoints/best.pth --data-root ~/data/market --html report.html\n"
               "  hardreid extract --checkpoint runs/cc/checkpoints/best.pth --images ~/crops --output feats\n"
               "  hardreid index --features feats --output gallery\n"
               "  hardreid search --index gallery --query person.jpg --top-k 10 --html hits.html\n"
               "  hardreid export --checkpoint runs/cc/checkpoints/best.pth --format onnx --output model.onnx\n"
               "  hardreid info --config acfl/market1501\n"
               "  hardreid figures --run runs/acfl --data-root ~/data/market\n\n"
               "Run 'hardreid COMMAND --help' for the options of each command.")
    parser.add_argument("--version", action="version", version=f"hardreid {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model on unlabelled training images", formatter_class=_formatter,
                       description="Train a method (Cluster Contrast baseline, ...) on the training split; evaluates on "
                                   "query/gallery when the data set has them.",
                       epilog="examples:\n"
                              "  hardreid train --config cluster_contrast/market1501 --data-root ~/data/market --output runs/cc\n"
                              "  hardreid train --config my_configs/cc.yaml --data-root ~/data/market --output runs/mine   # a file\n"
                              "  hardreid train --config cluster_contrast/cpu_mobilenet --data-root ../shared/data/cuhk03 \\\n"
                              "      --output runs/cuhk03 --weights ../shared/weights/mobilenet_v2_imagenet.pth train.epochs=20\n"
                              "  hardreid train --output runs/cc --data-root ~/data/market --resume      # continue a run\n"
                              "  hardreid train --output runs/cc --data-root ~/data/market --resume train.epochs=80\n"
                              "  # 4 GPUs of one machine (data.batch_size is the global batch, shared by the processes):\n"
                              "  torchrun --nproc_per_node 4 -m hardreid train --config acfl/market1501 \\\n"
                              "      --data-root ~/data/market --output runs/acfl\n"
                              "  # 2 machines x 4 GPUs (run on each machine, --node_rank 0 and 1):\n"
                              "  torchrun --nnodes 2 --node_rank 0 --nproc_per_node 4 --rdzv_backend c10d \\\n"
                              "      --rdzv_endpoint HOST0:29400 -m hardreid train --config ... --data-root ... --output ...\n\n"
                              "--config takes a YAML file or the name of a packaged config ('hardreid configs' lists them).\n"
                              "Any config key can be overridden as section.key=value (every key and its default: the packaged\n"
                              "base.yaml); every value is checked before any work starts. --resume refuses changes to keys\n"
                              "other than train.epochs, train.eval_every, train.save_every, train.device, data.workers,\n"
                              "eval.batch_size, model.weights and model.pretrained.\n"
                              "Ctrl-C (SIGINT, exit code 130) and SIGTERM (exit code 143) stop cleanly: the last\n"
                              "finished checkpoint stays and --resume continues from it.")
    p.add_argument("--config", default=None, metavar="NAME_OR_FILE", type=_path,
                   help="packaged config name (acfl/market1501) or YAML file (may inherit with _base_)")
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
                              "  hardreid evaluate --checkpoint best.pth --data-root ~/data/market --rerank --ranked-image ranked.png\n"
                              "  hardreid evaluate --checkpoint best.pth --data-root ~/test_only --html report.html   # query/ + bounding_box_test/ suffice")
    _add_model_args(p)
    _add_data_args(p)
    p.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking")
    p.add_argument("--json", default=None, metavar="OUT.json", type=_path, help="write the numbers as JSON (percent)")
    p.add_argument("--ranked-image", default=None, metavar="OUT.png", type=_path, help="save a picture of ranked results")
    p.add_argument("--html", default=None, metavar="OUT.html", type=_path,
                   help="self-contained HTML report of ranked lists, sortable by per-query AP")
    p.add_argument("--html-queries", type=_count(1), default=100, metavar="N",
                   help="queries in the report, spread from the best to the worst AP (default 100)")
    p.add_argument("--top-k", type=_count(1), default=10, metavar="K", help="hits per query in the report (default 10)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("extract", help="features of any folder of images (resumable)", formatter_class=_formatter,
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
    _add_model_args(p)
    p.add_argument("--images", required=True, metavar="DIR", type=_path, help="folder of images (searched recursively) or one image")
    p.add_argument("--output", required=True, metavar="FEATS_DIR", type=_path, help="where the features go")
    p.add_argument("--batch-size", type=_count(1), default=128, help="images per forward pass (default 128)")
    p.add_argument("--shard-size", type=_count(1), default=4096, help="images per resumable shard (default 4096)")
    p.add_argument("--overwrite", action="store_true", help="replace features of other images or another model in FEATS_DIR")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("index", help="a gallery index (faiss) of extracted features", formatter_class=_formatter,
                       description="Builds a faiss index of a features folder: exact inner product (cosine) search by "
                                   "default; an approximate IVF index when the features take more than 2 GiB (--kind auto: over "
                                   "262,144 features of 2048-d) or IVF / HNSW when "
                                   "asked, with its recall@10 against exact search measured and printed.",
                       epilog="examples:\n  hardreid index --features feats --output gallery\n"
                              "  hardreid index --features feats --output gallery_ivf --kind ivf --nprobe 64")
    p.add_argument("--features", required=True, metavar="FEATS_DIR", type=_path, help="output of 'hardreid extract'")
    p.add_argument("--output", required=True, metavar="INDEX_DIR", type=_path, help="where the index goes")
    p.add_argument("--kind", choices=["auto", "flat", "ivf", "hnsw"], default="auto",
                   help="auto (default): flat (exact) while N x D <= 2 GiB of float32, ivf above")
    p.add_argument("--nlist", type=_count(1), default=None, help="ivf: number of lists (default sqrt(N))")
    p.add_argument("--nprobe", type=_count(1), default=None, help="ivf: lists scanned per query (default: a quarter of them)")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("search", help="top-k gallery matches of query images", formatter_class=_formatter,
                       description="Searches a gallery index with one image, a folder of images (with the gallery's "
                                   "model: --checkpoint, by default the one recorded in the index) or a features "
                                   "folder. Scores are cosine similarities. Writes the top-k per query as JSON / CSV and "
                                   "an HTML report (green = same identity, red = another, when Market-style names tell).",
                       epilog="examples:\n"
                              "  hardreid search --index gallery --checkpoint best.pth --query person.jpg --top-k 10\n"
                              "  hardreid search --index gallery --query ~/queries --top-k 20 --html report.html --json hits.json\n"
                              "  hardreid search --index gallery --query query_feats --csv hits.csv    # a features folder")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", type=_path, help="output of 'hardreid index'")
    p.add_argument("--query", required=True, metavar="IMAGE|DIR|FEATS_DIR", type=_path, help="an image, a folder of images or a features folder")
    _add_model_args(p, size=False)
    p.add_argument("--top-k", type=_count(1), default=10, metavar="K", help="hits per query (default 10)")
    p.add_argument("--json", default=None, metavar="OUT.json", type=_path, help="write the hits as JSON")
    p.add_argument("--csv", default=None, metavar="OUT.csv", type=_path, help="write the hits as CSV (one line per query and hit)")
    p.add_argument("--html", default=None, metavar="OUT.html", type=_path, help="write a self-contained HTML report")
    p.add_argument("--show", type=_count(0), default=10, metavar="N", help="queries printed (default 10)")
    p.add_argument("--batch-size", type=_count(1), default=128, help="query images per forward pass")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("export", help="ONNX / TorchScript / torch.export file of a model, with a parity check",
                       formatter_class=_formatter,
                       description="Exports the evaluated model of a checkpoint (an EMA teacher where the method evaluates "
                                   "one) with a dynamic batch axis: input 'images' B x 3 x H x W (normalised RGB), output "
                                   "'features' B x D (L2-normalised). ONNX uses opset 18 and needs 'pip install "
                                   "hardreid[export]'. Then runs the file (onnxruntime for ONNX) and compares its features "
                                   "with PyTorch's: exit code 1 when they differ by more than --tolerance.",
                       epilog="examples:\n"
                              "  hardreid export --checkpoint best.pth --format onnx --output model.onnx --images ~/data/market/query\n"
                              "  hardreid export --checkpoint best.pth --format torchscript --output model.ts\n"
                              "  hardreid export --backbone resnet50 --format onnx --output r50.onnx --height 256 --width 128")
    _add_model_args(p)
    p.add_argument("--format", choices=["onnx", "torchscript", "pt2"], default="onnx", help="default onnx")
    p.add_argument("--output", required=True, metavar="FILE", type=_path, help="the exported file")
    p.add_argument("--images", default=None, metavar="DIR", type=_path, help="real images for the parity check (default: random inputs)")
    p.add_argument("--parity-images", type=_count(1), default=32, metavar="N", help="images in the parity check (default 32)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest allowed |feature difference| (default 1e-4)")
    p.add_argument("--no-check", action="store_true", help="skip the parity check")
    p.add_argument("--json", default=None, metavar="OUT.json", type=_path, help="write the parity numbers as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("info", help="parameters and FLOPs of a model at its input size", formatter_class=_formatter,
                       description="Parameters and FLOPs per image (torch.utils.flop_counter: convolutions and matrix "
                                   "products, 2 FLOPs per multiply-add) of the configured model at the configured input "
                                   "size, of a checkpoint's model, or of every backbone. Training writes the same into "
                                   "RUN_DIR/model_info.json.",
                       epilog="examples:\n  hardreid info --config acfl/market1501\n"
                              "  hardreid info --config cluster_contrast/cpu_mobilenet --all-backbones\n"
                              "  hardreid info --checkpoint runs/cc/checkpoints/best.pth --json info.json")
    p.add_argument("--config", default=None, metavar="NAME_OR_FILE", help="packaged config name or YAML file")
    p.add_argument("--checkpoint", default=None, metavar="FILE", type=_path, help="a hardreid checkpoint")
    p.add_argument("--backbone", default=None, help="a plain backbone: resnet18, resnet34, resnet50, mobilenet_v2, vit_small, "
                   "vit_small_pass, vit_small_pass_mean, vit_small_ics")
    p.add_argument("--all-backbones", action="store_true", help="one line per backbone at the config's input size")
    p.add_argument("--height", type=_count(1), default=None, help="input height (default: the config's)")
    p.add_argument("--width", type=_count(1), default=None, help="input width (default: the config's)")
    p.add_argument("--json", default=None, metavar="OUT.json", type=_path)
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. model.backbone=resnet18")
    p.set_defaults(func=cmd_info, weights=None, flip=False, workers=0)

    p = sub.add_parser("configs", help="list the packaged configs (names for --config)", formatter_class=_formatter,
                       epilog="examples:\n  hardreid configs\n  hardreid configs acfl/t2")
    p.add_argument("filter", nargs="?", default="", help="show only names containing this text")
    p.set_defaults(func=cmd_configs)

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
                       epilog="examples:\n  hardreid demo\n  hardreid demo --output /tmp/demo --epochs 4\n"
                              "  OMP_NUM_THREADS=1 hardreid demo --output /tmp/demo2 --seed 2   # one thread, another seed\n\n"
                              "PyTorch uses as many threads as OMP_NUM_THREADS says (default: one per core).")
    p.add_argument("--output", default="hardreid_demo", metavar="DIR", type=_path, help="where data, run and pictures go")
    p.add_argument("--epochs", type=_count(1), default=None, help="training epochs (default: the demo's 15)")
    p.add_argument("--weights", default=None, metavar="FILE", type=_path, help="start from these MobileNetV2 weights")
    p.add_argument("--seed", type=_count(0), default=None,
                   help="train.seed: random init, sampling and augmentation (default: the demo's 1; the data set stays the same)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("datasets", help="inspect data sets, generate the synthetic one, subsample identities",
                       formatter_class=_formatter)
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
                        epilog="examples:\n  hardreid datasets synth data/synthetic\n"
                               "  hardreid datasets synth data/big --train-ids 300 --cameras 6\n"
                               "  # few-shot: 2 images per training identity, 2 cameras, strong colour casts\n"
                               "  hardreid datasets synth data/fewshot2 --train-ids 400 --cameras 2 --train-images-per-id 2 "
                               "--colour-strength 3")
    q.add_argument("output", metavar="DIR", type=_path)
    q.add_argument("--train-ids", type=_count(1), default=60)
    q.add_argument("--test-ids", type=_count(1), default=40)
    q.add_argument("--cameras", type=_count(2), default=4)
    q.add_argument("--images-per-camera", type=_count(1), default=4, metavar="N",
                   help="images of an identity in each of its cameras (default 4)")
    q.add_argument("--train-images-per-id", type=_count(0), default=0, metavar="N",
                   help="few-shot: exactly N images per training identity, over its cameras in turn (default 0: off)")
    q.add_argument("--colour-strength", type=float, default=1.0, metavar="S",
                   help="camera illumination / colour cast differences: 0 none, 1 default, 2-4 strong")
    q.add_argument("--seed", type=_count(0), default=0)
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
    q.add_argument("--max-per-id", type=_count(1), required=True, metavar="K", help="training images kept per identity")
    q.add_argument("--seed", type=_count(0), default=0, help="which images are kept (default 0)")
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
            print(f"hardreid {args.command}: error{_rank_note()}: {clean_message(exc)}", file=sys.stderr)
            return 2
        if isinstance(exc, OSError):  # the machine, not the input: a full disk, a vanished mount, ...
            print(f"hardreid {args.command}: error: {exc}", file=sys.stderr)
            return 1
        raise


def _rank_note() -> str:
    """Which process failed, when several run (torchrun)."""
    from . import distributed

    return f" (rank {distributed.rank()} of {distributed.world_size()})" if distributed.world_size() > 1 else ""


def _resume_hint(args: argparse.Namespace) -> str:
    """How to continue an interrupted training run (nothing for other commands)."""
    if args.command != "train" or not (Path(args.output) / "checkpoints" / "last.pth").is_file():
        return ""
    return (f"; checkpoints/last.pth holds the last finished epoch: continue with "
            f"hardreid train --output {args.output} --data-root {args.data_root} --resume")


if __name__ == "__main__":
    sys.exit(main())
