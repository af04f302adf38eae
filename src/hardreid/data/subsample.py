"""Few images per identity from a real data set: ``hardreid datasets subsample SRC DST --max-per-id K``.

Writes a Market-1501-layout copy of a Market-layout data set (``market1501``,
``dukemtmc``, ``market``; e.g. ~/data/cuhk03) that keeps at most K
training images of every identity and the query and gallery splits unchanged
(every image file of ``query/`` and ``bounding_box_test/``).  Files keep their
names and are hard links where the file system allows it, else symbolic links,
else copies; the source is never modified.

Which training images stay: per identity, the cameras in a random order and
each camera's images in a random order (``numpy.random.default_rng([seed,
identity])``), then one image per camera in turn until K are taken -- so the
kept images are spread over the identity's cameras as evenly as possible.
Junk training images (identity -1) and names that do not parse are left out.
``subsample.json`` in DST records the source, K, the seed and the counts
(written first, marked complete last); a second call with the same arguments
does nothing, other arguments replace an earlier subsample in DST.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hardreid.data.datasets import MARKET_SPLITS, detect_format, load_dataset
from hardreid.data.images import is_image_name
from hardreid.data.types import Sample
from hardreid.errors import UserError
from ..files import atomic_write_json

__all__ = ["MARKET_LAYOUT_FORMATS", "SubsampleReport", "select_per_identity", "subsample_dataset"]

MARKET_LAYOUT_FORMATS = ("market1501", "dukemtmc", "market")
FORMAT_VERSION = 1
MARKER = "subsample.json"


@dataclass
class SubsampleReport:
    """What ``subsample_dataset`` wrote (or found already written)."""

    source: str
    output: str
    format: str
    max_per_id: int
    seed: int
    counts: dict[str, int]  # images per split in the output
    source_train: int  # training images (identities >= 0) in the source
    identities: int
    links: dict[str, int] = field(default_factory=dict)  # hard / symbolic / copy
    up_to_date: bool = False

    def text(self) -> str:
        done = "already up to date" if self.up_to_date else (
            "files: " + ", ".join(f"{v} {k}" for k, v in self.links.items() if v))
        return (f"{self.output}: at most {self.max_per_id} training images per identity (seed {self.seed}) from "
                f"{self.source} ({self.format}): train {self.counts['train']} of {self.source_train} images, "
                f"{self.identities} identities; query {self.counts['query']}, gallery {self.counts['gallery']} "
                f"unchanged; {done}")


def select_per_identity(samples: list[Sample], max_per_id: int, seed: int = 0) -> list[Sample]:
    """At most ``max_per_id`` samples of every identity, spread over its cameras (module doc), in input order."""
    if isinstance(max_per_id, bool) or not isinstance(max_per_id, int) or max_per_id < 1:
        raise UserError(f"--max-per-id must be a positive integer, got {max_per_id!r}")
    by_id: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, s in enumerate(samples):
        by_id[s.pid][s.camid].append(i)
    keep: list[int] = []
    for pid, cams in by_id.items():
        rng = np.random.default_rng([seed, pid])
        order = [sorted(cams)[j] for j in rng.permutation(len(cams))]
        queues = [[cams[c][j] for j in rng.permutation(len(cams[c]))] for c in order]
        taken: list[int] = []
        while len(taken) < max_per_id and any(queues):
            for q in queues:
                if q and len(taken) < max_per_id:
                    taken.append(q.pop(0))
        keep.extend(taken)
    return [samples[i] for i in sorted(keep)]


def _place(src: str, dst: Path, links: dict[str, int]) -> None:
    """Hard link, else symbolic link, else copy ``src`` to ``dst``; count which in ``links``."""
    try:
        os.link(src, dst)
        links["hard links"] += 1
        return
    except OSError:
        pass
    try:
        os.symlink(os.path.abspath(src), dst)
        links["symbolic links"] += 1
    except OSError:
        shutil.copy2(src, dst)
        links["copies"] += 1


def _recorded(out: Path) -> dict | None:
    try:
        return json.loads((out / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _prepare(out: Path, settings: dict) -> bool:
    """Make ``out`` ready; True when it already holds this very subsample (nothing to do)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"cannot write the subsample to {out}: it is a file, expected a folder")
    if out.is_dir() and any(out.iterdir()):
        meta = _recorded(out)
        if meta is None:
            raise UserError(f"refusing to write into {out}: the folder is not empty and holds no {MARKER} of an "
                            "earlier subsample; choose a new or empty folder")
        if meta.get("settings") == settings and meta.get("complete") and all(
                (out / d).is_dir() and len([p for p in (out / d).iterdir() if is_image_name(p.name)]) == meta["counts"][split]
                for split, d in MARKET_SPLITS.items()):
            return True
        for d in MARKET_SPLITS.values():
            shutil.rmtree(out / d, ignore_errors=True)
        (out / MARKER).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return False


def subsample_dataset(source: str | Path, output: str | Path, max_per_id: int, seed: int = 0,
                      format: str = "auto") -> SubsampleReport:
    """Write the subsample of ``source`` to ``output`` (module doc) and describe it."""
    fmt = detect_format(source) if format == "auto" else format
    if fmt not in MARKET_LAYOUT_FORMATS:
        raise UserError(f"datasets subsample needs a data set in Market-1501 layout ({', '.join(MARKET_LAYOUT_FORMATS)}), "
                        f"got format {fmt!r} at {source}")
    dataset = load_dataset(fmt, source)
    base = Path(dataset.root).resolve()
    out = Path(output).resolve()
    if out == base or base in out.parents:
        raise UserError(f"the subsample {out} must not lie inside its source {base}")
    kept = select_per_identity(dataset.train, max_per_id, seed)
    settings = {"source": str(base), "format": fmt, "max_per_id": max_per_id, "seed": seed}
    report = SubsampleReport(str(base), str(out), fmt, max_per_id, seed, {}, len(dataset.train),
                             len({s.pid for s in kept}))
    if _prepare(out, settings):
        report.counts, report.up_to_date = _recorded(out)["counts"], True
        return report
    atomic_write_json(out / MARKER, {"format_version": FORMAT_VERSION, "settings": settings, "complete": False})
    links = {"hard links": 0, "symbolic links": 0, "copies": 0}
    files = {"train": [s.path for s in kept]}
    for split in ("query", "gallery"):
        folder = base / MARKET_SPLITS[split]
        files[split] = sorted(str(p) for p in folder.iterdir() if is_image_name(p.name))
    for split, paths in files.items():
        target = out / MARKET_SPLITS[split]
        target.mkdir()
        for path in paths:
            _place(path, target / os.path.basename(path), links)
    report.counts, report.links = {split: len(paths) for split, paths in files.items()}, links
    meta = {"format_version": FORMAT_VERSION, "settings": settings, "complete": True, "counts": report.counts,
            "source_train": report.source_train, "identities": report.identities, "links": links}
    atomic_write_json(out / MARKER, meta)
    return report
