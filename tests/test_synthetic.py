"""Tests of the synthetic Market-1501-style data set generator."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hardreid.data.synthetic import SPLIT_DIRS, SyntheticConfig, generate_synthetic
from hardreid.errors import UserError

NAME = re.compile(r"([-\d]+)_c(\d)")
SMALL = SyntheticConfig(num_train_ids=6, num_test_ids=6, num_distractors=2)


def _parse(folder: Path) -> list[tuple[Path, int, int]]:
    """(path, pid, camera 1-based) of every image, as a Market-1501 loader parses them."""
    out = []
    for path in sorted(folder.glob("*.jpg")):
        match = NAME.search(path.name)
        assert match, path.name
        out.append((path, int(match.group(1)), int(match.group(2))))
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*")) if p.is_file()
    }


def _colour_feature(path: Path) -> np.ndarray:
    """3x8-bin RGB histogram of the central region (where the body is)."""
    x = np.asarray(Image.open(path).convert("RGB"))
    h, w, _ = x.shape
    centre = x[h // 5: h * 17 // 20, w * 3 // 10: w * 7 // 10].reshape(-1, 3)
    hist = np.concatenate([np.bincount(centre[:, c] // 32, minlength=8) for c in range(3)]).astype(float)
    return hist / np.linalg.norm(hist)


@pytest.fixture(scope="module")
def default_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic(tmp_path_factory.mktemp("syn") / "default")


def test_layout_names_and_counts(default_set: Path) -> None:
    cfg = SyntheticConfig()
    meta = json.loads((default_set / "synthetic.json").read_text())
    assert (default_set / "README.txt").is_file()
    train = _parse(default_set / "bounding_box_train")
    query = _parse(default_set / "query")
    gallery = _parse(default_set / "bounding_box_test")
    for split, items in zip(SPLIT_DIRS, (train, query, gallery)):
        assert len(items) == meta["counts"][split]
        for path, pid, cam in items:
            assert re.fullmatch(r"\d{4}_c\ds1_\d{6}_00\.jpg", path.name)
            assert 1 <= cam <= cfg.num_cameras
        assert Image.open(items[0][0]).size == (cfg.width, cfg.height)
    train_ids = {pid for _, pid, _ in train}
    test_ids = {pid for _, pid, _ in gallery if pid != 0}
    assert train_ids == set(range(1, cfg.num_train_ids + 1))
    assert len(test_ids) == cfg.num_test_ids and not train_ids & test_ids
    assert {pid for _, pid, _ in query} <= test_ids
    assert sum(pid == 0 for _, pid, _ in gallery) == cfg.num_distractors
    # every identity appears in >= min_cameras cameras with images_per_camera images each
    per_id: dict[int, dict[int, int]] = {}
    for _, pid, cam in train + query + [g for g in gallery if g[1] != 0]:
        per_id.setdefault(pid, {}).setdefault(cam, 0)
        per_id[pid][cam] += 1
    for cams in per_id.values():
        assert len(cams) >= cfg.min_cameras
        assert set(cams.values()) == {cfg.images_per_camera}
    assert 450 <= len(train) <= 900


def test_every_query_has_cross_camera_match(default_set: Path) -> None:
    gallery = {(pid, cam) for _, pid, cam in _parse(default_set / "bounding_box_test")}
    query = _parse(default_set / "query")
    assert query
    for _, pid, cam in query:
        assert any(p == pid and c != cam for p, c in gallery), (pid, cam)


def test_colour_baseline_is_above_chance_but_far_from_perfect(default_set: Path) -> None:
    query = _parse(default_set / "query")
    gallery = _parse(default_set / "bounding_box_test")
    qf = np.stack([_colour_feature(p) for p, _, _ in query])
    gf = np.stack([_colour_feature(p) for p, _, _ in gallery])
    qp, qc = np.array([q[1] for q in query]), np.array([q[2] for q in query])
    gp, gc = np.array([g[1] for g in gallery]), np.array([g[2] for g in gallery])
    sim = qf @ gf.T
    hits, chance = [], []
    for i in range(len(query)):
        valid = ~((gp == qp[i]) & (gc == qc[i]))
        best = np.argmax(np.where(valid, sim[i], -np.inf))
        hits.append(gp[best] == qp[i])
        chance.append(np.mean(gp[valid] == qp[i]))
    top1, chance_rate = float(np.mean(hits)), float(np.mean(chance))
    assert top1 > 2 * chance_rate, (top1, chance_rate)
    assert top1 < 0.9, top1


def test_lookalike_groups_are_closer_than_random_pairs(default_set: Path) -> None:
    meta = json.loads((default_set / "synthetic.json").read_text())
    groups = meta["lookalike_groups"]
    assert len(groups) >= 5 and all(len(g) == SyntheticConfig().lookalike_group_size for g in groups)
    means: dict[int, list[np.ndarray]] = {}
    for split in SPLIT_DIRS:
        for path, pid, _ in _parse(default_set / split):
            if pid:
                x = np.asarray(Image.open(path).convert("RGB"), float)
                means.setdefault(pid, []).append(x[26:115, 16:48].reshape(-1, 3).mean(0))
    mean = {pid: np.mean(v, axis=0) for pid, v in means.items()}
    within = [np.linalg.norm(mean[a] - mean[b]) for g in groups for a in g for b in g if a < b]
    pids = sorted(mean)
    rng = np.random.default_rng(0)
    between = [np.linalg.norm(mean[a] - mean[b]) for a, b in rng.choice(pids, size=(500, 2)) if a != b]
    assert np.mean(within) < 0.7 * np.mean(between), (np.mean(within), np.mean(between))


def test_deterministic_and_seed_dependent(tmp_path: Path) -> None:
    a = _hashes(generate_synthetic(tmp_path / "a", SMALL))
    b = _hashes(generate_synthetic(tmp_path / "b", SMALL))
    assert a == b and len(a) > 50
    c = _hashes(generate_synthetic(tmp_path / "c", replace(SMALL, seed=1)))
    images = [k for k in a if k.endswith(".jpg")]
    assert sum(a[k] != c.get(k) for k in images) > 0.9 * len(images)


def test_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_synthetic(tmp_path, SMALL)
    (tmp_path / "README.txt").write_text("someone else's data")
    with pytest.raises(UserError):
        generate_synthetic(tmp_path, SMALL)


def test_regenerates_over_own_output(tmp_path: Path) -> None:
    out = tmp_path / "syn"
    generate_synthetic(out, SMALL)
    first = _hashes(out)
    marker = out / "query" / "keep_if_skipped.txt"
    marker.write_text("x")
    generate_synthetic(out, SMALL)  # same config: skipped
    assert marker.exists()
    smaller = replace(SMALL, num_test_ids=3)
    generate_synthetic(out, smaller)  # different config: overwritten
    assert not marker.exists()
    assert json.loads((out / "synthetic.json").read_text())["config"]["num_test_ids"] == 3
    generate_synthetic(out, SMALL)
    assert _hashes(out) == first


def test_invalid_config_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="num_cameras"):
        generate_synthetic(tmp_path / "x", SyntheticConfig(num_cameras=12))
    with pytest.raises(UserError, match="min_cameras"):
        generate_synthetic(tmp_path / "x", SyntheticConfig(min_cameras=1))
