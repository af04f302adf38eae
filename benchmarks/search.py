"""Gallery search (exact and approximate faiss indexes) on synthetic features, and feature extraction speed.

Search: for each gallery size, synthetic L2-normalised features (D = 2048, the
feature dimension of the default ResNet-50) shaped like re-ID features
(identities of ~17 images, camera offsets, a shared component; generated in
chunks into a memory-mapped file, so 1M x 2048 needs 8 GB on disk and about
8 GB of memory for the index), held-out queries of gallery identities, then
per index kind (``hardreid.retrieval.index.build_faiss_index``):

* build time;
* latency of one query (median and 90th percentile over ``--latency-queries``
  single-query searches) and the per-query time of one batch of all queries;
* recall@10 against exact search (``flat``) on the same queries; for IVF for
  several ``nprobe``.

Extraction (``--extract-images DIR``): ``hardreid.retrieval.extract_folder``
(JPEG decoding, resizing, forward pass, writing) on ``--extract-count``
images, per backbone at its usual input size: images per second, and images
per CPU-second (this process and its loader workers: steadier than the wall
time on a shared machine).

    python benchmarks/search.py --sizes 100000 1000000 --out benchmarks/results/search.json
    python benchmarks/search.py --sizes --extract-images ../shared/data/cuhk03/bounding_box_test \\
        --out benchmarks/results/extract.json
"""

from __future__ import annotations

import argparse
import gc
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402 - benchmarks/ is put on sys.path just above

common.repo_src_on_path()
from hardreid.retrieval.index import build_faiss_index, default_nlist, recall_at_k  # noqa: E402 - after repo_src_on_path()

CHUNK = 65536


def synthetic_gallery(n: int, dim: int, path: Path, num_queries: int,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(gallery memmap N x D, gallery pids, queries Q x D, query pids), L2-normalised float32.

    The recipe of ``common.reid_features`` (identities of ~17 images, a shared component, camera
    offsets, per-identity spread, a decaying spectrum), written in chunks. Queries are further images
    of random gallery identities (not in the gallery).
    """
    rng = np.random.default_rng(seed)
    num_ids = max(2, n // 17)
    spectrum = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    spectrum *= np.sqrt(dim / float((spectrum ** 2).sum()))

    def gaussian(rows: int) -> np.ndarray:
        return rng.standard_normal((rows, dim), dtype=np.float32) * spectrum / np.sqrt(dim)

    common_part = np.abs(gaussian(1))
    common_part /= np.linalg.norm(common_part)
    centres = gaussian(num_ids)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    cams = 0.45 * gaussian(6)
    spread = (0.55 + 0.5 * rng.random(num_ids)).astype(np.float32)

    def images(pids: np.ndarray) -> np.ndarray:
        x = 0.65 * common_part + centres[pids] + cams[rng.integers(0, 6, len(pids))] + spread[pids, None] * gaussian(len(pids))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    gallery = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, dim))
    pids = rng.integers(0, num_ids, n)
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        gallery[start:stop] = images(pids[start:stop])
    gallery.flush()
    query_pids = rng.integers(0, num_ids, num_queries)
    return gallery, pids, images(query_pids), query_pids


def latency(index: Any, queries: np.ndarray, k: int, singles: int) -> dict[str, float]:
    index.search(queries[:1], k)  # warm-up
    times = []
    for q in queries[:singles]:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append(1000 * (time.perf_counter() - t))
    t = time.perf_counter()
    _, found = index.search(queries, k)
    batch = 1000 * (time.perf_counter() - t) / len(queries)
    return {"single_query_ms_median": float(np.median(times)), "single_query_ms_p90": float(np.percentile(times, 90)),
            "batch_ms_per_query": batch, "batch_size": len(queries), "found": found}


def bench_size(n: int, dim: int, kinds: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    t = time.perf_counter()
    gallery, pids, queries, query_pids = synthetic_gallery(n, dim, workdir / f"gallery_{n}.npy", args.queries, args.seed)
    out: dict[str, Any] = {"num_gallery": n, "dim": dim, "num_queries": len(queries),
                           "generate_seconds": round(time.perf_counter() - t, 1), "kinds": {}}
    truth = None
    for kind in kinds:
        if kind == "hnsw" and n > args.hnsw_max:
            out["kinds"][kind] = {"skipped": f"gallery above --hnsw-max {args.hnsw_max} (build time)"}
            continue
        t = time.perf_counter()
        index, params = build_faiss_index(gallery, kind, nlist=args.nlist, nprobe=args.nprobe, seed=args.seed)
        entry: dict[str, Any] = {"params": params, "build_seconds": round(time.perf_counter() - t, 2),
                                 "peak_rss_mb": round(common.peak_rss_mb())}
        sweep = {"ivf": ("nprobe", args.nprobe_sweep), "hnsw": ("efSearch", args.ef_sweep)}.get(kind, ("", [None]))
        rows = []
        for value in sweep[1]:
            if kind == "ivf":
                index.nprobe = min(value, params["nlist"])
            elif kind == "hnsw":
                index.hnsw.efSearch = value
            lat = latency(index, queries, 10, args.latency_queries)
            found = lat.pop("found")
            if kind == "flat":
                truth = found
            row = {**({sweep[0]: value} if value is not None else {}), **lat,
                   "recall_at_10": recall_at_k(found, truth) if truth is not None else None,
                   # share of the 10 hits that are the query's identity (what a user sees), exact search for comparison
                   "same_identity_at_10": float((pids[found] == query_pids[:, None]).mean())}
            rows.append(row)
            print(f"N={n:>8} {kind:5} {str(value or ''):>4}  1 query {row['single_query_ms_median']:8.2f} ms "
                  f"(p90 {row['single_query_ms_p90']:.2f}), batch {row['batch_ms_per_query']:.3f} ms/query, "
                  f"recall@10 {row['recall_at_10']:.3f}, same identity {row['same_identity_at_10']:.3f}, "
                  f"build {entry['build_seconds']:.1f}s", flush=True)
        entry["results"] = rows
        out["kinds"][kind] = entry
        del index
        gc.collect()
    del gallery
    (workdir / f"gallery_{n}.npy").unlink()
    return out


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (the loader workers)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def bench_extract(folder: str, count: int, batch_size: int, workers: int) -> list[dict[str, Any]]:
    import torch

    from hardreid.retrieval.features import extract_folder, list_images
    from hardreid.retrieval.model import load_feature_model

    root, paths = list_images(folder)
    picked = Path(tempfile.mkdtemp(prefix="hardreid_extract_"))
    for p in paths[:count]:
        shutil.copy(root / p, picked / Path(p).name)
    rows = []
    for backbone, (h, w) in (("resnet50", (256, 128)), ("mobilenet_v2", (128, 64)), ("resnet50", (128, 64))):
        fm = load_feature_model(backbone=backbone, height=h, width=w)
        out = picked.parent / f"{picked.name}_feats_{backbone}_{h}"
        extract_folder(fm, picked, out, batch_size=batch_size, workers=workers, shard_size=count, progress=False,
                       overwrite=True)  # warm-up run (allocations, page cache)
        t, cpu = time.perf_counter(), _cpu_seconds()
        extract_folder(fm, picked, out, batch_size=batch_size, workers=workers, shard_size=count, progress=False,
                       overwrite=True)
        seconds, cpu = time.perf_counter() - t, _cpu_seconds() - cpu
        rows.append({"backbone": backbone, "input": [h, w], "images": count, "batch_size": batch_size, "workers": workers,
                     "torch_threads": torch.get_num_threads(), "seconds": round(seconds, 2),
                     "images_per_second": round(count / seconds, 1), "cpu_seconds": round(cpu, 1),
                     "images_per_cpu_second": round(count / cpu, 2)})
        print(f"extract {backbone} {h}x{w}: {count / seconds:.1f} images/s ({count} images, {seconds:.1f}s; "
              f"{count / cpu:.2f} images per CPU-second)", flush=True)
        shutil.rmtree(out)
    shutil.rmtree(picked)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000], help="gallery sizes")
    p.add_argument("--dim", type=int, default=2048, help="feature dimension (ResNet-50: 2048)")
    p.add_argument("--kinds", nargs="+", default=["flat", "ivf", "hnsw"], choices=["flat", "ivf", "hnsw"])
    p.add_argument("--queries", type=int, default=200, help="held-out queries (recall@10, batch timing)")
    p.add_argument("--latency-queries", type=int, default=30, help="single-query searches timed one by one")
    p.add_argument("--nlist", type=int, default=None, help=f"IVF lists (default: the library's, e.g. {default_nlist(10**6)} for 1M)")
    p.add_argument("--nprobe", type=int, default=None)
    p.add_argument("--nprobe-sweep", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    p.add_argument("--ef-sweep", type=int, nargs="+", default=[64, 128, 256, 512], help="HNSW efSearch values")
    p.add_argument("--hnsw-max", type=int, default=100_000, help="build HNSW only up to this gallery size")
    p.add_argument("--extract-images", default=None, metavar="DIR", help="also time extraction on images of DIR")
    p.add_argument("--extract-count", type=int, default=256)
    p.add_argument("--extract-batch", type=int, default=64)
    p.add_argument("--extract-workers", type=int, default=2)
    p.add_argument("--workdir", default=None, help="where the memory-mapped gallery goes (default: a temp folder)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/search.json")
    args = p.parse_args(argv)
    import faiss

    payload = common.result_header("search", argv)
    payload["faiss_threads"] = faiss.omp_get_max_threads()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hardreid_search_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        payload["search"] = [bench_size(n, args.dim, args.kinds, args, workdir) for n in args.sizes]
    finally:
        if args.workdir is None:  # the temporary folder (each gallery file is removed after its size)
            shutil.rmtree(workdir, ignore_errors=True)
    if args.extract_images:
        payload["extract"] = bench_extract(args.extract_images, args.extract_count, args.extract_batch, args.extract_workers)
    payload["load_average_after"] = common.load_average()
    common.write_json(args.out, payload)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
