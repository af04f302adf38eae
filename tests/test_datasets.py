"""Data-set loaders, image reading and inspection on tiny fake data sets."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import pytest
from PIL import Image

from hardreid.data.datasets import FORMATS, detect_format, load_dataset
from hardreid.data.images import IMAGE_EXTENSIONS, read_image
from hardreid.data.inspect import inspect_dataset
from hardreid.errors import UserError

REAL_CUHK03 = Path("/work/shared/data/cuhk03")


def make_image(path: Path, color: tuple[int, int, int] = (10, 20, 30), fmt: str | None = None) -> Path:
    """A 16x8 image (above the 8-pixel minimum side); the colour makes its bytes distinct (or identical on purpose)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 16), color).save(path, format=fmt)
    return path


def make_files(folder: Path, names: list[str]) -> None:
    """Images whose colour depends on the path, so that no two have the same bytes."""
    for name in names:
        key = zlib.crc32(str(folder / name).encode())
        make_image(folder / name, (key % 256, (key >> 8) % 256, (key >> 16) % 256))


MARKET_TRAIN = ["0002_c1s1_000451_01.jpg", "0002_c2s1_000551_01.jpg", "0007_c3s1_000101_02.jpg"]
MARKET_QUERY = ["0005_c1s1_001351_00.jpg", "0007_c2s1_000201_00.jpg"]
MARKET_GALLERY = ["-1_c1s1_000401_03.jpg", "0000_c4s1_000111_01.jpg", "0005_c1s1_001500_02.jpg",
                  "0005_c2s1_001400_01.jpg", "0007_c6s1_009101_05.jpg"]


def make_market(root: Path, train: list[str] = MARKET_TRAIN) -> Path:
    make_files(root / "bounding_box_train", train)
    make_files(root / "query", MARKET_QUERY)
    make_files(root / "bounding_box_test", MARKET_GALLERY)
    return root


# ---------------------------------------------------------------- images


def test_read_image_returns_rgb(tmp_path: Path) -> None:
    path = make_image(tmp_path / "a.png")
    Image.new("L", (8, 16), 5).save(path)
    img = read_image(path)
    assert img.mode == "RGB" and img.size == (8, 16)
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp")


def test_read_image_truncated_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot read image") as info:
        read_image(path)
    assert str(path) in str(info.value) and "Replace or remove" in str(info.value)


def test_read_image_empty_and_garbage(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty") as info:
        read_image(empty)
    assert str(empty) in str(info.value)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(UserError) as info:
        read_image(garbage)
    assert str(garbage) in str(info.value)


def test_read_image_16_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    """A 16-bit greyscale PNG (0..65535) used to decode all white; it maps to 0..255 by value / 257."""
    import numpy as np

    values = np.linspace(0, 65535, 16 * 8).reshape(16, 8).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I;16")
    pixels = np.asarray(read_image(path))
    assert pixels.shape == (16, 8, 3) and (pixels[..., 0] == pixels[..., 2]).all()
    np.testing.assert_array_equal(pixels[..., 0], np.rint(values / 257.0).astype(np.uint8))


@pytest.mark.parametrize("data, reason", [
    (b"BM" + bytes(60), "damaged"),
    (b"\x89PNG\r\n\x1a\n" + bytes(20), "not a JPEG, PNG or BMP"),
])
def test_read_image_reasons_are_plain_words(tmp_path: Path, data: bytes, reason: str) -> None:
    path = tmp_path / "bad.bmp"
    path.write_bytes(data)
    with pytest.raises(UserError, match=reason):
        read_image(path)
    folder = tmp_path / "dir.jpg"
    folder.mkdir()
    with pytest.raises(UserError, match="it is a folder"):
        read_image(folder)


# ---------------------------------------------------------------- Market-1501 layouts


def test_camera_numbers_with_two_digits(tmp_path: Path) -> None:
    """c12 is camera 12 (index 11), not camera 1 (VeRi-style names, many-camera sets)."""
    root = make_market(tmp_path / "m", train=["0002_c12s1_000451_01.jpg", "0002_c3s1_000551_01.jpg",
                                              "0007_c001_00016450_0.jpg"])
    ds = load_dataset("market", root)
    assert sorted(s.camid for s in ds.train) == [0, 2, 11]


def test_a_stray_list_file_does_not_make_a_market_folder_msmt17(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    (root / "list_train.txt").write_text("train/0000_000_01_0303morning_0015_0.jpg 0\n")
    assert detect_format(root) == "market"
    assert load_dataset("auto", root).name == "market"


def test_images_in_subfolders_of_a_split_are_reported(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    make_files(root / "bounding_box_train" / "extra", ["0009_c1s1_000001_01.jpg"])
    ds = load_dataset("market", root)
    assert len(ds.train) == 3
    assert any("ignored 1 subfolder(s)" in w and "bounding_box_train" in w for w in ds.warnings)


def test_folder_with_a_symlink_loop_is_read_once(tmp_path: Path) -> None:
    make_files(tmp_path / "crops", ["a.jpg", "b.jpg"])
    (tmp_path / "crops" / "again").symlink_to(tmp_path / "crops", target_is_directory=True)
    ds = load_dataset("folder", tmp_path / "crops")
    assert [Path(s.path).name for s in ds.train] == ["a.jpg", "b.jpg"]
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    with pytest.raises(UserError, match="leads nowhere"):
        load_dataset("folder", tmp_path / "loop")


def test_unreadable_folder_is_one_clear_error(tmp_path: Path, monkeypatch) -> None:
    import errno

    root = make_market(tmp_path / "m")
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("query"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with pytest.raises(UserError, match=r"cannot read folder .*query: Permission denied"):
        load_dataset("market", root)


def test_market1501_counts_pids_camids_junk_and_distractors(tmp_path: Path) -> None:
    make_market(tmp_path / "Market-1501-v15.09.15")
    (tmp_path / "Market-1501-v15.09.15" / "query" / "Thumbs.db").write_bytes(b"x")
    ds = load_dataset("market1501", tmp_path)
    assert ds.name == "market1501" and ds.root == str(tmp_path / "Market-1501-v15.09.15")
    assert [(s.pid, s.camid) for s in ds.train] == [(2, 0), (2, 1), (7, 2)]
    assert [(s.pid, s.camid) for s in ds.query] == [(5, 0), (7, 1)]
    assert [(s.pid, s.camid) for s in ds.gallery] == [(-1, 0), (0, 3), (5, 0), (5, 1), (7, 5)]
    assert [os.path.basename(s.path) for s in ds.gallery] == MARKET_GALLERY
    assert all(os.path.isfile(s.path) for s in ds.train + ds.query + ds.gallery)
    assert len(ds.warnings) == 1 and "1 non-image file" in ds.warnings[0] and "Thumbs.db" in ds.warnings[0]


def test_market1501_root_may_be_the_folder_itself(tmp_path: Path) -> None:
    root = make_market(tmp_path / "Market-1501")
    assert len(load_dataset("market1501", root).train) == 3
    assert len(load_dataset("market1501", tmp_path).gallery) == 5


def test_junk_in_train_is_left_out_with_a_warning(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m", train=[*MARKET_TRAIN, "-1_c1s1_000001_01.jpg"])
    ds = load_dataset("market", root)
    assert len(ds.train) == 3 and all(s.pid >= 0 for s in ds.train)
    assert any("junk" in w and "train" in w for w in ds.warnings)


def test_market_has_no_subfolder_search(tmp_path: Path) -> None:
    make_market(tmp_path / "Market-1501")
    with pytest.raises(UserError, match="bounding_box_test") as info:
        load_dataset("market", tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("train_split", ["missing", "empty"])
def test_test_only_folder_loads_without_a_training_split(tmp_path: Path, train_split: str) -> None:
    root = tmp_path / "m"
    make_files(root / "query", MARKET_QUERY)
    make_files(root / "bounding_box_test", MARKET_GALLERY)
    if train_split == "empty":
        (root / "bounding_box_train").mkdir()
    assert detect_format(root) == "market"
    ds = load_dataset("auto", root)
    assert ds.train == [] and len(ds.query) == 2 and len(ds.gallery) == 5
    assert any(f"is {train_split}" in w and "test-only" in w for w in ds.warnings)
    from hardreid.runs import train

    from conftest import tiny_config

    with pytest.raises(UserError, match="no training images"):
        train(tiny_config(), ds, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_dukemtmc(tmp_path: Path) -> None:
    base = tmp_path / "DukeMTMC-reID"
    make_files(base / "bounding_box_train", ["0001_c2_f0046182.jpg", "0001_c8_f0000001.jpg"])
    make_files(base / "query", ["0005_c1_f0000002.jpg"])
    make_files(base / "bounding_box_test", ["0005_c3_f0000003.jpg", "0006_c7_f0000004.jpg"])
    ds = load_dataset("dukemtmc", tmp_path)
    assert [(s.pid, s.camid) for s in ds.train] == [(1, 1), (1, 7)]
    assert [(s.pid, s.camid) for s in ds.gallery] == [(5, 2), (6, 6)]
    assert detect_format(tmp_path) == "dukemtmc" and detect_format(base) == "dukemtmc"


def make_cuhk03np(root: Path) -> Path:
    base = root / "cuhk03-np"
    for subset, n in (("labeled", 2), ("detected", 3)):
        make_files(base / subset / "bounding_box_train", [f"{i + 1:04d}_c1_{i}.png" for i in range(n)])
        make_files(base / subset / "query", ["0100_c1_1.png"])
        make_files(base / subset / "bounding_box_test", ["0100_c2_1.png", "0101_c2_2.png"])
    return base


def test_cuhk03np_subsets(tmp_path: Path) -> None:
    base = make_cuhk03np(tmp_path)
    detected = load_dataset("cuhk03np", tmp_path)
    labeled = load_dataset("cuhk03np", base, subset="labeled")
    assert detected.name == "cuhk03np-detected" and len(detected.train) == 3
    assert labeled.name == "cuhk03np-labeled" and [s.pid for s in labeled.train] == [1, 2]
    assert [(s.pid, s.camid) for s in labeled.gallery] == [(100, 1), (101, 1)]
    with pytest.raises(UserError, match="subset 'both'"):
        load_dataset("cuhk03np", base, subset="both")


# ---------------------------------------------------------------- MSMT17


MSMT_TRAIN = {"0000/0000_000_01_0303morning_0015_0.jpg": 0, "0001/0001_003_05_0303noon_0100_1.jpg": 1}
MSMT_VAL = {"0000/0000_004_02_0303morning_0020_0.jpg": 0}
MSMT_QUERY = {"0002/0002_000_15_0113morning_0001_0.jpg": 0}
MSMT_GALLERY = {"0002/0002_001_03_0113noon_0002_0.jpg": 0, "0003/0003_000_07_0113noon_0003_0.jpg": 1}


def make_msmt(root: Path, version: str) -> Path:
    train_dir, test_dir = {"V1": ("train", "test"), "V2": ("mask_train_v2", "mask_test_v2")}[version]
    base = root / f"MSMT17_{version}"
    for name, entries, folder in (("train", MSMT_TRAIN, train_dir), ("val", MSMT_VAL, train_dir),
                                  ("query", MSMT_QUERY, test_dir), ("gallery", MSMT_GALLERY, test_dir)):
        make_files(base / folder, list(entries))
        lines = "".join(f"{rel} {pid}\n" for rel, pid in entries.items())
        (base / f"list_{name}.txt").write_text(lines)
    return base


@pytest.mark.parametrize("version", ["V1", "V2"])
def test_msmt17_versions(tmp_path: Path, version: str) -> None:
    base = make_msmt(tmp_path, version)
    ds = load_dataset("auto", tmp_path)
    assert ds.name == f"msmt17-{version.lower()}" and ds.root == str(base)
    assert sorted((s.pid, s.camid) for s in ds.train) == [(0, 0), (0, 1), (1, 4)]
    assert [s.path for s in ds.train] == sorted(s.path for s in ds.train)
    assert [(s.pid, s.camid) for s in ds.query] == [(0, 14)]
    assert [(s.pid, s.camid) for s in ds.gallery] == [(0, 2), (1, 6)]
    assert all(os.path.isfile(s.path) for s in ds.train + ds.query + ds.gallery)
    assert load_dataset("msmt17", base).name == ds.name


def test_msmt17_missing_listed_image_and_bad_line(tmp_path: Path) -> None:
    base = make_msmt(tmp_path, "V2")
    (base / "mask_test_v2" / "0003" / "0003_000_07_0113noon_0003_0.jpg").unlink()
    with pytest.raises(UserError, match="do not exist") as info:
        load_dataset("msmt17", tmp_path)
    assert "0003_000_07_0113noon_0003_0.jpg" in str(info.value) and "list_gallery.txt" in str(info.value)
    (base / "list_query.txt").write_text("0002/badname.jpg 0\n")
    with pytest.raises(UserError, match="do not parse") as info:
        load_dataset("msmt17", tmp_path)
    assert "list_query.txt" in str(info.value) and "badname.jpg" in str(info.value)


def test_msmt17_missing_list_file(tmp_path: Path) -> None:
    base = make_msmt(tmp_path, "V1")
    (base / "list_val.txt").unlink()
    with pytest.raises(UserError, match="list_val.txt"):
        load_dataset("msmt17", base)


# ---------------------------------------------------------------- plain folders


def test_folder_with_camera_pattern(tmp_path: Path) -> None:
    make_files(tmp_path / "day1", ["a_cam10.jpg", "b_cam2.png"])
    make_files(tmp_path / "day2" / "x", ["c_cam2.bmp", "d_cam3.jpeg"])
    (tmp_path / "notes.txt").write_text("hello")
    ds = load_dataset("folder", tmp_path, camera_pattern=r"cam(\d+)")
    assert not ds.has_train_labels and ds.query == [] and ds.gallery == []
    assert [(os.path.basename(s.path), s.pid, s.camid) for s in ds.train] == [
        ("a_cam10.jpg", -1, 2), ("b_cam2.png", -1, 0), ("c_cam2.bmp", -1, 0), ("d_cam3.jpeg", -1, 1)]
    assert any("notes.txt" in w for w in ds.warnings)
    assert {s.camid for s in load_dataset("folder", tmp_path).train} == {0}


def test_folder_camera_pattern_mismatch_names_the_file(tmp_path: Path) -> None:
    make_files(tmp_path, ["a_cam1.jpg", "nocamera.jpg"])
    with pytest.raises(UserError, match="camera_pattern") as info:
        load_dataset("folder", tmp_path, camera_pattern=r"cam(\d+)")
    assert str(tmp_path / "nocamera.jpg") in str(info.value)
    with pytest.raises(UserError, match="no group"):
        load_dataset("folder", tmp_path, camera_pattern=r"cam\d+")


# ---------------------------------------------------------------- auto detection


def test_auto_detection(tmp_path: Path) -> None:
    make_market(tmp_path / "mkt" / "Market-1501-v15.09.15")
    make_market(tmp_path / "plain")
    make_cuhk03np(tmp_path / "cu")
    make_msmt(tmp_path / "ms", "V1")
    assert detect_format(tmp_path / "mkt") == "market1501"
    assert detect_format(tmp_path / "mkt" / "Market-1501-v15.09.15") == "market1501"
    assert detect_format(tmp_path / "plain") == "market"
    assert detect_format(tmp_path / "cu") == "cuhk03np"
    assert detect_format(tmp_path / "cu" / "cuhk03-np") == "cuhk03np"
    assert detect_format(tmp_path / "ms") == "msmt17"
    assert load_dataset("auto", tmp_path / "mkt").name == "market1501"
    assert set(FORMATS) == {"market1501", "market", "dukemtmc", "msmt17", "cuhk03np", "folder"}


def test_auto_detection_failure_lists_what_was_looked_for(tmp_path: Path) -> None:
    make_files(tmp_path, ["a.jpg"])
    with pytest.raises(UserError, match="bounding_box_train") as info:
        load_dataset("auto", tmp_path)
    assert str(tmp_path) in str(info.value) and "folder" in str(info.value)


def test_unknown_format_and_option(tmp_path: Path) -> None:
    make_market(tmp_path)
    with pytest.raises(UserError, match="unknown data set format 'markt'"):
        load_dataset("markt", tmp_path)
    with pytest.raises(UserError, match="subset"):
        load_dataset("market", tmp_path, subset="labeled")


# ---------------------------------------------------------------- failure modes


def test_missing_root(tmp_path: Path) -> None:
    for fmt in (*FORMATS, "auto"):
        with pytest.raises(UserError, match="does not exist") as info:
            load_dataset(fmt, tmp_path / "nowhere")
        assert str(tmp_path / "nowhere") in str(info.value)


def test_missing_split(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    for name in MARKET_QUERY:
        (root / "query" / name).unlink()
    (root / "query").rmdir()
    with pytest.raises(UserError, match="missing split") as info:
        load_dataset("market", root)
    assert str(root / "query") in str(info.value)


def test_empty_split(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    for name in MARKET_GALLERY:
        (root / "bounding_box_test" / name).unlink()
    with pytest.raises(UserError, match="no images") as info:
        load_dataset("market", root)
    assert str(root / "bounding_box_test") in str(info.value)


def test_unparsable_names_listed_with_count(tmp_path: Path) -> None:
    bad = [f"img{i}.jpg" for i in range(7)]
    root = make_market(tmp_path / "m", train=[*MARKET_TRAIN, *bad])
    with pytest.raises(UserError, match="7 image file") as info:
        load_dataset("market", root)
    text = str(info.value)
    assert str(root / "bounding_box_train" / "img0.jpg") in text and "img6.jpg" not in text
    assert "and 2 more" in text and "_c(" in text


def test_camera_zero_is_rejected(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m", train=[*MARKET_TRAIN, "0003_c0s1_000001_01.jpg"])
    with pytest.raises(UserError, match="start at 1") as info:
        load_dataset("market", root)
    assert "0003_c0s1_000001_01.jpg" in str(info.value)


# ---------------------------------------------------------------- inspect


def test_inspect_statistics_and_warnings(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    gallery = root / "bounding_box_test"
    make_image(gallery / "0005_c3s1_000001_01.jpg", (1, 2, 3))
    make_image(gallery / "0005_c3s1_000002_01.jpg", (1, 2, 3))  # same bytes
    make_image(root / "bounding_box_train" / "0002_c1s1_999999_01.jpg", (1, 2, 3))  # copy across splits
    (gallery / "oops.jpg").write_bytes(b"")
    report = inspect_dataset(root, verify_images=True)
    assert report.format == "market"
    train, query, gal = (report.splits[s] for s in ("train", "query", "gallery"))
    assert (train.images, train.identities, train.cameras) == (4, 2, 3)
    assert (train.images_per_identity_min, train.images_per_identity_median, train.images_per_identity_max) == (
        1, 2.0, 3)
    assert (gal.images, gal.identities, gal.junk_images) == (7, 3, 1)
    assert gal.images_per_camera == {0: 2, 1: 1, 2: 2, 3: 1, 5: 1}
    assert query.identities == 2
    assert len(report.duplicates) == 1 and len(report.duplicates[0]) == 3
    assert report.unmatched_queries == []
    assert report.unreadable == [] and report.train_overlap == [7]
    text = "\n".join(report.warnings)
    assert "oops.jpg" in text and "do not parse" in text  # reported, not raised
    assert "identical" in text and "1 of them across splits" in text
    assert "train" in report.text() and report.to_dict()["splits"]["gallery"]["images_per_camera"]["5"] == 1


def test_inspect_unmatched_queries_and_unreadable(tmp_path: Path) -> None:
    root = make_market(tmp_path / "m")
    make_files(root / "query", ["0009_c3s1_000001_00.jpg"])  # pid 9: no gallery image at all
    make_files(root / "bounding_box_test", ["0009_c3s1_000002_00.jpg"])  # ... only in the same camera
    bad = root / "bounding_box_test" / "0009_c3s1_000003_00.jpg"
    bad.write_bytes(b"\xff\xd8broken")
    report = inspect_dataset(root, format="market", verify_images=True)
    assert report.unmatched_queries == [str(root / "query" / "0009_c3s1_000001_00.jpg")]
    assert report.unreadable == [str(bad)]
    assert any("no gallery image of the same identity in another camera" in w for w in report.warnings)


def test_inspect_folder_format(tmp_path: Path) -> None:
    make_files(tmp_path, ["a_c1.jpg", "b_c2.jpg", "c_c2.jpg"])
    report = inspect_dataset(tmp_path, format="folder", camera_pattern=r"_c(\d)")
    train = report.splits["train"]
    assert (train.images, train.identities, train.cameras) == (3, None, 2)
    assert report.splits["query"].images == 0 and not report.has_train_labels
    assert "-" in report.text()


# ---------------------------------------------------------------- real data


def test_real_cuhk03_as_market() -> None:
    if not REAL_CUHK03.is_dir():
        pytest.skip(f"{REAL_CUHK03} not available")
    ds = load_dataset("market", REAL_CUHK03)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (7239, 200, 738)
    assert len({s.pid for s in ds.train}) == 743
    assert ds.num_train_cams == 2 and {s.camid for s in ds.query + ds.gallery} == {0, 1}
    assert ds.warnings == []
