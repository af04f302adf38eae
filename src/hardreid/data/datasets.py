"""Loaders for the standard re-ID data sets and for plain folders of images.

Every loader returns a :class:`ReidDataset` with 0-based camera ids and
samples sorted by path. Images are never opened while loading; only file
names (and, for MSMT17, the list files) are read.

``strict=False`` (used by :mod:`hardreid.data.inspect`) turns problems that
would otherwise raise (names that do not parse, empty splits, missing listed
files) into entries of ``dataset.warnings`` and skips the offending files.
"""

from __future__ import annotations

import inspect
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from hardreid.data.images import IMAGE_EXTENSIONS, is_image_name
from hardreid.data.types import ReidDataset, Sample
from hardreid.errors import UserError

PathLike = str | os.PathLike[str]

MARKET_PATTERN = re.compile(r"([-\d]+)_c(\d+)")  # identity, camera (c12 is camera 12, not 1)
MARKET_SPLITS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
MARKET_SUBDIRS = ("Market-1501-v15.09.15", "Market-1501")
DUKE_SUBDIRS = ("DukeMTMC-reID",)
CUHK03NP_SUBDIRS = ("cuhk03-np",)
CUHK03NP_SUBSETS = ("detected", "labeled")
MSMT_SUBDIRS = ("MSMT17_V2", "MSMT17_V1", "MSMT17")
MSMT_VERSIONS = {"V2": ("mask_train_v2", "mask_test_v2"), "V1": ("train", "test")}
MSMT_LISTS = {"train": "list_train.txt", "val": "list_val.txt", "query": "list_query.txt",
              "gallery": "list_gallery.txt"}
MAX_LISTED = 5


@dataclass
class _Log:
    """Warnings gathered while loading; problems raise unless ``strict`` is False."""

    strict: bool = True
    warnings: list[str] = field(default_factory=list)

    def problem(self, message: str) -> None:
        if self.strict:
            raise UserError(message)
        self.warnings.append(message)


# ---------------------------------------------------------------- helpers


def _listing(items: list[str]) -> str:
    """Up to MAX_LISTED items, one per line, plus how many were left out."""
    shown = "".join(f"\n  {item}" for item in items[:MAX_LISTED])
    more = len(items) - MAX_LISTED
    return shown + (f"\n  ... and {more} more" if more > 0 else "")


def _check_root(root: PathLike) -> str:
    """Absolute path of ``root``; raise when it is not an existing folder."""
    path = os.path.abspath(os.fspath(root))
    if os.path.islink(path) and not os.path.exists(path):
        raise UserError(f"data set folder {path} is a symbolic link that leads nowhere (broken, or a loop): "
                        "point it at the folder with the images.")
    if not os.path.exists(path):
        raise UserError(f"data set folder {path} does not exist: check the path (expected a folder with the images).")
    if not os.path.isdir(path):
        raise UserError(f"data set root {path} is a file, expected a folder: pass the folder that holds the data set.")
    return path


def _find_base(root: str, subdirs: tuple[str, ...], markers: tuple[str, ...]) -> str | None:
    """``root`` when it contains one of ``markers``, else the first of ``subdirs`` that does."""
    for base in (root, *(os.path.join(root, sub) for sub in subdirs)):
        if any(os.path.exists(os.path.join(base, marker)) for marker in markers):
            return base
    return None


def _scan(folder: str, recursive: bool = False, log: _Log | None = None) -> tuple[list[str], list[str]]:
    """Sorted image paths and sorted other file paths in ``folder``.

    Subfolders are searched when ``recursive`` (each real folder once: a symbolic link back to a parent is
    not followed again), else reported in ``log``'s warnings. An unreadable folder is a UserError.
    """
    images: list[str] = []
    others: list[str] = []
    skipped: list[str] = []
    special: list[str] = []  # named like images but not regular files (a FIFO would block the reader forever)
    stack, seen = [folder], set()
    while stack:
        current = stack.pop()
        try:
            real = os.path.realpath(current)
            if real in seen:
                continue
            seen.add(real)
            with os.scandir(current) as entries:
                for entry in entries:
                    if _is_dir(entry):
                        (stack if recursive else skipped).append(entry.path)
                    elif is_image_name(entry.name):
                        (images if _is_regular_file(entry) else special).append(entry.path)
                    else:
                        others.append(entry.path)
        except OSError as exc:
            raise UserError(f"cannot read folder {current}: {exc.strerror or exc}. Check its permissions.") from None
    if skipped and log is not None:
        log.warnings.append(f"ignored {len(skipped)} subfolder(s) of {folder} (e.g. {os.path.basename(sorted(skipped)[0])}): "
                            "only images directly in the split folder are read; move their images up if they belong to it.")
    if special and log is not None:
        log.warnings.append(f"skipped {len(special)} entr{'y' if len(special) == 1 else 'ies'} of {folder} named like images "
                            f"that are not regular files (e.g. {os.path.basename(sorted(special)[0])}: a pipe, socket, "
                            "device or broken link)")
    return sorted(images), sorted(others)


def _is_regular_file(entry: os.DirEntry[str]) -> bool:
    """A regular file (or a link to one): FIFOs, sockets, devices and broken links are not."""
    try:
        return entry.is_file()
    except OSError:
        return False


def _is_dir(entry: os.DirEntry[str]) -> bool:
    """A folder (or a link to one); a broken or looping link is not."""
    try:
        return entry.is_dir()
    except OSError:
        return False


def _warn_other_files(others: list[str], folder: str, log: _Log) -> None:
    if others:
        examples = ", ".join(os.path.basename(p) for p in others[:3])
        log.warnings.append(
            f"ignored {len(others)} non-image file(s) in {folder} (e.g. {examples}); "
            f"only {', '.join(IMAGE_EXTENSIONS)} files are read."
        )


def _check_not_empty(images: list[str], folder: str, split: str, log: _Log) -> None:
    if not images:
        log.problem(
            f"no images in {folder} (the {split} split): expected {', '.join(IMAGE_EXTENSIONS)} files. "
            "Check that the data set was extracted completely."
        )


# ---------------------------------------------------------------- Market-style layouts


def _market_sample(path: str) -> tuple[Sample | None, str]:
    """Sample parsed from a Market-style name, or None and the reason it failed."""
    match = MARKET_PATTERN.match(os.path.basename(path))
    if match is None:
        return None, "unparsable"
    try:
        pid = int(match.group(1))
    except ValueError:
        return None, "unparsable"
    cam = int(match.group(2))
    if pid < -1:
        return None, "unparsable"
    if cam < 1:
        return None, "camera"
    return Sample(path, pid, cam - 1), ""


def _parse_market(paths: list[str], folder: str, example: str, log: _Log) -> list[Sample]:
    """Samples of ``paths``; names that do not parse are reported together."""
    samples: list[Sample] = []
    bad: dict[str, list[str]] = {"unparsable": [], "camera": []}
    for path in paths:
        sample, reason = _market_sample(path)
        if sample is None:
            bad[reason].append(path)
        else:
            samples.append(sample)
    if bad["unparsable"]:
        log.problem(
            f"{len(bad['unparsable'])} image file(s) in {folder} have names that do not parse:"
            f"{_listing(bad['unparsable'])}\nExpected names like {example} matching the pattern "
            f"{MARKET_PATTERN.pattern} at the start (identity, -1 = junk, then _c and the camera number). "
            "Rename or remove these files."
        )
    if bad["camera"]:
        log.problem(
            f"{len(bad['camera'])} image file(s) in {folder} have camera number 0 (c0):{_listing(bad['camera'])}\n"
            f"Camera numbers in Market-style names start at 1 (like {example}). Renumber the cameras from 1."
        )
    return samples


def _drop_junk(samples: list[Sample], split: str, folder: str, log: _Log) -> list[Sample]:
    """Remove junk images (pid -1) from train / query, with a warning."""
    kept = [s for s in samples if s.pid != -1]
    if len(kept) < len(samples):
        log.warnings.append(
            f"left out {len(samples) - len(kept)} junk image(s) (identity -1) from the {split} split in {folder}."
        )
    return kept


def _require_splits(base: str, dirnames: list[str], what: str) -> None:
    missing = [d for d in dirnames if not os.path.isdir(os.path.join(base, d))]
    if missing:
        raise UserError(
            f"missing split folder(s) {', '.join(os.path.join(base, d) for d in missing)}: "
            f"a {what} data set needs {', '.join(d + '/' for d in dirnames)} in {base}. "
            "Check the path and that the data set was extracted completely."
        )


def _market_split(base: str, split: str, example: str, log: _Log) -> list[Sample]:
    folder = os.path.join(base, MARKET_SPLITS[split])
    images, others = _scan(folder, log=log)
    _warn_other_files(others, folder, log)
    _check_not_empty(images, folder, split, log)
    samples = _parse_market(images, folder, example, log)
    return samples if split == "gallery" else _drop_junk(samples, split, folder, log)


def _load_market_layout(name: str, base: str, example: str, log: _Log) -> ReidDataset:
    """Train / query / gallery from a folder in Market-1501 layout.

    A test-only folder (``query/`` and ``bounding_box_test/``, the training split missing or
    empty) loads with an empty train split and a warning: evaluation and extraction never read
    it, and ``train`` refuses a data set without training images.
    """
    _require_splits(base, [MARKET_SPLITS["query"], MARKET_SPLITS["gallery"]], f"{name} (Market-1501 layout)")
    train_dir = os.path.join(base, MARKET_SPLITS["train"])
    if not os.path.isdir(train_dir) or not _scan(train_dir)[0]:
        log.warnings.append(f"no training images ({train_dir} is {'empty' if os.path.isdir(train_dir) else 'missing'}): "
                            "a test-only data set, fine for evaluate and extract; train needs them.")
        splits = {"train": []}
    else:
        splits = {"train": _market_split(base, "train", example, log)}
    splits.update({split: _market_split(base, split, example, log) for split in ("query", "gallery")})
    return ReidDataset(name=name, root=base, warnings=log.warnings, **splits)


def _market_base(root: str, subdirs: tuple[str, ...], name: str) -> str:
    """The folder holding the Market-style splits: ``root`` itself or one of ``subdirs``."""
    base = _find_base(root, subdirs, tuple(MARKET_SPLITS.values()))
    if base is None:
        raise UserError(
            f"no {name} data set found in {root}: expected {', '.join(d + '/' for d in MARKET_SPLITS.values())} "
            f"in it or in a subfolder {' or '.join(d + '/' for d in subdirs)}. Point the root at the extracted data set."
        )
    return base


def market1501(root: PathLike, *, strict: bool = True) -> ReidDataset:
    """Market-1501: ``root`` is the data set folder or a parent containing it.

    Gallery junk (pid -1) and distractors (pid 0) are kept; evaluation ignores
    junk and treats distractors as a normal non-matching identity.
    """
    log = _Log(strict)
    base = _market_base(_check_root(root), MARKET_SUBDIRS, "Market-1501")
    return _load_market_layout("market1501", base, "0002_c1s1_000451_03.jpg", log)


def market(root: PathLike, *, strict: bool = True) -> ReidDataset:
    """Any folder in Market-1501 layout (``root`` itself holds the split folders)."""
    log = _Log(strict)
    return _load_market_layout("market", _check_root(root), "0002_c1s1_000451_03.jpg", log)


def dukemtmc(root: PathLike, *, strict: bool = True) -> ReidDataset:
    """DukeMTMC-reID: ``root`` is the data set folder or a parent containing ``DukeMTMC-reID``."""
    log = _Log(strict)
    base = _market_base(_check_root(root), DUKE_SUBDIRS, "DukeMTMC-reID")
    return _load_market_layout("dukemtmc", base, "0001_c2_f0046182.jpg", log)


def _cuhk03np_base(root: str) -> str:
    base = _find_base(root, CUHK03NP_SUBDIRS, CUHK03NP_SUBSETS)
    if base is None:
        raise UserError(
            f"no CUHK03-NP data set found in {root}: expected labeled/ or detected/ in it "
            "or in a subfolder cuhk03-np/. Point the root at the extracted cuhk03-np folder."
        )
    return base


def cuhk03np(root: PathLike, *, subset: str = "detected", strict: bool = True) -> ReidDataset:
    """CUHK03-NP (new protocol): ``subset`` is ``"detected"`` or ``"labeled"``."""
    if subset not in CUHK03NP_SUBSETS:
        raise UserError(f"unknown CUHK03-NP subset {subset!r}: expected one of {', '.join(CUHK03NP_SUBSETS)}.")
    log = _Log(strict)
    folder = os.path.join(_cuhk03np_base(_check_root(root)), subset)
    if not os.path.isdir(folder):
        raise UserError(f"missing CUHK03-NP subset folder {folder}: extract it there or choose the other subset.")
    return _load_market_layout(f"cuhk03np-{subset}", folder, "0001_c1_1.png", log)


# ---------------------------------------------------------------- MSMT17


def _is_msmt_base(base: str) -> bool:
    """list_train.txt next to MSMT17's image folders (a stray list file alone does not make MSMT17)."""
    return os.path.isfile(os.path.join(base, MSMT_LISTS["train"])) and any(
        os.path.isdir(os.path.join(base, train)) for train, _ in MSMT_VERSIONS.values())


def _msmt_base(root: str) -> str:
    base = next((b for b in (root, *(os.path.join(root, sub) for sub in MSMT_SUBDIRS)) if _is_msmt_base(b)), None)
    if base is None:
        base = _find_base(root, MSMT_SUBDIRS, ("list_train.txt",))  # lists without images: _msmt_dirs explains
    if base is None:
        raise UserError(
            f"no MSMT17 data set found in {root}: expected list_train.txt in it or in a subfolder "
            f"{' or '.join(d + '/' for d in MSMT_SUBDIRS)}. Point the root at the extracted data set."
        )
    return base


def _msmt_dirs(base: str) -> tuple[str, str, str]:
    """(version, train image folder, test image folder), detected from the folders present."""
    for version, (train, test) in MSMT_VERSIONS.items():
        if os.path.isdir(os.path.join(base, train)):
            _require_splits(base, [train, test], f"MSMT17 {version}")
            _require_lists(base)
            return version, os.path.join(base, train), os.path.join(base, test)
    raise UserError(
        f"no MSMT17 image folders in {base}: expected train/ and test/ (V1) or "
        "mask_train_v2/ and mask_test_v2/ (V2). Check that the data set was extracted completely."
    )


def _require_lists(base: str) -> None:
    missing = [os.path.join(base, n) for n in MSMT_LISTS.values() if not os.path.isfile(os.path.join(base, n))]
    if missing:
        raise UserError(
            f"missing MSMT17 list file(s) {', '.join(missing)}: MSMT17 needs "
            f"{', '.join(MSMT_LISTS.values())} in {base}. Copy them from the original archive."
        )


def _msmt_entry(line: str) -> tuple[str, int, int] | None:
    """(relative path, pid, 0-based camera) of one ``relative/path.jpg pid`` line, or None."""
    parts = line.rsplit(None, 1)
    if len(parts) != 2:
        return None
    rel, pid_text = parts
    try:
        pid = int(pid_text)
        cam = int(os.path.basename(rel).split("_")[2])
    except (ValueError, IndexError):
        return None
    if pid < 0 or cam < 1:
        return None
    return rel, pid, cam - 1


def _read_msmt_list(list_path: str, log: _Log) -> list[tuple[str, int, int]]:
    entries: list[tuple[str, int, int]] = []
    bad: list[str] = []
    with open(list_path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                entry = _msmt_entry(line.strip())
                if entry is None:
                    bad.append(f"line {number}: {line.strip()!r}")
                else:
                    entries.append(entry)
    if bad:
        log.problem(
            f"{len(bad)} line(s) of {list_path} do not parse:{_listing(bad)}\nExpected 'relative/path.jpg pid' "
            "with names like 0000_000_01_0303morning_0015_0.jpg (camera = third '_' field, from 1). "
            "Fix or remove these lines."
        )
    return entries


def _locate(rel: str, dirs: tuple[str, ...], files: set[str]) -> str | None:
    """The existing image ``rel`` names, relative to the first of ``dirs`` that has it."""
    for folder in dirs:
        path = os.path.normpath(os.path.join(folder, rel))
        if path in files:
            return path
    return None


def _msmt_samples(entries: list[tuple[str, int, int]], dirs: tuple[str, ...], files: set[str],
                  list_path: str, log: _Log) -> list[Sample]:
    """Samples of the listed images that exist; the missing ones are reported."""
    samples: list[Sample] = []
    missing: list[str] = []
    for rel, pid, cam in entries:
        path = _locate(rel, dirs, files)
        if path is None:
            missing.append(os.path.join(dirs[0], rel))
        else:
            samples.append(Sample(path, pid, cam))
    if missing:
        log.problem(
            f"{len(missing)} image(s) listed in {list_path} do not exist:{_listing(missing)}\n"
            "Restore the missing files or use the list files that came with this copy of MSMT17."
        )
    return samples


def _msmt_split(base: str, key: str, image_dir: str, files: set[str], log: _Log) -> list[Sample]:
    list_path = os.path.join(base, MSMT_LISTS[key])
    samples = _msmt_samples(_read_msmt_list(list_path, log), (image_dir, base), files, list_path, log)
    if not samples:
        log.problem(f"no images listed in {list_path}: expected 'relative/path.jpg pid' lines.")
    return samples


def msmt17(root: PathLike, *, strict: bool = True) -> ReidDataset:
    """MSMT17 V1 or V2 (detected from the image folders), driven by the list files.

    Train is list_train + list_val. Both lists hold images of the same 1,041
    training identities (32,621 images in all), so the pids are kept unchanged.
    """
    log = _Log(strict)
    base = _msmt_base(_check_root(root))
    version, train_dir, test_dir = _msmt_dirs(base)
    train_files = set(_scan(train_dir, recursive=True)[0])
    test_files = set(_scan(test_dir, recursive=True)[0])
    train = _msmt_split(base, "train", train_dir, train_files, log)
    train += _msmt_split(base, "val", train_dir, train_files, log)
    query = _msmt_split(base, "query", test_dir, test_files, log)
    gallery = _msmt_split(base, "gallery", test_dir, test_files, log)
    return ReidDataset(
        name=f"msmt17-{version.lower()}", root=base, train=sorted(train, key=_path), query=sorted(query, key=_path),
        gallery=sorted(gallery, key=_path), warnings=log.warnings,
    )


def _path(sample: Sample) -> str:
    return sample.path


# ---------------------------------------------------------------- plain folders


def _compile_camera_pattern(pattern: str) -> re.Pattern[str]:
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise UserError(f"invalid camera_pattern {pattern!r}: {exc}. Give a Python regular expression.") from exc
    if compiled.groups < 1:
        raise UserError(
            f"camera_pattern {pattern!r} has no group: put the camera id in parentheses, e.g. r'_c(\\d+)'."
        )
    return compiled


def _camera_keys(paths: list[str], root: str, pattern: re.Pattern[str], log: _Log) -> dict[str, str]:
    """Camera id text of each path (matched with ``search`` on the path relative to ``root``)."""
    keys: dict[str, str] = {}
    bad: list[str] = []
    for path in paths:
        match = pattern.search(os.path.relpath(path, root))
        if match is None or match.group(1) is None:
            bad.append(path)
        else:
            keys[path] = match.group(1)
    if bad:
        log.problem(
            f"{len(bad)} image file(s) in {root} do not match camera_pattern {pattern.pattern}:"
            f"{_listing(bad)}\nThe pattern is searched in the path relative to {root} and its first group "
            "is the camera id. Fix the pattern, rename these files, or leave the pattern out (one camera)."
        )
    return keys


def _camera_order(key: str) -> tuple[int, int | str]:
    """Numeric camera ids sort by value, others alphabetically after them."""
    return (0, int(key)) if key.isdigit() else (1, key)


def folder(root: PathLike, *, camera_pattern: str | None = None, strict: bool = True) -> ReidDataset:
    """A folder (searched recursively) of unlabelled images: train only, pid -1.

    With ``camera_pattern`` its first group gives the camera id, mapped to
    0..C-1 in sorted order; without it every image is camera 0.
    """
    log = _Log(strict)
    base = _check_root(root)
    images, others = _scan(base, recursive=True)
    _warn_other_files(others, base, log)
    _check_not_empty(images, base, "train", log)
    if camera_pattern is None:
        train = [Sample(p, -1, 0) for p in images]
    else:
        keys = _camera_keys(images, base, _compile_camera_pattern(camera_pattern), log)
        index = {key: i for i, key in enumerate(sorted(set(keys.values()), key=_camera_order))}
        train = [Sample(p, -1, index[keys[p]]) for p in images if p in keys]
    return ReidDataset(name="folder", root=base, train=train, has_train_labels=False, warnings=log.warnings)


# ---------------------------------------------------------------- dispatch

FORMATS: dict[str, Callable[..., ReidDataset]] = {
    "market1501": market1501,
    "market": market,
    "dukemtmc": dukemtmc,
    "msmt17": msmt17,
    "cuhk03np": cuhk03np,
    "folder": folder,
}

_AUTO_RULES: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("msmt17", lambda r: any(_is_msmt_base(b) for b in (r, *(os.path.join(r, sub) for sub in MSMT_SUBDIRS)))),
    ("cuhk03np", lambda r: _find_base(r, CUHK03NP_SUBDIRS, CUHK03NP_SUBSETS) is not None),
    ("dukemtmc", lambda r: os.path.basename(r) in DUKE_SUBDIRS or os.path.isdir(os.path.join(r, DUKE_SUBDIRS[0]))),
    ("market1501", lambda r: os.path.basename(r).startswith("Market-1501")
     or any(os.path.isdir(os.path.join(r, d)) for d in MARKET_SUBDIRS)),
    ("market", lambda r: os.path.isdir(os.path.join(r, MARKET_SPLITS["train"]))
     or all(os.path.isdir(os.path.join(r, MARKET_SPLITS[s])) for s in ("query", "gallery"))),  # test-only
)


def detect_format(root: PathLike) -> str:
    """Name of the format found at ``root`` (see ``load_dataset``)."""
    path = _check_root(root)
    for name, rule in _AUTO_RULES:
        if rule(path):
            return name
    raise UserError(
        f"cannot tell the data set format of {path}: looked for MSMT17 list_train.txt with train/ or mask_train_v2/ (in it or in "
        f"{'/, '.join(MSMT_SUBDIRS)}/), cuhk03-np/ or labeled/ + detected/, DukeMTMC-reID/, "
        f"{'/ or '.join(MARKET_SUBDIRS)}/, and bounding_box_train/ or query/ + bounding_box_test/. Choose the format explicitly "
        f"(one of {', '.join(FORMATS)}); use 'folder' for a plain folder of unlabelled images."
    )


def _check_options(format: str, loader: Callable[..., ReidDataset], options: dict[str, object]) -> None:
    allowed = [p for p in inspect.signature(loader).parameters if p != "root"]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UserError(
            f"unknown option(s) {', '.join(unknown)} for data set format {format!r}: "
            f"it accepts {', '.join(allowed) or 'no options'}."
        )


def load_dataset(format: str, root: PathLike, **options: object) -> ReidDataset:
    """Load the data set at ``root`` in ``format`` (a key of :data:`FORMATS` or ``"auto"``)."""
    name = detect_format(root) if format == "auto" else format
    if name not in FORMATS:
        raise UserError(f"unknown data set format {format!r}: expected auto or one of {', '.join(FORMATS)}.")
    loader = FORMATS[name]
    _check_options(name, loader, options)
    return loader(root, **options)
