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

A checkpoint trained with ``model.camera_bn`` (camera-based BatchNorm) extracts
with its test-time step: each camera's BatchNorm statistics are first
recalibrated from up to ``model.camera_bn_images`` of that camera's images in
the whole folder (the camera from a Market-style name), then every shard is
extracted camera by camera with them; images without a camera in their name use
the model's global statistics (a warning says how many, once). The manifest's model
records ``camera_bn`` (the number of images, or null).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data.datasets import _market_sample
from ..data.images import is_image_name
from ..data.transforms import eval_transform
from ..data.types import Sample
from ..errors import UserError
from ..evaluation.camera_bn import camera_statistics, extract_with_camera_statistics, without_statistics_warning
from ..evaluation.features import extract_features
from .model import FeatureModel, identity_differences
from ..files import atomic_save_npy, atomic_write_json, atomic_write_path, atomic_write_text
from ..outputs import OutputFolder, claim_folder

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


def camera_samples(root: Path, paths: Sequence[str]) -> list[Sample]:
    """Samples of images under ``root`` with the camera of their Market-style name (camid 0-based; -1 without one)."""
    out = []
    for p in paths:
        camera = describe_image(p).camera
        out.append(Sample(str(root / p), -1, -1 if camera is None else camera - 1))
    return out


def list_images(path: str | Path) -> tuple[Path, list[str]]:
    """(image root, sorted relative paths) of a folder searched recursively, or of one image file."""
    path = Path(path).expanduser()
    if path.is_file():
        if not is_image_name(path.name):
            raise UserError(f"{path} is not an image (expected .jpg, .jpeg, .png or .bmp)")
        return path.parent.resolve(), [path.name]
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} is neither a folder nor a regular image file")
    if not path.is_dir():
        raise UserError(f"image folder {path} does not exist")
    root = path.resolve()
    found, special = [], []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = Path(folder).relative_to(root)
        for name in files:
            if is_image_name(name):
                (found if os.path.isfile(os.path.join(folder, name)) else special).append((rel / name).as_posix())
    if special:  # a FIFO named like an image would block the reader forever
        print(f"warning: skipped {len(special)} entr{'y' if len(special) == 1 else 'ies'} under {root} named like images "
              f"that are not regular files (e.g. {sorted(special)[0]}: a pipe, socket, device or broken link)",
              file=sys.stderr)
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
    atomic_write_json(path, value)


def write_records(records: Sequence[ImageRecord], path: Path) -> None:
    atomic_write_text(path, "".join(json.dumps(asdict(record)) + "\n" for record in records))


def read_records(path: Path) -> list[ImageRecord]:
    """The records of ``images.jsonl``; every path must be relative and stay inside the image root."""
    try:
        with open(path) as handle:
            records = [ImageRecord(**json.loads(line)) for line in handle if line.strip()]
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"cannot read {path}: {exc} (expected one JSON object per line with path, camera, pid)") from None
    for number, record in enumerate(records, 1):
        parts = PurePosixPath(str(record.path)).parts
        if not isinstance(record.path, str) or not parts or PurePosixPath(record.path).is_absolute() or ".." in parts \
                or "\\" in record.path:
            raise UserError(f"{path} record {number}: path {str(record.path)[:120]!r} leaves the image root (it must be "
                            "relative, without '..'): extract again, or fix the file")
    return records


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
    for key, value in (("num_images", len(records)), ("dim", features.shape[1])):
        if key in manifest and manifest[key] != value:
            raise UserError(f"{folder}: {MANIFEST} says {key} {manifest[key]} but the files hold {value}; extract again "
                            "with --overwrite")
    return FeatureSet(features, records, manifest)


UNIT_NORM_TOLERANCE = 1e-3  # float32 normalisation leaves |norm - 1| ~ 1e-7; more means the vectors were changed


def check_feature_values(fs: FeatureSet, chunk_rows: int = 65536) -> None:
    """Every feature is finite and of unit length (extract L2-normalises them; the index scores cosine
    similarity as an inner product). Reads the memory-mapped file one chunk at a time."""
    for start in range(0, len(fs.features), chunk_rows):
        block = np.asarray(fs.features[start:start + chunk_rows], dtype=np.float64)
        bad = ~np.isfinite(block).all(axis=1)
        if bad.any():
            row = start + int(np.flatnonzero(bad)[0])
            raise UserError(f"feature row {row} ({fs.records[row].path}) is not finite, and {int(bad.sum())} rows of this "
                            "chunk are not: extract these images again with --overwrite")
        norms = np.sqrt((block * block).sum(axis=1))
        off = np.abs(norms - 1) > UNIT_NORM_TOLERANCE
        if off.any():
            row = start + int(np.flatnonzero(off)[0])
            raise UserError(f"feature row {row} ({fs.records[row].path}) has length {norms[row - start]:.4g}, not 1: "
                            "features must be the L2-normalised vectors extract writes; extract again with --overwrite")


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


def _earlier_extraction(folder: Path) -> list[str]:
    """The entries of an extraction written before output markers existed (recognised by its manifest or plan)."""
    for path in (folder / MANIFEST, folder / SHARDS / PLAN):
        try:
            if path.is_file() and json.loads(path.read_text()).get("format") == FORMAT:
                return [name for name in (MANIFEST, FEATURES, IMAGES, SHARDS) if (folder / name).exists()]
        except (OSError, ValueError, AttributeError):
            pass
    return []


def _prepare_output(folder: OutputFolder, plan: dict[str, Any], overwrite: bool) -> str:
    """'done' when the folder already holds these features, else 'start' or 'resume'. Stale files are deleted only
    when the folder's marker lists them as extract's own; anything else of those names is refused."""
    output = folder.path
    complete = folder.owns(MANIFEST) and (output / MANIFEST).is_file()
    previous = output / MANIFEST if complete else output / SHARDS / PLAN
    if folder.owns(MANIFEST if complete else SHARDS) and previous.is_file() and not overwrite:
        diffs = _plan_differences(_read_json(previous), plan, complete)
        if not diffs:
            return "done" if complete else "resume"
        raise UserError(f"{output} already holds features of other images or another model ({'; '.join(diffs[:4])}). "
                        "Pass --overwrite to replace them, or choose another --output")
    for name in (MANIFEST, FEATURES, IMAGES, SHARDS):
        folder.remove(name)
    if folder.unowned(SHARDS):
        raise UserError(f"{output / SHARDS} exists and was not written by 'hardreid extract', which needs that name for "
                        "its work files: move it away or choose another --output")
    return "start"


def _shard_path(output: Path, index: int) -> Path:
    return output / SHARDS / f"{index:05d}.npy"


def _save_atomic(array: np.ndarray, path: Path) -> None:
    atomic_save_npy(path, array)


def _shard_is_complete(path: Path, rows: int, dim: int) -> bool:
    """A finished shard of ``rows`` x ``dim`` float32 features; a damaged one (a disk error, a foreign file) is
    deleted so that it is computed again."""
    if not path.is_file():
        return False
    try:
        shard = np.load(path, mmap_mode="r")
        if shard.shape == (rows, dim) and shard.dtype == np.float32:
            return True
    except (OSError, ValueError):
        pass
    print(f"warning: {path} is damaged or incomplete: extracting it again", file=sys.stderr)
    path.unlink()
    return False


def _join_shards(output: Path, num_shards: int, num_images: int, dim: int) -> None:
    """features.npy from the shards, one shard in memory at a time."""
    def write(tmp: Path) -> None:
        joined = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(num_images, dim))
        row = 0
        for index in range(num_shards):
            part = np.load(_shard_path(output, index))
            joined[row:row + len(part)] = part
            row += len(part)
        joined.flush()
        del joined
        if row != num_images:
            raise UserError(f"the shards in {output / SHARDS} hold {row} rows, expected {num_images}: run extract again")

    atomic_write_path(output / FEATURES, write)


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
    folder = claim_folder(output, "extract", inputs={"--images": root}, overwrite=overwrite,
                          earlier_version=_earlier_extraction, work_names=(SHARDS,))
    output = folder.path
    plan = _plan(fm, root, paths, shard_size)
    state = _prepare_output(folder, plan, overwrite)
    if state == "done":
        return load_features(output)
    folder.record(SHARDS, IMAGES, FEATURES, MANIFEST)  # before they exist: a rerun may clean up after a crash
    (output / SHARDS).mkdir(exist_ok=True)
    _write_json(output / SHARDS / PLAN, plan)
    records = [describe_image(p) for p in paths]
    transform = eval_transform(fm.cfg.data)
    model = fm.model.to(device)
    shards = list(_shards(paths, shard_size))
    dim = int(fm.model.feat_dim)
    finished = {index for index, part in shards if _shard_is_complete(_shard_path(output, index), len(part), dim)}
    done = sum(len(part) for index, part in shards if index in finished)
    statistics = None  # camera-based BatchNorm: every camera's statistics, from the whole folder (module docstring)
    if fm.model.camera_bn_images is not None and len(finished) < len(shards):
        everything = camera_samples(root, paths)
        statistics = camera_statistics(model, everything, transform, batch_size, workers, device,
                                       fm.model.camera_bn_images)
        alone = sum(s.camid not in statistics for s in everything)
        if alone:  # said once for the folder, not once per shard
            without_statistics_warning(alone, len(everything))
    bar = tqdm(total=len(paths), initial=done, desc="extract", unit="img", disable=not progress or None, smoothing=0.1)
    for index, part in shards:
        if index in finished:
            continue
        desc = f"shard {index + 1}/{len(shards)}"
        if statistics is None:
            feats = extract_features(model, [Sample(str(root / p), -1, 0) for p in part], transform, batch_size,
                                     workers, device, flip=fm.cfg.eval.flip, desc=desc)
        else:
            feats = extract_with_camera_statistics(model, camera_samples(root, part), statistics, transform,
                                                   batch_size, workers, device, fm.cfg.eval.flip, desc, quiet=True)
        _save_atomic(feats.numpy().astype(np.float32, copy=False), _shard_path(output, index))
        bar.update(len(part))
    bar.close()
    write_records(records, output / IMAGES)
    _join_shards(output, len(shards), len(paths), int(fm.model.feat_dim))
    _write_json(output / MANIFEST, {**plan, "dim": int(fm.model.feat_dim), "hardreid_version": __version__,
                                    "created": time.strftime("%Y-%m-%d %H:%M:%S")})
    folder.remove(SHARDS)
    return load_features(output)
