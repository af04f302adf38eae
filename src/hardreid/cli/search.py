"""``hardreid search``: top-k gallery matches of query images or features."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import UserError
from .common import add_model_args, add_overwrite_arg, claim_output_files, count, formatter, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the search command to ``sub`` (the subparsers of ``hardreid``)."""
    p = sub.add_parser("search", help="top-k gallery matches of query images", formatter_class=formatter,
                       description="Searches a gallery index with one image, a folder of images (with the gallery's "
                                   "model: --checkpoint, by default the one recorded in the index) or a features "
                                   "folder. Scores are cosine similarities. Writes the top-k per query as JSON / CSV and "
                                   "an HTML report (green = same identity, red = another, when Market-style names tell).",
                       epilog="examples:\n"
                              "  hardreid search --index gallery --checkpoint best.pth --query person.jpg --top-k 10\n"
                              "  hardreid search --index gallery --query ~/queries --top-k 20 --html report.html --json hits.json\n"
                              "  hardreid search --index gallery --query query_feats --csv hits.csv    # a features folder")
    p.add_argument("--index", required=True, metavar="INDEX_DIR", type=path_arg, help="output of 'hardreid index'")
    p.add_argument("--query", required=True, metavar="IMAGE|DIR|FEATS_DIR", type=path_arg, help="an image, a folder of images or a features folder")
    add_model_args(p, size=False)
    p.add_argument("--top-k", type=count(1), default=10, metavar="K", help="hits per query (default 10)")
    p.add_argument("--json", default=None, metavar="OUT.json", type=path_arg, help="write the hits as JSON")
    p.add_argument("--csv", default=None, metavar="OUT.csv", type=path_arg, help="write the hits as CSV (one line per query and hit)")
    p.add_argument("--html", default=None, metavar="OUT.html", type=path_arg, help="write a self-contained HTML report")
    p.add_argument("--show", type=count(0), default=10, metavar="N", help="queries printed (default 10)")
    p.add_argument("--batch-size", type=count(1), default=128, help="query images per forward pass")
    add_overwrite_arg(p, "--json / --csv / --html files that exist")
    p.set_defaults(func=run)


def _search_queries(args: argparse.Namespace, index):
    """Query features: a features folder as it is, else images through the gallery's model and settings."""
    from ..retrieval.features import MANIFEST
    from ..retrieval.model import load_feature_model
    from ..retrieval.search import queries_from_features, queries_from_images
    from ..runtime import resolve_device

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


def run(args: argparse.Namespace) -> int:
    from ..retrieval import search as retrieval
    from ..retrieval.index import GalleryIndex

    inputs = {"--index": args.index, "--query": args.query, "--checkpoint": args.checkpoint, "--weights": args.weights}
    claim_output_files(args, inputs, "json", "csv", "html")  # before the search, not after it
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
        from ..viz.report import search_rows, write_report

        rows = search_rows(results, index.image_root, queries.root)
        summary = [f"{len(results)} queries from {queries.root} against {len(index)} gallery images in {index.image_root} "
                   f"({index.meta['kind']} index); captions: rank and cosine similarity"]
        outputs.append(write_report(rows, args.html, "hardreid search", summary))
    for path in outputs:
        print(f"wrote {path}")
    return 0
