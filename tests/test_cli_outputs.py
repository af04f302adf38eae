"""Issue 24 through the command line, as a user meets it: the seven cases that destroyed files before, refusals of
outputs that exist or are inputs, --overwrite, range-checked numbers and an empty config. Each asserts the exit code,
that the message names the path, and that every file that existed survived byte for byte."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from conftest import tiny_config
from hardreid.cli import main


def _hashes(*folders: Path) -> dict[str, str]:
    files = [p for folder in folders for p in ([folder] if folder.is_file() else sorted(folder.rglob("*"))) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _cli(args, capsys) -> tuple[int, str]:
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse's own errors (bad option values) exit 2 from inside the parser
        code = stop.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture()
def user_files(tmp_path, tiny_checkpoint, tiny_root):
    """A user's folder: images, a checkpoint and notes, copied so that each test can hash them."""
    home = tmp_path / "home"
    shutil.copytree(tiny_root / "query", home / "images")
    shutil.copy(tiny_checkpoint, home / "best.pth")
    (home / "notes").mkdir()
    (home / "notes" / "features.npy").write_bytes(b"my own features")
    (home / "notes" / "images.jsonl").write_text("my own list\n")
    (home / "notes" / "shards").mkdir()
    (home / "notes" / "shards" / "keep.txt").write_text("mine")
    return home


def test_extract_into_a_foreign_folder_or_onto_its_images_is_refused(user_files, capsys):
    before = _hashes(user_files)
    base = ["extract", "--checkpoint", user_files / "best.pth", "--workers", "0"]
    for images, output, message in [
        (user_files / "images", user_files / "notes", "is a folder hardreid did not write"),
        (user_files / "images", user_files / "images", "is the same path as --images"),
        (user_files / "images", user_files / "images" / "feats", "lies inside --images"),
    ]:
        code, err = _cli([*base, "--images", images, "--output", output], capsys)
        assert code == 2 and message in err and str(output) in err, err
    code, err = _cli([*base, "--images", user_files / "images", "--output", user_files / "notes", "--overwrite"], capsys)
    assert code == 2 and "shards exists and was not written by 'hardreid extract'" in err
    assert _hashes(user_files) == before


def test_outputs_equal_to_the_checkpoint_are_refused(user_files, tiny_root, capsys):
    before = _hashes(user_files)
    ckpt = user_files / "best.pth"
    for args in (["export", "--checkpoint", ckpt, "--format", "torchscript", "--output", ckpt, "--overwrite"],
                 ["export", "--checkpoint", ckpt, "--format", "torchscript", "--output", user_files / "m.ts", "--json", ckpt],
                 ["evaluate", "--checkpoint", ckpt, "--data-root", tiny_root, "--json", ckpt, "--overwrite"],
                 ["info", "--checkpoint", ckpt, "--json", ckpt, "--overwrite"]):
        code, err = _cli(args, capsys)
        assert code == 2 and f"is the same path as --checkpoint {ckpt}" in err, (args, err)
    assert _hashes(user_files) == before and not (user_files / "m.ts").exists()


def test_existing_output_files_need_overwrite(user_files, capsys):
    report = user_files / "info.json"
    report.write_text("my report")
    args = ["info", "--checkpoint", user_files / "best.pth", "--json", report]
    code, err = _cli(args, capsys)
    assert code == 2 and f"--json {report} already exists: pass --overwrite" in err and report.read_text() == "my report"
    code, _ = _cli([*args, "--overwrite"], capsys)
    assert code == 0 and json.loads(report.read_text())["backbone"] == "mobilenet_v2"


def test_two_outputs_naming_one_file_are_refused(user_files, tiny_root, capsys):
    out = user_files / "out.json"
    code, err = _cli(["evaluate", "--checkpoint", user_files / "best.pth", "--data-root", tiny_root, "--json", out,
                      "--html", out], capsys)
    assert code == 2 and "--html and --json name the same file" in err and not out.exists()


def test_index_never_writes_into_its_features(user_files, tmp_path, capsys):
    pytest.importorskip("faiss")
    feats = tmp_path / "feats"
    assert main(["extract", "--checkpoint", str(user_files / "best.pth"), "--images", str(user_files / "images"),
                 "--output", str(feats), "--workers", "0"]) == 0
    before = _hashes(feats)
    code, err = _cli(["index", "--features", feats, "--output", feats, "--overwrite"], capsys)
    assert code == 2 and "is the same path as --features" in err and _hashes(feats) == before
    code, err = _cli(["index", "--features", feats, "--output", user_files / "notes"], capsys)
    assert code == 2 and "is a folder hardreid did not write" in err
    assert main(["index", "--features", str(feats), "--output", str(tmp_path / "index")]) == 0
    assert main(["index", "--features", str(feats), "--output", str(tmp_path / "index")]) == 0  # its own: rebuilt


def test_train_into_a_run_without_its_last_checkpoint_is_refused(tiny_root, tmp_path, capsys):
    from hardreid.config import dump_config

    dump_config(tiny_config(train={"epochs": 1, "iters": 1}), tmp_path / "tiny.yaml")
    run = tmp_path / "run"
    args = ["train", "--config", tmp_path / "tiny.yaml", "--data-root", tiny_root, "--output", run]
    assert _cli(args, capsys)[0] == 0
    (run / "checkpoints" / "last.pth").unlink()
    before = _hashes(run)
    code, err = _cli(args, capsys)
    assert code == 2 and "holds the files of an earlier run" in err and "checkpoints/best.pth" in err
    code, err = _cli([*args, "--resume"], capsys)
    assert code == 2 and "nothing to resume" in err
    assert _hashes(run) == before


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "x"])
def test_numbers_are_range_checked(user_files, value, capsys):
    code, err = _cli(["export", "--checkpoint", user_files / "best.pth", "--output", user_files / "m.onnx",
                      "--tolerance", value], capsys)
    assert code == 2 and "--tolerance" in err and not (user_files / "m.onnx").exists()


def test_an_empty_config_file_is_an_error(tiny_root, tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("# nothing yet\n")
    code, err = _cli(["train", "--config", tmp_path / "empty.yaml", "--data-root", tiny_root, "--output", tmp_path / "r"],
                     capsys)
    assert code == 2 and "empty.yaml is empty" in err and "write {} into the file" in err
    assert not (tmp_path / "r").exists()
