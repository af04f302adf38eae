"""Pack a Market-layout data set into a compact copy under a size cap, for a machine that gets only the repository.

Every image under SRC is resized to the training size (bicubic, as the loaders resize) and written as a JPEG
with the same relative path and name (so names, identities and cameras are unchanged, and the loaders read the
copy as they read the original). The quality starts at ``--quality`` and goes down in steps of 5 to
``--min-quality``; when even that does not fit under ``--cap-mb``, the size is scaled by 7/8 and the qualities
are tried again. Choices are made on a sample of the images, then checked on the whole set. The copy is written
next to DEST and renamed into place at the end, with ``PACKED.json`` (source, size, quality, bytes, counts).

Example (the device run's data, in the repository-ignored ``device_data/``)::

    python benchmarks/pack_data.py ../shared/data/cuhk03 device_data/cuhk03 --cap-mb 32
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

common.repo_src_on_path()

from PIL import Image  # noqa: E402

from hardreid.data.images import is_image_name, read_image  # noqa: E402

QUALITY_STEP = 5
SCALE_STEP = 7 / 8
SAMPLE = 400
MARGIN = 0.97  # a sample's estimate must fit under this fraction of the cap


def image_files(root: Path) -> list[Path]:
    """Relative paths of every image under ``root`` (sorted)."""
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file() and is_image_name(p.name))


def encode(path: Path, size: tuple[int, int], quality: int) -> bytes:
    """``path`` resized to ``size`` (height, width), bicubic as the loaders, as JPEG bytes at ``quality``."""
    image = read_image(path).resize((size[1], size[0]), Image.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def _encode_to(job: tuple[Path, Path, tuple[int, int], int]) -> int:
    source, target, size, quality = job
    data = encode(source, size, quality)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return len(data)


def candidates(height: int, width: int, quality: int, min_quality: int, min_height: int):
    """(size, quality) in the order they are tried: qualities down at each size, then a smaller size.

    The requested size is always tried; ``min_height`` only bounds the shrinking (a training size below it, e.g.
    64x32, is not refused).
    """
    scale = 1.0
    while True:
        size = (max(4, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2))
        if size[0] < min_height and scale < 1.0:
            return
        for q in range(quality, min_quality - 1, -QUALITY_STEP):
            yield size, q
        scale *= SCALE_STEP


def choose(root: Path, files: list[Path], cap_bytes: int, height: int, width: int, quality: int, min_quality: int,
           min_height: int, skip: int = 0) -> tuple[tuple[int, int], int, float]:
    """The first candidate (after ``skip`` of them) whose estimate from a sample fits under MARGIN x the cap."""
    step = max(1, len(files) // SAMPLE)
    sample = files[::step]
    for i, (size, q) in enumerate(candidates(height, width, quality, min_quality, min_height)):
        if i < skip:
            continue
        estimate = sum(len(encode(root / f, size, q)) for f in sample) / len(sample) * len(files)
        if estimate <= MARGIN * cap_bytes:
            return size, q, estimate
    raise SystemExit(f"pack_data: {len(files)} images do not fit in {cap_bytes / 2**20:.1f} MiB even at "
                     f"quality {min_quality} and height {min(min_height, height)}: raise --cap-mb or lower --min-quality / "
                     "--min-height")


def pack(source: Path, dest: Path, cap_mb: float, height: int, width: int, quality: int = 85, min_quality: int = 60,
         min_height: int = 96, workers: int | None = None, force: bool = False) -> dict[str, Any]:
    """Pack ``source`` into ``dest`` (see the module docstring); returns what PACKED.json holds."""
    source, dest = source.resolve(), dest.resolve()
    if not source.is_dir():
        raise SystemExit(f"pack_data: {source} is not a folder")
    if dest.exists() and not force:
        raise SystemExit(f"pack_data: {dest} exists; pass --force to replace it")
    if source == dest or source in dest.parents:
        raise SystemExit(f"pack_data: the destination {dest} must not be inside the source {source}")
    files = image_files(source)
    if not files:
        raise SystemExit(f"pack_data: no images under {source}")
    start = time.perf_counter()
    cap = int(cap_mb * 2**20)
    original = sum((source / f).stat().st_size for f in files)
    dest.parent.mkdir(parents=True, exist_ok=True)
    skip = 0
    while True:
        size, q, estimate = choose(source, files, cap, height, width, quality, min_quality, min_height, skip)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        jobs = [(source / f, tmp / f, size, q) for f in files]
        if workers == 1:
            total = sum(map(_encode_to, jobs))
        else:
            with ProcessPoolExecutor(max_workers=workers or os.cpu_count()) as pool:
                total = sum(pool.map(_encode_to, jobs, chunksize=64))
        if total <= cap:
            break
        shutil.rmtree(tmp)  # the sample underestimated: the next candidate
        skip = list(candidates(height, width, quality, min_quality, min_height)).index((size, q)) + 1
    info = {"source": str(source), "images": len(files), "height": size[0], "width": size[1], "quality": q,
            "bytes": total, "mib": round(total / 2**20, 2), "cap_mib": cap_mb, "source_mib": round(original / 2**20, 2),
            "estimate_mib": round(estimate / 2**20, 2), "seconds": round(time.perf_counter() - start, 1)}
    (tmp / "PACKED.json").write_text(json.dumps(info, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return info


def compare(original: Path, packed: Path, weights: str, height: int = 128, width: int = 64,
            backbone: str = "mobilenet_v2") -> dict[str, Any]:
    """Query + gallery features of ``backbone`` (from ``weights``) on both copies: cosine of each image's two
    features (for scale: the cosine of an original image and its mirror image), and the mAP / top-1 of each
    copy (Market-1501 protocol)."""
    import torch
    from torchvision import transforms as T

    from hardreid.config import DataConfig
    from hardreid.data.datasets import load_dataset
    from hardreid.data.transforms import eval_transform
    from hardreid.evaluation.features import extract_features
    from hardreid.evaluation.pipeline import score_distances, squared_distance
    from hardreid.models import build_model

    model = build_model(backbone, weights=weights, last_stride=1).eval()
    transform = eval_transform(DataConfig(height=height, width=width))
    out: dict[str, Any] = {"backbone": backbone, "size": f"{height}x{width}"}
    features = {}
    for name, root in (("original", original), ("packed", packed)):
        data = load_dataset("market", root)
        q = extract_features(model, data.query, transform, batch_size=64, workers=0)
        g = extract_features(model, data.gallery, transform, batch_size=64, workers=0)
        result = score_distances(squared_distance(q, g), data)
        out[name] = {"mAP": round(result.mAP, 2), "top1": round(float(result.cmc[0]), 2)}
        features[name] = torch.cat([q, g])
    cos = (features["original"] * features["packed"]).sum(1)
    out["feature_cosine_mean"] = round(float(cos.mean()), 4)
    out["feature_cosine_min"] = round(float(cos.min()), 4)
    data = load_dataset("market", original)
    mirror = T.Compose([T.RandomHorizontalFlip(p=1.0), transform])
    flipped = extract_features(model, data.query + data.gallery, mirror, batch_size=64, workers=0)
    out["mirror_cosine_mean"] = round(float((features["original"] * flipped).sum(1).mean()), 4)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="example:\n  python benchmarks/pack_data.py ../shared/data/cuhk03 device_data/cuhk03")
    ap.add_argument("source", type=Path, help="a data set in Market-1501 layout (any folder of images)")
    ap.add_argument("dest", type=Path, help="the packed copy (e.g. device_data/NAME: ignored by git)")
    ap.add_argument("--cap-mb", type=float, default=32.0, help="size cap of the copy in MiB (default 32)")
    ap.add_argument("--size", default="256x128", help="training size HxW to resize to (default 256x128)")
    ap.add_argument("--quality", type=int, default=85, help="first JPEG quality tried (default 85)")
    ap.add_argument("--min-quality", type=int, default=60, help="lowest quality before the size shrinks (default 60)")
    ap.add_argument("--min-height", type=int, default=96, help="smallest height the size may shrink to (default 96; the --size itself is always tried)")
    ap.add_argument("--workers", type=int, default=None, help="encoding processes (default: all cores)")
    ap.add_argument("--force", action="store_true", help="replace an existing DEST")
    ap.add_argument("--check", metavar="WEIGHTS", help="then compare both copies with MobileNetV2 from WEIGHTS at "
                    "128x64 (feature cosine per image, mAP of each); written into PACKED.json")
    args = ap.parse_args(argv)
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"pack_data: --size must look like 256x128, not {args.size!r}") from None
    if not 1 <= args.min_quality <= args.quality <= 95:
        raise SystemExit("pack_data: need 1 <= --min-quality <= --quality <= 95")
    info = pack(args.source, args.dest, args.cap_mb, height, width, args.quality, args.min_quality, args.min_height,
                args.workers, args.force)
    print(f"packed {info['images']} images of {args.source} ({info['source_mib']} MiB) into {args.dest}: "
          f"{info['mib']} MiB (cap {info['cap_mib']}), {info['height']}x{info['width']} JPEG quality "
          f"{info['quality']}, {info['seconds']} s")
    if args.check:
        info["check"] = check = compare(args.source, args.dest, args.check)
        (args.dest / "PACKED.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"check ({check['backbone']} {check['size']}): feature cosine original vs packed mean "
              f"{check['feature_cosine_mean']}, min {check['feature_cosine_min']} (original vs its mirror image: "
              f"{check['mirror_cosine_mean']}); mAP {check['original']['mAP']} -> "
              f"{check['packed']['mAP']}, top-1 {check['original']['top1']} -> {check['packed']['top1']}")
    return info


if __name__ == "__main__":
    main()
