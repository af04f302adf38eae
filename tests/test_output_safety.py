"""Issue 24: nothing the user has is lost. Write failures are one line and leave the old file; inputs that would
hang or mislead are refused or skipped before work starts; training says where it silently failed."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config
from hardreid.errors import UserError
from hardreid.files import TEMP_SUFFIX, atomic_write, atomic_write_path
from hardreid.retrieval.features import FeatureSet, ImageRecord, check_feature_values, list_images, read_records, write_records
from hardreid.retrieval.search import csv_cell
from hardreid.training.checkpoint import check_checkpoint_keys, state_dict_differences


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class _FullDisk:
    """A file handle whose writes fail as on a full disk."""

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def flush(self):
        pass


@pytest.mark.parametrize("writer", ["plain", "torch.save"])
def test_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, writer):
    target = tmp_path / "best.pth"
    target.write_bytes(b"the previous checkpoint")

    def write(handle):
        full = _FullDisk()
        if writer == "plain":
            full.write(b"x")
        else:
            torch.save({"w": torch.zeros(1000)}, full)

    with pytest.raises(UserError) as err:
        atomic_write(target, write)
    message = str(err.value)
    assert message.startswith(f"cannot write {target}: ") and "\n" not in message
    assert target.read_bytes() == b"the previous checkpoint" and not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_path_writers_failures_are_one_line_and_bugs_are_not_hidden(tmp_path):
    target = tmp_path / "index.faiss"
    target.write_bytes(b"old index")

    def faiss_like(tmp):
        Path(tmp).write_bytes(b"half")
        raise RuntimeError("Error in faiss::FileIOWriter::operator() at impl/io.cpp:95: fwrite failed: No space left")

    with pytest.raises(UserError, match=r"cannot write .*index.faiss: Error in faiss.*fwrite failed"):
        atomic_write_path(target, faiss_like)
    assert target.read_bytes() == b"old index" and not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))

    def bug(tmp):
        raise RuntimeError("shape mismatch in the model")  # not a write failure: must surface as it is

    with pytest.raises(RuntimeError, match="shape mismatch"):
        atomic_write_path(target, bug)


@pytest.mark.parametrize("cell, shown", [("=HYPERLINK(\"x\")", "'=HYPERLINK(\"x\")"), ("+1", "'+1"), ("-2+3", "'-2+3"),
                                         ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("0001_c1.jpg", "0001_c1.jpg")])
def test_csv_cells_never_start_a_formula(cell, shown):
    assert csv_cell(cell) == shown


@pytest.mark.parametrize("bad", ["../secret.jpg", "/etc/passwd", "a/../../b.jpg", "a\\..\\b.jpg"])
def test_manifest_paths_must_stay_inside_the_image_root(tmp_path, bad):
    path = tmp_path / "images.jsonl"
    write_records([ImageRecord("0001_c1_0.jpg", 1, 1), ImageRecord(bad, 1, 1)], path)
    with pytest.raises(UserError, match=r"record 2: path .* leaves the image root"):
        read_records(path)


def _fifo_folder(tmp_path: Path, name: str = "imgs") -> Path:
    from PIL import Image

    folder = tmp_path / name
    folder.mkdir(parents=True)
    Image.new("RGB", (16, 32), "red").save(folder / "0001_c1_000.jpg")
    os.mkfifo(folder / "0002_c1_000.jpg")  # named like an image: opening it would block forever
    return folder


def _within(seconds: float, work):
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(value=work()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "hung on a FIFO"
    return result["value"]


def test_image_folders_skip_fifos_with_a_warning(tmp_path, capsys):
    root, paths = _within(20, lambda: list_images(_fifo_folder(tmp_path)))
    assert paths == ["0001_c1_000.jpg"]
    assert "skipped 1 entry" in capsys.readouterr().err


def test_data_sets_skip_fifos_with_a_warning(tmp_path):
    from hardreid.data.datasets import load_dataset

    root = tmp_path / "market"
    for split in ("bounding_box_train", "query", "bounding_box_test"):
        _fifo_folder(root, split)
    dataset = _within(20, lambda: load_dataset("market", root))
    assert len(dataset.train) == 1 and any("not regular files" in w for w in dataset.warnings)


def test_checkpoint_keys_are_checked_one_by_one(tmp_path):
    good = {"config": {}, "model": {}, "eval_model": {}, "epoch": 3}
    check_checkpoint_keys(good, "c.pth")
    with pytest.raises(UserError, match=r"c.pth has no 'config' \(the run's config as a dict\)"):
        check_checkpoint_keys({"model": {}}, "c.pth")
    with pytest.raises(UserError, match=r"'eval_model' should be the evaluated model's state dict \(dict\), found list"):
        check_checkpoint_keys({**good, "eval_model": [1]}, "c.pth")
    with pytest.raises(UserError, match=r"'epoch' .* found bool"):
        check_checkpoint_keys({**good, "epoch": True}, "c.pth")


def test_architecture_mismatch_is_a_short_line():
    from hardreid.models import build_model

    ours = build_model("resnet18", pretrained=False).state_dict()
    theirs = build_model("mobilenet_v2", pretrained=False).state_dict()
    text = state_dict_differences(ours, theirs)
    assert len(text) < 400 and text.startswith(f"{sum(k not in theirs for k in ours)} missing keys: ")
    assert "more" in text and "unexpected keys" in text


def _feature_set(rows: np.ndarray) -> FeatureSet:
    return FeatureSet(rows.astype(np.float32), [ImageRecord(f"{i:04d}_c1_0.jpg", 1, i) for i in range(len(rows))], {})


def test_features_must_be_finite_unit_vectors():
    rng = np.random.default_rng(0)
    good = rng.normal(size=(10, 8))
    good /= np.linalg.norm(good, axis=1, keepdims=True)
    check_feature_values(_feature_set(good), chunk_rows=3)
    nan = good.copy()
    nan[7, 2] = np.nan
    with pytest.raises(UserError, match=r"feature row 7 \(0007_c1_0.jpg\) is not finite"):
        check_feature_values(_feature_set(nan), chunk_rows=3)
    scaled = good.copy()
    scaled[4] *= 3
    with pytest.raises(UserError, match=r"feature row 4 .* has length 3, not 1"):
        check_feature_values(_feature_set(scaled), chunk_rows=3)


def test_one_cluster_is_a_collapse_warning():
    from hardreid.config import Config
    from hardreid.pseudo_labels.epoch import cluster_epoch

    cfg = Config().cluster
    cfg.k1, cfg.k2, cfg.min_samples, cfg.eps = 6, 2, 2, 0.99  # a radius that links everything
    torch.manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(20, 8), dim=1)
    clusters = cluster_epoch(features, np.zeros(20, dtype=int), cfg)
    assert clusters.stats.num_clusters == 1 and "one_cluster" in clusters.reasons
    assert "form one cluster, so the contrastive loss is 0" in clusters.warning and "lower cluster.eps" in clusters.warning


def test_train_refuses_a_run_folder_whose_last_checkpoint_is_gone(tiny_root, tmp_path):
    from hardreid.data.datasets import load_dataset
    from hardreid.runs import train

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pth").write_bytes(b"the best model of an earlier run")
    (run / "metrics.json").write_text("[]")
    before = _hashes(run)
    with pytest.raises(UserError, match=r"holds the files of an earlier run \(checkpoints/best.pth, metrics.json\)"):
        train(tiny_config(), load_dataset("market", tiny_root), run, log_to_stderr=False)
    assert _hashes(run) == before


def test_train_refuses_an_output_inside_the_data(tiny_root, tmp_path):
    from hardreid.data.datasets import load_dataset
    from hardreid.runs import train

    before = _hashes(tiny_root)
    with pytest.raises(UserError, match=r"--output .* lies inside --data-root"):
        train(tiny_config(), load_dataset("market", tiny_root), tiny_root / "run", log_to_stderr=False)
    assert _hashes(tiny_root) == before


def test_resume_refuses_other_pixels_under_the_same_names(tiny_root, tmp_path):
    import shutil

    from hardreid.data.datasets import load_dataset
    from hardreid.runs import train

    data = tmp_path / "data"
    shutil.copytree(tiny_root, data)
    run = tmp_path / "run"
    cfg = tiny_config(train={"epochs": 1, "iters": 1, "eval_every": 0, "eval_at_start": False})
    train(cfg, load_dataset("market", data), run, log_to_stderr=False)
    recorded = json.loads(json.dumps(torch.load(run / "checkpoints" / "last.pth", weights_only=False)["trained_on"]))
    assert {"train_names_sha1", "train_sizes_sha1", "train_content_sha1"} <= set(recorded["data"])
    from hardreid.training import resume as resume_module

    resume_module._fingerprint.cache_clear()
    first = sorted((data / "bounding_box_train").iterdir())[0]  # sampled: the first file in name order always is
    from PIL import Image

    Image.new("RGB", Image.open(first).size, "blue").save(first)
    longer = tiny_config(train={"epochs": 2, "iters": 1, "eval_every": 0, "eval_at_start": False})
    with pytest.raises(UserError, match=r"was trained on other pixels: .* same names but other contents"):
        train(longer, load_dataset("market", data), run, resume=True, log_to_stderr=False)


@pytest.mark.parametrize("size", [(1, 1), (7, 64)])
def test_images_too_small_to_show_a_person_are_refused(tmp_path, size):
    from PIL import Image

    from hardreid.data.images import read_image

    path = tmp_path / "0001_c1_0.png"
    Image.new("RGB", size, "red").save(path)
    with pytest.raises(UserError, match=rf"is {size[0]}x{size[1]} pixels, below the 8-pixel minimum side"):
        read_image(path)
    Image.new("RGB", (8, 8), "red").save(path)
    assert read_image(path).size == (8, 8)


@pytest.mark.parametrize("text", ["{not json", "{\"epoch\": 1}", "[{\"mAP\": 3}]"])
def test_damaged_metrics_are_one_line_for_the_curves(tmp_path, text):
    from hardreid.viz.curves import plot_training_curves

    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(UserError, match=r"metrics.json"):
        plot_training_curves(tmp_path)
