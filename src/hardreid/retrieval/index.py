"""A gallery index over extracted features (faiss), exact or approximate, saved to a folder.

Features are L2-normalised, so the inner product is the cosine similarity and
every index here ranks by it (higher = more similar):

``flat``
    ``IndexFlatIP``: exact, every gallery feature compared with the query.
``ivf``
    ``IndexIVFFlat`` (inner product): k-means splits the gallery into
    ``nlist`` lists (default ``sqrt(N)``) and a query scans the ``nprobe``
    nearest lists (default a quarter of them); exact scores inside them.
``hnsw``
    ``IndexHNSWFlat`` (inner product, M = 32 links, efSearch 512): a graph
    walk; fast queries, but slow to build on large galleries.
``auto`` (default)
    ``flat`` while the gallery's features take at most 2 GiB
    (:data:`EXACT_MAX_VALUES` = N x D: 262,144 features of 2048-d, 1M of
    512-d), ``ivf`` above. Measured with ``benchmarks/search.py`` on re-ID-like
    2048-d features, 2 CPU cores (benchmarks/README.md): exact search streams
    every feature for every query, 0.21 s for one query over 100,000 and 1.7 s
    over 1,000,000, so past ~2 GiB one query takes more than half a second;
    IVF with a quarter of the lists scanned keeps recall@10 at about 0.9 and is
    ~6x faster (0.27 s at 1M), but needs minutes of k-means to build and misses
    some neighbours, so it is not worth it below.

An approximate index measures its recall@10 against exact search when it is
built (gallery features as queries, themselves left out) and records it in
``index.json``.

The index folder holds ``index.faiss``, ``index.json`` (kind, parameters,
recall, the features' manifest) and ``images.jsonl`` (the gallery's records,
as in the features folder), so it is usable without the features folder;
thumbnails in reports read the images from the recorded image root.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from .features import IMAGES, FeatureSet, check_feature_values, ImageRecord, load_features, read_records, write_records
from ..files import atomic_write_json, atomic_write_path
from ..outputs import claim_folder

INDEX_FILE, META = "index.faiss", "index.json"
KINDS = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_VALUES = 512 * 2**20  # auto: exact search while N x D <= this (2 GiB of float32; benchmarks/search.py)
NPROBE_FRACTION = 4  # ivf: scan nlist / 4 lists by default (recall@10 ~0.9 at 1M re-ID-like features)
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 40, 512
ADD_CHUNK = 65536  # rows handed to faiss at a time (the features stay memory-mapped)


def import_faiss():
    """The faiss module, or a clear error naming the extra to install."""
    try:
        import faiss
    except ImportError:
        raise UserError("index and search need faiss: pip install 'hardreid[search]' (or pip install faiss-cpu)") from None
    return faiss


def default_nlist(n: int) -> int:
    """IVF lists: sqrt(N), at least 1 and at most N / 39 (faiss wants 39 training points per centroid).

    Building costs about N x nlist x D multiply-adds (k-means, then assigning every feature);
    sqrt(N) keeps a 1M x 2048 gallery to minutes on 2 CPU cores, where faiss's 4 sqrt(N) for
    large sets would cost 4x as much.
    """
    return int(max(1, min(round(math.sqrt(n)), n // 39)))


def choose_kind(kind: str, n: int, dim: int) -> str:
    if kind not in KINDS:
        raise UserError(f"unknown index kind '{kind}'; choose one of {', '.join(KINDS)}")
    if kind == "auto":
        return "flat" if n * dim <= EXACT_MAX_VALUES else "ivf"
    return kind


def default_nprobe(nlist: int) -> int:
    return max(1, math.ceil(nlist / NPROBE_FRACTION))


def _chunks(features: np.ndarray):
    for start in range(0, features.shape[0], ADD_CHUNK):
        yield np.ascontiguousarray(features[start:start + ADD_CHUNK], dtype=np.float32)


def build_faiss_index(features: np.ndarray, kind: str, nlist: int | None = None, nprobe: int | None = None,
                      hnsw_m: int = HNSW_M, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(faiss index holding ``features``, its parameters) for ``kind`` in flat / ivf / hnsw (not auto)."""
    faiss = import_faiss()
    n, dim = features.shape
    if kind == "flat":
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "ivf":
        nlist = nlist or default_nlist(n)
        if not 1 <= nlist <= n:
            raise UserError(f"--nlist {nlist} must be between 1 and the gallery size {n}")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = np.sort(rng.choice(n, size=min(n, 64 * nlist), replace=False))  # k-means on a sample
        index.train(np.ascontiguousarray(features[sample], dtype=np.float32))
        index.nprobe = min(nprobe or default_nprobe(nlist), nlist)
        params = {"nlist": nlist, "nprobe": index.nprobe, "train_size": int(len(sample))}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        index.hnsw.efSearch = HNSW_EF_SEARCH
        params = {"M": hnsw_m, "efConstruction": HNSW_EF_CONSTRUCTION, "efSearch": HNSW_EF_SEARCH}
    else:
        raise UserError(f"unknown index kind '{kind}'; choose one of {', '.join(KINDS[1:])}")
    for chunk in _chunks(features):
        index.add(chunk)
    return index, params


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found_i & truth_i| / k (rows of ids; -1 = no result)."""
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) for f, t in zip(found, truth)]
    return float(np.mean(hits) / truth.shape[1]) if len(hits) else float("nan")


def measure_recall(index: Any, features: np.ndarray, k: int = 10, queries: int = 200, seed: int = 0) -> float:
    """recall@k of ``index`` against exact inner-product search, gallery rows as queries (themselves left out)."""
    n = features.shape[0]
    if n <= k + 1:
        return 1.0
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))
    q = np.ascontiguousarray(features[rows], dtype=np.float32)
    scores = np.full((len(rows), k + 1), -np.inf, dtype=np.float32)  # exact top k+1 by blocks over the gallery
    ids = np.full((len(rows), k + 1), -1, dtype=np.int64)
    for start in range(0, n, ADD_CHUNK):
        block = np.ascontiguousarray(features[start:start + ADD_CHUNK], dtype=np.float32)
        s = q @ block.T
        all_s = np.concatenate([scores, s], axis=1)
        all_i = np.concatenate([ids, np.arange(start, start + len(block))[None, :].repeat(len(rows), 0)], axis=1)
        top = np.argsort(-all_s, axis=1, kind="stable")[:, :k + 1]
        scores, ids = np.take_along_axis(all_s, top, 1), np.take_along_axis(all_i, top, 1)
    _, found = index.search(q, k + 1)

    def without_self(table: np.ndarray) -> np.ndarray:
        return np.stack([[j for j in row if j != r][:k] for row, r in zip(table, rows)])

    return recall_at_k(without_self(found), without_self(ids))


@dataclass
class GalleryIndex:
    """A searchable gallery: the faiss index, the gallery's records and what the index was built from."""

    index: Any
    records: list[ImageRecord]
    meta: dict[str, Any]

    @property
    def image_root(self) -> Path:
        return Path(self.meta["features"]["image_root"])

    @property
    def model(self) -> dict[str, Any]:
        """Identity of the model whose features the gallery holds (see retrieval.model)."""
        return self.meta["features"]["model"]

    def __len__(self) -> int:
        return len(self.records)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(cosine similarities, gallery rows), each Q x min(k, N), best first."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if queries.shape[1] != self.index.d:
            raise UserError(f"query features have dimension {queries.shape[1]}, the index {self.index.d}: "
                            "extract them with the model the gallery was extracted with")
        if k < 1:
            raise UserError(f"--top-k must be at least 1, got {k}")
        return self.index.search(queries, min(k, len(self)))

    @classmethod
    def load(cls, folder: str | Path) -> "GalleryIndex":
        folder = Path(folder)
        if not (folder / META).is_file():
            raise UserError(f"{folder} is not a gallery index (no {META}); build one with "
                            "'hardreid index --features FEATS_DIR --output INDEX_DIR'")
        faiss = import_faiss()
        try:
            meta = json.loads((folder / META).read_text())
            index = faiss.read_index(str(folder / INDEX_FILE))
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot read the index in {folder}: {exc}") from None
        if "nprobe" in meta.get("params", {}):
            index.nprobe = meta["params"]["nprobe"]
        if "efSearch" in meta.get("params", {}):
            index.hnsw.efSearch = meta["params"]["efSearch"]
        records = read_records(folder / IMAGES)
        if len(records) != index.ntotal:
            raise UserError(f"{folder}: the index holds {index.ntotal} features but {IMAGES} lists {len(records)} images")
        return cls(index, records, meta)


def _earlier_index(folder: Path) -> list[str]:
    """The entries of an index written before output markers existed (its meta file names the kind)."""
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return []
    if isinstance(meta, dict) and "kind" in meta and (folder / INDEX_FILE).is_file():
        return [name for name in (INDEX_FILE, IMAGES, META) if (folder / name).exists()]
    return []


def build_index(features: str | Path | FeatureSet, output: str | Path, kind: str = "auto", nlist: int | None = None,
                nprobe: int | None = None, recall_queries: int = 200, seed: int = 0, overwrite: bool = False) -> GalleryIndex:
    """Build and save an index of an extracted feature set (see the module docstring). ``output`` is a new folder,
    an earlier index's, or (with ``overwrite``) any folder that is not the feature set's own."""
    inputs = {} if isinstance(features, FeatureSet) else {"--features": features}
    fs = features if isinstance(features, FeatureSet) else load_features(features)
    n, dim = fs.features.shape
    if n == 0:
        raise UserError("the feature set is empty: nothing to index")
    check_feature_values(fs)
    folder = claim_folder(output, "index", inputs=inputs, overwrite=overwrite, earlier_version=_earlier_index)
    folder.record(INDEX_FILE, IMAGES, META)
    chosen = choose_kind(kind, n, dim)
    start = time.perf_counter()
    index, params = build_faiss_index(fs.features, chosen, nlist, nprobe, seed=seed)
    seconds = time.perf_counter() - start
    meta = {"kind": chosen, "requested": kind, "params": params, "num_gallery": n, "dim": dim,
            "build_seconds": round(seconds, 3), "features": fs.manifest}
    if chosen != "flat":
        meta["recall_at_10"] = measure_recall(index, fs.features, 10, recall_queries, seed)
        meta["recall_queries"] = min(recall_queries, n)
    output = folder.path
    faiss = import_faiss()
    atomic_write_path(output / INDEX_FILE, lambda tmp: faiss.write_index(index, str(tmp)))
    write_records(fs.records, output / IMAGES)
    atomic_write_json(output / META, meta)
    return GalleryIndex(index, fs.records, meta)
