"""Search a gallery index with query images or a features folder; top-k hits as JSON / CSV.

Scores are cosine similarities of L2-normalised features, in [-1, 1],
higher = more similar. A hit is a **match** when the query's and the hit's
identities are both known from Market-style names (``0002_c1...``) and equal,
**wrong** when both are known and differ, and unknown otherwise (junk, -1, is
unknown).

Query images of a checkpoint trained with ``model.camera_bn`` take camera-based
BatchNorm's test-time step on the query images themselves (each camera's
statistics from that camera's query images, as the official evaluator treats the
query split); a camera with a single query image, and images without a camera in
their name, use the model's global statistics (a warning says so).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..data.transforms import eval_transform
from ..data.types import Sample
from ..errors import UserError
from ..evaluation.camera_bn import extract_features_camera_bn
from ..evaluation.features import extract_features
from .features import FeatureSet, ImageRecord, camera_samples, describe_image, list_images, load_features
from .index import GalleryIndex
from .model import FeatureModel, identity_differences
from ..files import atomic_write_json, atomic_write_text


@dataclass
class Hit:
    rank: int  # 1-based
    row: int  # gallery row (line of images.jsonl)
    path: str  # relative to the gallery's image root
    score: float  # cosine similarity
    camera: int | None
    pid: int | None
    match: bool | None  # None when either identity is unknown


@dataclass
class QueryResult:
    query: str  # path of the query image (relative to the query root)
    camera: int | None
    pid: int | None
    hits: list[Hit] = field(default_factory=list)

    @property
    def known(self) -> bool:
        return any(h.match is not None for h in self.hits)


@dataclass
class Queries:
    """Query features with their records and the folder the record paths are relative to."""

    features: np.ndarray
    records: list[ImageRecord]
    root: Path
    model: dict[str, Any]  # identity of the model that made the features


def _known(pid: int | None) -> bool:
    return pid is not None and pid >= 0


def is_match(query_pid: int | None, hit_pid: int | None) -> bool | None:
    return (query_pid == hit_pid) if _known(query_pid) and _known(hit_pid) else None


def queries_from_images(fm: FeatureModel, path: str | Path, batch_size: int = 128, workers: int = 2,
                        device: torch.device | str = "cpu") -> Queries:
    """Features of one query image or of every image under a folder (held in memory: queries are few)."""
    root, paths = list_images(path)
    model, transform = fm.model.to(device), eval_transform(fm.cfg.data)
    if model.camera_bn_images is None:
        feats = extract_features(model, [Sample(str(root / p), -1, 0) for p in paths], transform, batch_size, workers,
                                 device, flip=fm.cfg.eval.flip, desc="query features")
    else:  # camera-based BatchNorm: each camera's statistics from the query images of that camera (module docstring)
        feats = extract_features_camera_bn(model, camera_samples(root, paths), transform, batch_size, workers, device,
                                           fm.cfg.eval.flip, model.camera_bn_images, "query features")
    return Queries(feats.numpy(), [describe_image(p) for p in paths], root, fm.identity())


def queries_from_features(folder: str | Path | FeatureSet) -> Queries:
    fs = folder if isinstance(folder, FeatureSet) else load_features(folder)
    return Queries(np.asarray(fs.features), fs.records, fs.image_root, fs.model)


def check_same_model(queries: Queries, index: GalleryIndex) -> None:
    """Query and gallery features must come from the same model and settings."""
    diffs = identity_differences(index.model, queries.model)
    if diffs:
        raise UserError("the query features come from another model or other settings than the gallery's "
                        f"(gallery vs query: {'; '.join(diffs[:4])}). Use the checkpoint and options the gallery "
                        "was extracted with (see its manifest.json)")


def search_gallery(index: GalleryIndex, queries: Queries, k: int = 10, block: int = 1024) -> list[QueryResult]:
    """Top-``k`` gallery hits of every query, best first."""
    check_same_model(queries, index)
    results = []
    for start in range(0, len(queries.records), block):
        scores, rows = index.search(queries.features[start:start + block], k)
        for record, s_row, g_row in zip(queries.records[start:start + block], scores, rows):
            result = QueryResult(record.path, record.camera, record.pid)
            for rank, (score, g) in enumerate(((s, g) for s, g in zip(s_row, g_row) if g >= 0), 1):
                hit = index.records[int(g)]
                result.hits.append(Hit(rank, int(g), hit.path, float(score), hit.camera, hit.pid,
                                       is_match(record.pid, hit.pid)))
            results.append(result)
    return results


def write_json(results: Sequence[QueryResult], path: str | Path, index: GalleryIndex, queries: Queries) -> Path:
    """``{"query_root", "gallery_root", "score": "cosine", "results": [{query, camera, pid, hits: [...]}]}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"query_root": str(queries.root), "gallery_root": str(index.image_root), "score": "cosine similarity",
               "results": [{**{k: v for k, v in asdict(r).items() if k != "hits"}, "hits": [asdict(h) for h in r.hits]}
                           for r in results]}
    atomic_write_json(path, payload)
    return path


def write_csv(results: Sequence[QueryResult], path: str | Path) -> Path:
    """One line per (query, hit): query, rank, gallery, score, gallery camera and pid, match."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["query", "rank", "gallery", "score", "camera", "pid", "match"])
    for r in results:
        for h in r.hits:
            writer.writerow([csv_cell(r.query), h.rank, csv_cell(h.path), f"{h.score:.6f}", _blank(h.camera),
                             _blank(h.pid), "" if h.match is None else int(h.match)])
    atomic_write_text(path, buffer.getvalue())
    return path


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A text cell that a spreadsheet shows as text, never runs as a formula (OWASP CSV injection): a cell that
    starts with ``= + - @``, a tab or a carriage return gets a leading apostrophe."""
    return "'" + text if text.startswith(_FORMULA_START) else text


def _blank(value: Any) -> Any:
    return "" if value is None else value
