"""Few images per identity: the synthetic generator's few-shot options and ``datasets subsample``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pytest

from hardreid.cli import main
from hardreid.data.datasets import load_dataset
from hardreid.data.subsample import select_per_identity, subsample_dataset
from hardreid.data.synthetic import SyntheticConfig, generate_synthetic
from hardreid.data.types import Sample
from hardreid.errors import UserError

# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("per_id", [2, 3])
def test_synthetic_few_images_per_identity_over_two_cameras(tmp_path, per_id):
    cfg = SyntheticConfig(num_train_ids=8, num_test_ids=4, num_cameras=2, images_per_camera=2,
                          train_images_per_id=per_id, camera_colour_strength=3.0, num_distractors=0, seed=2)
    data = load_dataset("market", generate_synthetic(tmp_path / "few", cfg))
    per_identity = Counter(s.pid for s in data.train)
    assert len(per_identity) == 8 and set(per_identity.values()) == {per_id}
    for pid in per_identity:
        cams = Counter(s.camid for s in data.train if s.pid == pid)
        assert sorted(cams.values()) == sorted([(per_id + 1) // 2, per_id // 2])  # both cameras, in turn
    # query and gallery keep images_per_camera: 4 test identities x 2 cameras x 2 images
    assert len(data.query) + len(data.gallery) == 4 * 2 * 2


def test_synthetic_option_limits(tmp_path):
    with pytest.raises(UserError, match="camera_colour_strength must be between 0 and 4"):
        generate_synthetic(tmp_path / "x", SyntheticConfig(camera_colour_strength=4.5))
    with pytest.raises(UserError, match="train_images_per_id must be >= 0"):
        generate_synthetic(tmp_path / "x", SyntheticConfig(train_images_per_id=-1))


def test_synth_command_few_shot_flags(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["datasets", "synth", str(out), "--train-ids", "5", "--test-ids", "2", "--cameras", "2",
                 "--train-images-per-id", "2", "--colour-strength", "3", "--images-per-camera", "2"]) == 0
    meta = json.loads((out / "synthetic.json").read_text())
    assert meta["config"]["train_images_per_id"] == 2 and meta["config"]["camera_colour_strength"] == 3.0
    assert meta["counts"]["bounding_box_train"] == 10


# --------------------------------------------------------------------------- subsample


def samples(spec: dict[int, dict[int, int]]) -> list[Sample]:
    """``{pid: {camid: images}}`` -> samples with distinct paths."""
    return [Sample(f"{pid}_{cam}_{i}.jpg", pid, cam) for pid, cams in spec.items()
            for cam, count in cams.items() for i in range(count)]


def test_select_per_identity_balances_cameras():
    items = samples({1: {0: 5, 1: 1}, 2: {0: 3, 1: 3}, 3: {0: 2}, 4: {0: 4, 1: 4, 2: 4}})
    kept = select_per_identity(items, 4, seed=0)
    cams = {pid: Counter(s.camid for s in kept if s.pid == pid) for pid in (1, 2, 3, 4)}
    assert cams[1] == {0: 3, 1: 1} and cams[2] == {0: 2, 1: 2} and cams[3] == {0: 2}
    assert sorted(cams[4].values()) == [1, 1, 2]
    assert [items.index(s) for s in kept] == sorted(items.index(s) for s in kept)  # input order
    assert Counter(s.pid for s in select_per_identity(items, 1)) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert select_per_identity(items, 4, seed=0) == kept
    assert any(select_per_identity(items, 4, seed=s) != kept for s in range(1, 6))
    with pytest.raises(UserError, match="--max-per-id must be a positive integer"):
        select_per_identity(items, 0)


def test_subsample_writes_a_market_copy(tiny_root, tmp_path, capsys):
    out = tmp_path / "k2"
    report = subsample_dataset(tiny_root, out, 2, seed=1)
    source, copy = load_dataset("market", tiny_root), load_dataset("market", out)
    assert report.counts == {"train": 20, "query": len(source.query), "gallery": len(source.gallery)}
    assert report.identities == 10 and not report.up_to_date and sum(report.links.values()) == sum(report.counts.values())
    per_id = Counter(s.pid for s in copy.train)
    assert set(per_id.values()) == {2} and len(per_id) == 10
    assert all(len({s.camid for s in copy.train if s.pid == pid}) == 2 for pid in per_id)  # one image per camera
    for split in ("query", "gallery"):
        names = lambda d: sorted(os.path.basename(s.path) for s in getattr(d, split))  # noqa: E731
        assert names(copy) == names(source)
    for s in copy.train + copy.query:
        assert os.path.samefile(s.path, Path(tiny_root) / Path(s.path).parent.name / Path(s.path).name)
    assert subsample_dataset(tiny_root, out, 2, seed=1).up_to_date
    assert main(["datasets", "subsample", str(tiny_root), str(out), "--max-per-id", "1"]) == 0
    assert "train 10 of 60 images, 10 identities" in capsys.readouterr().out
    assert len(load_dataset("market", out).train) == 10


def test_subsample_errors(tiny_root, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no subsample.json"):
        subsample_dataset(tiny_root, foreign, 2)
    with pytest.raises(UserError, match="must not lie inside its source"):
        subsample_dataset(tiny_root, Path(tiny_root) / "k2", 2)
    with pytest.raises(UserError, match="needs a data set in Market-1501 layout"):
        subsample_dataset(tiny_root, tmp_path / "x", 2, format="folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["datasets", "subsample", str(tiny_root), str(tmp_path / "y"), "--max-per-id", "0"])
    assert exit_info.value.code == 2 and "--max-per-id: must be >= 1, got 0" in capsys.readouterr().err
