"""Diagnose a data set: split statistics and the problems that spoil training or evaluation."""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field

from hardreid.data.datasets import PathLike, detect_format, load_dataset
from hardreid.data.images import read_image
from hardreid.data.types import ReidDataset, Sample
from hardreid.errors import UserError

SPLITS = ("train", "query", "gallery")
EXAMPLES = 5


@dataclass
class SplitStats:
    """Counts of one split; identity fields are None when the split has no labels."""

    images: int
    identities: int | None
    cameras: int
    images_per_camera: dict[int, int]
    junk_images: int
    images_per_identity_min: int | None = None
    images_per_identity_median: float | None = None
    images_per_identity_max: int | None = None


@dataclass
class InspectReport:
    """Everything :func:`inspect_dataset` found; ``warnings`` holds one readable line per problem."""

    name: str
    root: str
    format: str
    has_train_labels: bool
    splits: dict[str, SplitStats]
    duplicates: list[list[str]] = field(default_factory=list)
    unmatched_queries: list[str] = field(default_factory=list)
    train_overlap: list[int] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        """Plain data (JSON-serialisable)."""
        data = asdict(self)
        for stats in data["splits"].values():
            stats["images_per_camera"] = {str(k): v for k, v in stats["images_per_camera"].items()}
        return data

    def text(self) -> str:
        """A human-readable report: a table, images per camera, then the warnings."""
        lines = [f"{self.name} at {self.root} (format {self.format})", _header()]
        lines += [_row(split, stats) for split, stats in self.splits.items()]
        lines.append("images per camera (0-based camera index):")
        lines += [f"  {split:<8}{_cameras(stats)}" for split, stats in self.splits.items() if stats.images]
        lines.append(f"warnings ({len(self.warnings)}):" if self.warnings else "no warnings")
        lines += [f"  - {w}".replace("\n", "\n    ") for w in self.warnings]
        return "\n".join(lines)


def _header() -> str:
    return f"  {'split':<8}{'images':>9}{'ids':>7}{'cams':>6}{'junk':>6}   images/id min/median/max"


def _row(split: str, s: SplitStats) -> str:
    ids = "-" if s.identities is None else s.identities
    per_id = "-"
    if s.images_per_identity_min is not None:
        per_id = f"{s.images_per_identity_min}/{s.images_per_identity_median:g}/{s.images_per_identity_max}"
    return f"  {split:<8}{s.images:>9}{ids!s:>7}{s.cameras:>6}{s.junk_images:>6}   {per_id}"


def _cameras(stats: SplitStats) -> str:
    return " ".join(f"{cam}:{n}" for cam, n in sorted(stats.images_per_camera.items()))


# ---------------------------------------------------------------- statistics


def split_stats(samples: list[Sample], labelled: bool = True) -> SplitStats:
    """Images, identities, cameras and images-per-identity of one split (pid -1 is not an identity)."""
    per_cam = Counter(s.camid for s in samples)
    junk = sum(1 for s in samples if s.pid == -1)
    stats = SplitStats(len(samples), None, len(per_cam), dict(sorted(per_cam.items())), junk if labelled else 0)
    per_id = sorted(Counter(s.pid for s in samples if s.pid >= 0).values())
    if labelled:
        stats.identities = len(per_id)
    if labelled and per_id:
        stats.images_per_identity_min = per_id[0]
        stats.images_per_identity_median = float(statistics.median(per_id))
        stats.images_per_identity_max = per_id[-1]
    return stats


# ---------------------------------------------------------------- checks


def find_duplicates(paths: list[str]) -> list[list[str]]:
    """Groups of files with identical bytes: same size first, then the sha1 of those."""
    by_size: dict[int, list[str]] = defaultdict(list)
    for path in paths:
        try:
            by_size[os.path.getsize(path)].append(path)
        except OSError:
            continue
    by_hash: dict[str, list[str]] = defaultdict(list)
    for same_size in by_size.values():
        if len(same_size) > 1:
            for path in same_size:
                by_hash[_sha1(path)].append(path)
    return sorted(sorted(group) for group in by_hash.values() if len(group) > 1)


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unmatched_queries(query: list[Sample], gallery: list[Sample]) -> list[Sample]:
    """Queries without a gallery image of the same identity in another camera (evaluation skips them)."""
    cams: dict[int, set[int]] = defaultdict(set)
    for s in gallery:
        cams[s.pid].add(s.camid)
    return [q for q in query if q.pid >= 0 and not (cams.get(q.pid, set()) - {q.camid})]


def train_overlap(dataset: ReidDataset) -> list[int]:
    """Identities (pid >= 0) found both in train and in query or gallery."""
    if not dataset.has_train_labels:
        return []
    test = {s.pid for s in dataset.query + dataset.gallery if s.pid >= 0}
    return sorted(test & {s.pid for s in dataset.train})


def unreadable_images(paths: list[str]) -> dict[str, str]:
    """Path -> error message of the images that :func:`read_image` cannot decode."""
    problems: dict[str, str] = {}
    for path in paths:
        try:
            read_image(path)
        except UserError as exc:
            problems[path] = str(exc)
    return problems


# ---------------------------------------------------------------- warnings


def _examples(items: list[str]) -> str:
    shown = "".join(f"\n  {item}" for item in items[:EXAMPLES])
    return shown + (f"\n  ... and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else "")


def _duplicate_warning(groups: list[list[str]], split_of: dict[str, str]) -> str:
    across = sum(1 for g in groups if len({split_of[p] for p in g}) > 1)
    shown = [" == ".join(g[:3]) + (" ..." if len(g) > 3 else "") for g in groups]
    return (
        f"{len(groups)} group(s) of identical image files ({sum(len(g) for g in groups)} files), "
        f"{across} of them across splits:{_examples(shown)}\nRemove the copies; copies across train and "
        "query/gallery leak test images into training."
    )


def _unmatched_warning(missing: list[Sample], query: list[Sample]) -> str:
    ids = sorted({q.pid for q in missing})
    return (
        f"{len(missing)} of {len(query)} query image(s) ({len(ids)} identities) have no gallery image of the "
        f"same identity in another camera; evaluation skips them:{_examples([q.path for q in missing])}"
    )


def _overlap_warning(pids: list[int]) -> str:
    shown = ", ".join(str(p) for p in pids[:10]) + (", ..." if len(pids) > 10 else "")
    return (
        f"{len(pids)} identities appear both in train and in query/gallery ({shown}); "
        "the standard protocols use disjoint identities."
    )


def _unreadable_warning(problems: list[str]) -> str:
    return f"{len(problems)} image(s) cannot be read:{_examples(problems)}"


# ---------------------------------------------------------------- entry point


def inspect_dataset(root: PathLike, format: str = "auto", verify_images: bool = False,
                    **options: object) -> InspectReport:
    """Load leniently and report statistics and problems (names that do not parse are reported, not raised)."""
    name = detect_format(root) if format == "auto" else format
    options.pop("strict", None)
    dataset = load_dataset(name, root, strict=False, **options)
    report = InspectReport(
        name=dataset.name, root=dataset.root, format=name, has_train_labels=dataset.has_train_labels,
        splits={split: _stats_of(dataset, split) for split in SPLITS}, warnings=list(dataset.warnings),
    )
    _run_checks(report, dataset, verify_images)
    return report


def _stats_of(dataset: ReidDataset, split: str) -> SplitStats:
    return split_stats(getattr(dataset, split), split != "train" or dataset.has_train_labels)


def _run_checks(report: InspectReport, dataset: ReidDataset, verify_images: bool) -> None:
    split_of = {s.path: split for split in SPLITS for s in getattr(dataset, split)}
    paths = sorted(split_of)
    report.duplicates = find_duplicates(paths)
    if report.duplicates:
        report.warnings.append(_duplicate_warning(report.duplicates, split_of))
    missing = unmatched_queries(dataset.query, dataset.gallery)
    report.unmatched_queries = [q.path for q in missing]
    if missing:
        report.warnings.append(_unmatched_warning(missing, dataset.query))
    report.train_overlap = train_overlap(dataset)
    if report.train_overlap:
        report.warnings.append(_overlap_warning(report.train_overlap))
    if verify_images:
        problems = unreadable_images(paths)
        report.unreadable = list(problems)
        if problems:
            report.warnings.append(_unreadable_warning(list(problems.values())))
