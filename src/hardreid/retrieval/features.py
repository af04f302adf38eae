"""Features of any folder of images, in a documented file format, resumable and memory-bounded.

A features folder (``hardreid extract --output FEATS_DIR``) holds:

``features.npy``
    float32, N x D, one L2-normalised feature per image (row i = line i of
    ``images.jsonl``); the cosine similarity of two images is the dot product
    of their rows. Open it with ``numpy.load(path, mmap_mode="r")``.
``images.jsonl``
    one JSON object per line, in row order: ``path`` (relative to the image
    root, ``/``-separated), ``camera`` and ``pid`` (the camera number and
    identity when the file name has the Market-1501 form ``0002_c3s1_...``:
    camera 3, identity 2, -1 = junk; ``null`` otherwise).
``manifest.json``
    ``format`` (``hardreid-features-v1``), ``image_root`` (absolute),
    ``num_images``, ``dim``, ``images_sha256`` (of the sorted relative
    paths), ``model`` (backbone, feature dim, input height / width,
    normalisation mean / std, flip, the checkpoint or weights file and its
    SHA-256, and which weights were used: ``eval_model`` = the checkpoint's
    evaluated model such as an EMA teacher), ``hardreid_version``,
    ``created``.

Images are found recursively (``.jpg``, ``.jpeg``, ``.png``, ``.bmp``, any
case) and sorted by relative path. Extraction runs in shards of
``shard_size`` images, each written atomically to ``shards/NNNNN.npy`` next
to ``shards/plan.json``; an interrupted run started again with the same
model and images skips the finished shards. At the end the shards are joined
into ``features.npy`` one at a time (never more than one shard in memory)
and removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import _market_sample
from ..data.images import is_image_name
from ..data.transforms import eval_transform
from ..data.types import Sample
from ..errors import UserError
from ..evaluation.features import extract_features
from .model import FeatureModel, identity_differences

FORMAT = "hardreid-features-v1"
FEATURES, IMAGES, MANIFEST, SHARDS, PLAN = "features.npy", "images.jsonl", "manifest.json", "shards", "plan.json"


@dataclass(frozen=True)
class ImageRecord:
    """One row of a feature set: where the image is and what its name says."""

    path: str  # relative to the image root, '/'-separated
    camera: int | None  # camera number from a Market-style name (c3 -> 3), else None
    pid: int | None  # identity from a Market-style name (-1 = junk), else None


def describe_image(relative: str) -> ImageRecord:
    """The record of an image: camera and identity when its file name has the Market-1501 form."""
    sample, _ = _market_sample(relative)
    if sample is None:
        return ImageRecord(relative, None, None)
    return ImageRecord(relative, sample.camid + 1, sample.pid)


def list_images(path: str | Path) -> tuple[Path, list[str]]:
    """(image root, sorted relative paths) of a folder searched recursively, or of one image file."""
    path = Path(path).expanduser()
    if path.is_file():
        if not is_image_name(path.name):
            raise UserError(f"{path} is not an image (expected .jpg, .jpeg, .png or .bmp)")
        return path.parent.resolve(), [path.name]
    if not path.is_dir():
        raise UserError(f"image folder {path} does not exist")
    root = path.resolve()
    found = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(folder).relative_to(root)
        found += [(rel / name).as_posix() for name in files if is_image_name(name)]
    if not found:
        raise UserError(f"no images in {root} or its subfolders (expected .jpg, .jpeg, .png or .bmp files)")
    return root, sorted(found)


@dataclass
class FeatureSet:
    """Features and records of one extraction (see the module docstring for the files)."""

    features: np.ndarray  # N x D float32, memory-mapped from features.npy
    records: list[ImageRecord]
    manifest: dict[str, Any]

    @property
    def image_root(self) -> Path:
        return Path(self.manifest["image_root"])

    @property
    def model(self) -> dict[str, Any]:
        return self.manifest["model"]

    def image_path(self, row: int) -> Path:
        return self.image_root / self.records[row].path


def _sha_of_paths(paths: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(paths).encode()).hexdigest()


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def _write_json(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)


def write_records(records: Sequence[ImageRecord], path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as handle:
        for record in records:
            handle.write(json.dumps(asdict(record)) + "\n")
    os.replace(tmp, path)


def read_records(path: Path) -> list[ImageRecord]:
    try:
        with open(path) as handle:
            return [ImageRecord(**json.loads(line)) for line in handle if line.strip()]
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read {path}: {exc} (expected one JSON object per line with path, camera, pid)") from None


def load_features(folder: str | Path) -> FeatureSet:
    """The feature set in ``folder`` (written by :func:`extract_folder`), memory-mapped."""
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        hint = " (an unfinished extraction: run extract again to finish it)" if (folder / SHARDS).is_dir() else ""
        raise UserError(f"{folder} holds no extracted features: {manifest_path} is missing{hint}. "
                        "Make them with 'hardreid extract --images DIR --output FEATS_DIR'")
    manifest = _read_json(manifest_path)
    if manifest.get("format") != FORMAT:
        raise UserError(f"{manifest_path} is not a hardreid feature manifest (format {manifest.get('format')!r}, expected {FORMAT})")
    try:
        features = np.load(folder / FEATURES, mmap_mode="r")
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {folder / FEATURES}: {exc}") from None
    records = read_records(folder / IMAGES)
    if features.ndim != 2 or features.shape[0] != len(records) or features.dtype != np.float32:
        raise UserError(f"{folder}: features.npy is {features.dtype} {features.shape} but images.jsonl has "
                        f"{len(records)} lines; extract again with --overwrite")
    return FeatureSet(features, records, manifest)


def _plan(fm: FeatureModel, root: Path, paths: list[str], shard_size: int) -> dict[str, Any]:
    return {"format": FORMAT, "image_root": str(root), "num_images": len(paths), "images_sha256": _sha_of_paths(paths),
            "shard_size": shard_size, "model": fm.identity()}


def _plan_differences(old: dict[str, Any], new: dict[str, Any], complete: bool) -> list[str]:
    """What differs between an earlier extraction in the output folder and this one."""
    diffs = []
    if old.get("image_root") != new["image_root"]:
        diffs.append(f"image root {old.get('image_root')} vs {new['image_root']}")
    if old.get("images_sha256") != new["images_sha256"]:
        diffs.append(f"other image files ({old.get('num_images')} vs {new['num_images']} images)")
    if not complete and old.get("shard_size") != new["shard_size"]:
        diffs.append(f"shard size {old.get('shard_size')} vs {new['shard_size']}")
    return diffs + identity_differences(old.get("model", {}), new["model"])


def _prepare_output(output: Path, plan: dict[str, Any], overwrite: bool) -> str:
    """'done' when ``output`` already holds these features, else 'start' or 'resume' (clearing stale files)."""
    complete = (output / MANIFEST).is_file()
    previous = output / MANIFEST if complete else output / SHARDS / PLAN
    if previous.is_file() and not overwrite:
        diffs = _plan_differences(_read_json(previous), plan, complete)
        if not diffs:
            return "done" if complete else "resume"
        raise UserError(f"{output} already holds features of other images or another model ({'; '.join(diffs[:4])}). "
                        "Pass --overwrite to replace them, or choose another --output")
    for name in (MANIFEST, FEATURES, IMAGES):
        (output / name).unlink(missing_ok=True)
    shutil.rmtree(output / SHARDS, ignore_errors=True)
    return "start"


def _shard_path(output: Path, index: int) -> Path:
    return output / SHARDS / f"{index:05d}.npy"


def _save_atomic(array: np.ndarray, path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _join_shards(output: Path, num_shards: int, num_images: int, dim: int) -> None:
    """features.npy from the shards, one shard in memory at a time."""
    tmp = output / (FEATURES + ".tmp")
    joined = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num_images, dim))
    row = 0
    for index in range(num_shards):
        part = np.load(_shard_path(output, index))
        joined[row:row + len(part)] = part
        row += len(part)
    joined.flush()
    del joined
    if row != num_images:
        raise RuntimeError(f"shards hold {row} rows, expected {num_images}")
    os.replace(tmp, output / FEATURES)


def _shards(paths: list[str], shard_size: int) -> Iterator[tuple[int, list[str]]]:
    for index, start in enumerate(range(0, len(paths), shard_size)):
        yield index, paths[start:start + shard_size]


def extract_folder(fm: FeatureModel, images: str | Path, output: str | Path, *, batch_size: int = 128,
                   workers: int = 2, device: torch.device | str = "cpu", shard_size: int = 4096,
                   overwrite: bool = False, progress: bool = True) -> FeatureSet:
    """Extract features of every image under ``images`` into ``output`` (format: module docstring).

    Re-running on the same images with the same model resumes an interrupted
    extraction (or returns at once when it is complete); other images or
    another model in ``output`` are an error unless ``overwrite``.
    """
    from ..version import __version__

    if shard_size < 1 or batch_size < 1:
        raise UserError(f"shard size and batch size must be positive, got {shard_size} and {batch_size}")
    root, paths = list_images(images)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    plan = _plan(fm, root, paths, shard_size)
    state = _prepare_output(output, plan, overwrite)
    if state == "done":
        return load_features(output)
    (output / SHARDS).mkdir(exist_ok=True)
    _write_json(output / SHARDS / PLAN, plan)
    records = [describe_image(p) for p in paths]
    transform = eval_transform(fm.cfg.data)
    model = fm.model.to(device)
    shards = list(_shards(paths, shard_size))
    done = sum(len(part) for index, part in shards if _shard_path(output, index).is_file())
    bar = tqdm(total=len(paths), initial=done, desc="extract", unit="img", disable=not progress or None, smoothing=0.1)
    for index, part in shards:
        if _shard_path(output, index).is_file():
            continue
        samples = [Sample(str(root / p), -1, 0) for p in part]
        feats = extract_features(model, samples, transform, batch_size, workers, device, flip=fm.cfg.eval.flip,
                                 desc=f"shard {index + 1}/{len(shards)}")
        _save_atomic(feats.numpy().astype(np.float32, copy=False), _shard_path(output, index))
        bar.update(len(part))
    bar.close()
    write_records(records, output / IMAGES)
    _join_shards(output, len(shards), len(paths), int(fm.model.feat_dim))
    _write_json(output / MANIFEST, {**plan, "dim": int(fm.model.feat_dim), "hardreid_version": __version__,
                                    "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    shutil.rmtree(output / SHARDS, ignore_errors=True)
    return load_features(output)
