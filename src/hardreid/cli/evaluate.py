"""``hardreid evaluate``: CMC / mAP of a checkpoint or an untrained backbone, with reports."""

from __future__ import annotations

import argparse
import json
import time

from .common import add_data_args, add_model_args, add_overwrite_arg, claim_output_files, count, feature_model, formatter, load_data, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the evaluate command to ``sub`` (the subparsers of ``hardreid``)."""
    from ..evaluation.rerank import RERANK_MODES  # the re-rankings feature_distances runs

    p = sub.add_parser("evaluate", help="CMC / mAP of a checkpoint or an untrained backbone", formatter_class=formatter,
                       description="Score a model on the query/gallery splits (Market-1501 protocol). Queries without a "
                                   "gallery image of their identity from another camera cannot be scored: they are "
                                   "skipped and counted. Output paths are checked before the evaluation starts.",
                       epilog="examples:\n"
                              "  hardreid evaluate --checkpoint runs/cc/checkpoints/best.pth --data-root ~/data/market --json result.json\n"
                              "  hardreid evaluate --backbone mobilenet_v2 --weights mobilenet_v2_imagenet.pth \\\n"
                              "      --data-root ~/data/cuhk03 --height 128 --width 64\n"
                              "  hardreid evaluate --checkpoint best.pth --data-root ~/data/market --rerank --ranked-image ranked.png\n"
                              "  hardreid evaluate --checkpoint best.pth --data-root ~/data/market --rerank camera_aware\n"
                              "  hardreid evaluate --checkpoint best.pth --data-root ~/test_only --html report.html   # query/ + bounding_box_test/ suffice")
    add_model_args(p)
    add_data_args(p)
    p.add_argument("--rerank", nargs="?", const="standard", default=None, choices=RERANK_MODES,
                   help="re-rank the distances: standard = k-reciprocal (Zhong et al. 2017; the default of a bare "
                        "--rerank), camera_aware = CA-Jaccard (Chen et al. 2024; the config's cluster.k1_intra, "
                        "k1_inter, k2_intra, k2_inter)")
    p.add_argument("--json", default=None, metavar="OUT.json", type=path_arg, help="write the numbers as JSON (percent)")
    p.add_argument("--ranked-image", default=None, metavar="OUT.png", type=path_arg, help="save a picture of ranked results")
    p.add_argument("--html", default=None, metavar="OUT.html", type=path_arg,
                   help="self-contained HTML report of ranked lists, sortable by per-query AP")
    p.add_argument("--html-queries", type=count(1), default=100, metavar="N",
                   help="queries in the report, spread from the best to the worst AP (default 100)")
    p.add_argument("--top-k", type=count(1), default=10, metavar="K", help="hits per query in the report (default 10)")
    add_overwrite_arg(p, "--json / --ranked-image / --html files that exist")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluation.pipeline import check_evaluable, query_gallery_distances, score_distances
    from ..files import atomic_write_text
    from ..runtime import resolve_device

    inputs = {"--checkpoint": args.checkpoint, "--weights": args.weights, "--data-root": args.data_root}
    claim_output_files(args, inputs, "json", "ranked_image", "html")  # before the evaluation, not after it
    fm = feature_model(args)
    model, cfg = fm.model, fm.cfg
    device = resolve_device(args.device or "auto")
    dataset = load_data(args, cfg)
    check_evaluable(dataset)
    start = time.time()
    dist = query_gallery_distances(model.to(device), dataset, cfg.data, cfg.eval, device, rerank=args.rerank or False,
                                   cluster_cfg=cfg.cluster)
    reranked = f", re-ranked ({args.rerank})" if args.rerank else ""
    result = score_distances(dist, dataset, cfg.eval.max_rank)
    report = result.to_dict()
    skipped = len(dataset.query) - result.num_valid_queries
    report.update({"num_query": len(dataset.query), "num_skipped_query": skipped, "num_gallery": len(dataset.gallery)})
    note = f" ({skipped} skipped: no gallery image of their identity from another camera)" if skipped else ""
    print(f"{dataset.name}: mAP {report['mAP']:.1f}  top-1 {report['cmc']['1']:.1f}  top-5 {report['cmc']['5']:.1f}  "
          f"top-10 {report['cmc']['10']:.1f}  ({result.num_valid_queries} of {len(dataset.query)} queries scored{note}, "
          f"{len(dataset.gallery)} gallery, {time.time() - start:.0f}s{reranked})")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    if args.ranked_image:
        from ..viz.ranked import save_ranked_results

        save_ranked_results(dist, dataset, args.ranked_image)
        print(f"wrote {args.ranked_image}")
    if args.html:
        from ..viz.report import evaluation_rows, write_report

        rows = evaluation_rows(dist, dataset, result.all_ap, result.valid_query, topk=args.top_k,
                               max_queries=args.html_queries, cosine=not args.rerank)
        summary = [f"{dataset.name} at {dataset.root}: mAP {result.mAP:.1f}, top-1 {result.rank(1):.1f}, "
                   f"top-5 {result.rank(5):.1f}, top-10 {result.rank(10):.1f} (percent; {result.num_valid_queries} "
                   f"valid queries, {len(dataset.gallery)} gallery images{reranked})",
                   f"{len(rows)} queries shown, spread from the best to the worst average precision; "
                   f"{'re-ranked distances' if args.rerank else 'captions: rank and cosine similarity'}; "
                   "same identity and camera as the query, and junk, left out (Market-1501 protocol)"]
        write_report(rows, args.html, f"hardreid evaluate: {fm.model.backbone_name}", summary)
        print(f"wrote {args.html}")
    return 0
