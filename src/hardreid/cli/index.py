"""``hardreid index``: a gallery index of extracted features."""

from __future__ import annotations

import argparse

from .common import add_overwrite_arg, count, formatter, path_arg


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Adds the index command to ``sub`` (the subparsers of ``hardreid``)."""
    from ..retrieval.index import KINDS  # the index kinds build_index makes

    p = sub.add_parser("index", help="a gallery index (faiss) of extracted features", formatter_class=formatter,
                       description="Builds a faiss index of a features folder: exact inner product (cosine) search by "
                                   "default; an approximate IVF index when the features take more than 2 GiB (--kind auto: over "
                                   "262,144 features of 2048-d) or IVF / HNSW when "
                                   "asked, with its recall@10 against exact search measured and printed.",
                       epilog="examples:\n  hardreid index --features feats --output gallery\n"
                              "  hardreid index --features feats --output gallery_ivf --kind ivf --nprobe 64")
    p.add_argument("--features", required=True, metavar="FEATS_DIR", type=path_arg, help="output of 'hardreid extract'")
    p.add_argument("--output", required=True, metavar="INDEX_DIR", type=path_arg, help="where the index goes")
    p.add_argument("--kind", choices=KINDS, default="auto",
                   help="auto (default): flat (exact) while N x D <= 2 GiB of float32, ivf above")
    p.add_argument("--nlist", type=count(1), default=None, help="ivf: number of lists (default sqrt(N))")
    p.add_argument("--nprobe", type=count(1), default=None, help="ivf: lists scanned per query (default: a quarter of them)")
    add_overwrite_arg(p, "the files of a folder that is not an earlier index")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..retrieval.index import build_index

    index = build_index(args.features, args.output, kind=args.kind, nlist=args.nlist, nprobe=args.nprobe,
                        overwrite=args.overwrite)
    meta = index.meta
    recall = f", recall@10 against exact search {meta['recall_at_10']:.3f}" if "recall_at_10" in meta else ""
    params = "".join(f" {k}={v}" for k, v in meta["params"].items())
    print(f"{meta['kind']} index of {meta['num_gallery']} x {meta['dim']} features{params} in {meta['build_seconds']:.1f}s"
          f"{recall} -> {args.output}")
    return 0
