"""Use a trained model: extract (file format, resume, model identity), index (exact and approximate), search."""

from __future__ import annotations

import copy
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hardreid.data.images import read_image
from hardreid.data.transforms import eval_transform
from hardreid.data.types import Sample
from hardreid.errors import UserError
from hardreid.evaluation.features import extract_features
from hardreid.retrieval import features as features_module
from hardreid.retrieval.features import describe_image, extract_folder, list_images, load_features
from hardreid.retrieval.index import GalleryIndex, build_index, choose_kind, default_nlist, measure_recall, recall_at_k
from hardreid.retrieval.model import identity_differences, load_feature_model
from hardreid.retrieval.search import (is_match, queries_from_features, queries_from_images, search_gallery, write_csv,
                                       write_json)

from rounding import forward_error, normalize_error, sum_error

faiss = pytest.importorskip("faiss", reason="index and search need faiss (pip install 'hardreid[search]')")


@pytest.fixture(scope="module")
def fm(tiny_checkpoint):
    return load_feature_model(tiny_checkpoint)


def test_records_parse_market_names_and_nothing_else():
    assert describe_image("a/0002_c3s1_000451_03.jpg") == features_module.ImageRecord("a/0002_c3s1_000451_03.jpg", 3, 2)
    assert describe_image("-1_c1s1_0.jpg").pid == -1
    assert describe_image("holiday/IMG_0001.JPG") == features_module.ImageRecord("holiday/IMG_0001.JPG", None, None)


def test_list_images_is_recursive_and_sorted(tmp_path):
    for rel in ("b/2.png", "a/x/1.JPG", "0.jpeg", "notes.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    root, paths = list_images(tmp_path)
    assert root == tmp_path.resolve() and paths == ["0.jpeg", "a/x/1.JPG", "b/2.png"]
    assert list_images(tmp_path / "b" / "2.png") == ((tmp_path / "b").resolve(), ["2.png"])
    with pytest.raises(UserError, match="no images"):
        list_images(_empty(tmp_path))
    with pytest.raises(UserError, match="does not exist"):
        list_images(tmp_path / "nowhere")


def _empty(tmp_path: Path) -> Path:
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


def test_extract_writes_the_documented_format(fm, tiny_root, tmp_path):
    folder = tiny_root / "bounding_box_test"
    fs = extract_folder(fm, folder, tmp_path / "feats", workers=0, shard_size=7, progress=False)
    paths = sorted(p.name for p in folder.iterdir())
    assert sorted(json.loads(line)["path"] for line in (tmp_path / "feats" / "images.jsonl").read_text().splitlines()) == paths
    stored = np.load(tmp_path / "feats" / "features.npy")
    assert stored.dtype == np.float32 and stored.shape == (len(paths), fm.model.feat_dim)
    np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)
    # the same numbers as the evaluation's extraction of these images, run on the same shards of 7 (one batch each):
    # the same kernels on the same shapes in the same order, so equal on every CPU (another batching would differ by
    # the CPU's rounding, up to ~4 * tests/rounding.forward_error = 2e-3 here)
    samples = [Sample(str(folder / p), -1, 0) for p in paths]
    expected = torch.cat([extract_features(fm.model, samples[i:i + 7], eval_transform(fm.cfg.data), 128, 0)
                          for i in range(0, len(samples), 7)])
    np.testing.assert_array_equal(stored, expected.numpy())
    manifest = json.loads((tmp_path / "feats" / "manifest.json").read_text())
    assert manifest["format"] == "hardreid-features-v1" and manifest["num_images"] == len(paths)
    assert manifest["model"]["sha256"] and manifest["model"]["height"] == 64 and manifest["model"]["flip"] is False
    assert not (tmp_path / "feats" / "shards").exists()  # joined and removed
    assert fs.records[0].camera is not None and fs.records[0].pid is not None
    assert fs.image_path(0) == folder.resolve() / fs.records[0].path


def test_interrupted_extraction_resumes_with_the_finished_shards(fm, tiny_root, tmp_path, monkeypatch):
    folder = tiny_root / "bounding_box_test"
    whole = extract_folder(fm, folder, tmp_path / "whole", workers=0, shard_size=5, progress=False)
    calls = []
    real = features_module.extract_features

    def failing(model, samples, *args, **kwargs):
        calls.append(len(samples))
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user stops it during the third shard
        return real(model, samples, *args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", failing)
    with pytest.raises(KeyboardInterrupt):
        extract_folder(fm, folder, tmp_path / "part", workers=0, shard_size=5, progress=False)
    assert sorted(p.name for p in (tmp_path / "part" / "shards").glob("*.npy")) == ["00000.npy", "00001.npy"]
    assert not (tmp_path / "part" / "manifest.json").exists()
    with pytest.raises(UserError, match="unfinished extraction"):
        load_features(tmp_path / "part")
    calls.clear()
    monkeypatch.setattr(features_module, "extract_features", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    (tmp_path / "part" / "shards" / "00001.npy").write_bytes(b"\x93NUMPY damaged")  # issue 24: a bad shard on resume
    resumed = extract_folder(fm, folder, tmp_path / "part", workers=0, shard_size=5, progress=False)
    num = len(whole.records)
    assert sum(calls) == num - 5  # only the shards that were not finished, and the damaged one again
    # exact by construction: both runs extract the same shards of 5 as single batches (same kernels and shapes)
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(whole.features))
    calls.clear()
    extract_folder(fm, folder, tmp_path / "part", workers=0, shard_size=5, progress=False)
    assert calls == []  # complete: nothing to do


def test_other_model_or_images_in_the_output_need_overwrite(fm, tiny_checkpoint, tiny_root, tmp_path):
    extract_folder(fm, tiny_root / "query", tmp_path / "f", workers=0, progress=False)
    flipped = load_feature_model(tiny_checkpoint, flip=True)
    with pytest.raises(UserError, match="flip: False vs True.*--overwrite"):
        extract_folder(flipped, tiny_root / "query", tmp_path / "f", workers=0, progress=False)
    with pytest.raises(UserError, match="other image files"):
        extract_folder(fm, tiny_root / "bounding_box_test", tmp_path / "f", workers=0, progress=False)
    fs = extract_folder(flipped, tiny_root / "query", tmp_path / "f", workers=0, progress=False, overwrite=True)
    assert fs.model["flip"] is True


def test_extract_never_deletes_or_replaces_what_it_did_not_write(fm, tiny_root, tmp_path):
    """Issue 24: --output into a folder of the user's, or onto the images themselves, is refused and leaves every
    byte; with --overwrite it writes its own files and deletes nothing of the user's."""
    import hashlib

    def hashes(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}

    images = tiny_root / "query"
    before = hashes(tiny_root)
    for output in (images, images / "feats", tiny_root):
        with pytest.raises(UserError, match="never writes (over|into) (what|a folder around what) it reads"):
            extract_folder(fm, images, output, workers=0, progress=False, overwrite=True)
    assert hashes(tiny_root) == before
    mine = tmp_path / "mine"
    (mine / "shards").mkdir(parents=True)
    (mine / "shards" / "notes.txt").write_text("my notes")
    (mine / "features.npy").write_bytes(b"my own array")
    with pytest.raises(UserError, match="is a folder hardreid did not write"):
        extract_folder(fm, images, mine, workers=0, progress=False)
    with pytest.raises(UserError, match="shards exists and was not written by 'hardreid extract'"):
        extract_folder(fm, images, mine, workers=0, progress=False, overwrite=True)
    assert (mine / "shards" / "notes.txt").read_text() == "my notes" and (mine / "features.npy").read_bytes() == b"my own array"
    (mine / "shards" / "notes.txt").rename(mine / "notes.txt")
    (mine / "shards").rmdir()
    fs = extract_folder(fm, images, mine, workers=0, progress=False, overwrite=True)
    assert len(fs.records) == len(list(images.iterdir())) and (mine / "notes.txt").read_text() == "my notes"


def test_identity_tells_models_apart(fm, tiny_checkpoint, tmp_path):
    state = torch.load(tiny_checkpoint, weights_only=False)
    state["model"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "other.pth")
    other = load_feature_model(tmp_path / "other.pth")
    assert [d.split(":")[0] for d in identity_differences(fm.identity(), other.identity())] == ["sha256"]
    a = load_feature_model(backbone="mobilenet_v2", height=64, width=32)
    b = load_feature_model(backbone="mobilenet_v2", height=64, width=32)
    assert identity_differences(a.identity(), b.identity()) == []  # random init is seeded: the same features
    x = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(a.model(x), b.model(x))  # the same weights, kernels and shapes: exact by construction


def _feature_dir(tmp_path: Path, feats: np.ndarray, names: list[str], model: dict | None = None) -> Path:
    """A features folder in the documented format, written by hand (for index and search tests)."""
    folder = tmp_path / "feats"
    folder.mkdir()
    np.save(folder / "features.npy", feats.astype(np.float32))
    features_module.write_records([describe_image(n) for n in names], folder / "images.jsonl")
    manifest = {"format": features_module.FORMAT, "image_root": str(tmp_path / "images"), "num_images": len(names),
                "dim": feats.shape[1], "model": model or {"backbone": "x", "sha256": "abc"}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((max(1, n // 20), dim))
    x = centres[rng.integers(0, len(centres), n)] + 0.7 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _rank_margin(queries: np.ndarray, feats: np.ndarray, ranks: slice) -> float:
    """Smallest gap between consecutive exact (float64) similarities at the given positions of each query's ranking."""
    sims = np.sort(queries.astype(np.float64) @ feats.T.astype(np.float64), axis=1)[:, ::-1]
    return float(np.diff(-sims, axis=1)[:, ranks].min())


def _order_bound(dim: int) -> float:
    """faiss's kernels and numpy's BLAS round a d-term dot product of unit vectors differently by CPU, each within
    d u of the exact value: two items whose exact similarities differ by more than 2 d u keep their order in both."""
    return 2 * sum_error(dim, 1.0)


def test_flat_index_is_exact_search(tmp_path):
    feats = _clustered(300, 16)
    folder = _feature_dir(tmp_path, feats, [f"{i // 3:04d}_c{1 + i % 3}s1_{i:06d}_00.jpg" for i in range(300)])
    index = build_index(folder, tmp_path / "index")
    assert index.meta["kind"] == "flat" and "recall_at_10" not in index.meta
    queries = _clustered(5, 16, seed=1)
    scores, rows = GalleryIndex.load(tmp_path / "index").search(queries, 7)
    sims = queries @ feats.T
    assert _rank_margin(queries, feats, slice(0, 7)) > 10 * _order_bound(16)  # no near-tie in the top 8: one order
    np.testing.assert_array_equal(rows, np.argsort(-sims, axis=1, kind="stable")[:, :7])
    np.testing.assert_allclose(scores, np.sort(sims, axis=1)[:, ::-1][:, :7], atol=1e-5)  # each within 16 u = 1e-6


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_reports_its_recall_against_exact(tmp_path, kind):
    feats = _clustered(4000, 32)
    folder = _feature_dir(tmp_path, feats, [f"img{i}.jpg" for i in range(4000)])
    index = build_index(folder, tmp_path / "index", kind=kind, nprobe=4 if kind == "ivf" else None)
    # recall compares sets of the top 10 others (top 11 with the query itself): no near-tie at that boundary, so faiss
    # and numpy (in blocks or at once) agree on the exact lists on every CPU, and the wide IVF's recall is exactly 1
    queries = feats[np.sort(np.random.default_rng(0).choice(4000, size=200, replace=False))]
    assert _rank_margin(queries, feats, slice(10, 11)) > 10 * _order_bound(32)
    if kind == "ivf":
        assert build_index(folder, tmp_path / "default", kind="ivf").meta["params"]["nprobe"] == 16  # a quarter of 63
    assert index.meta["kind"] == kind and 0.5 < index.meta["recall_at_10"] <= 1.0
    # the recorded recall is what a direct comparison with brute force gives
    rows = np.sort(np.random.default_rng(0).choice(4000, size=200, replace=False))
    _, found = index.index.search(feats[rows], 11)
    exact = np.argsort(-(feats[rows] @ feats.T), axis=1, kind="stable")[:, :11]
    drop = [lambda t, r=r: [j for j in t if j != r][:10] for r in rows]
    manual = recall_at_k(np.array([f(t) for f, t in zip(drop, found)]), np.array([f(t) for f, t in zip(drop, exact)]))
    assert index.meta["recall_at_10"] == pytest.approx(manual, abs=0.01)
    if kind == "ivf":
        assert index.meta["params"]["nlist"] == default_nlist(4000) == 63 and index.meta["params"]["nprobe"] == 4
        wider = build_index(folder, tmp_path / "wide", kind="ivf", nprobe=default_nlist(4000))
        assert wider.meta["recall_at_10"] == pytest.approx(1.0)  # every list scanned: exact


def test_recall_helpers_and_auto_kind(monkeypatch):
    assert recall_at_k(np.array([[1, 2, 3], [4, 5, -1]]), np.array([[3, 2, 9], [4, 5, 6]])) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert choose_kind("auto", 262_144, 2048) == "flat" and choose_kind("auto", 262_145, 2048) == "ivf"  # 2 GiB
    assert choose_kind("auto", 1_000_000, 512) == "flat" and choose_kind("hnsw", 10, 8) == "hnsw"
    from hardreid.retrieval import index as index_module

    monkeypatch.setattr(index_module, "EXACT_MAX_VALUES", 100 * 8)
    assert index_module.choose_kind("auto", 101, 8) == "ivf" and index_module.choose_kind("auto", 100, 8) == "flat"
    with pytest.raises(UserError, match="unknown index kind"):
        choose_kind("lsh", 10, 8)
    exact = faiss.IndexFlatIP(8)
    feats = _clustered(100, 8)
    exact.add(feats)
    queries = feats[np.sort(np.random.default_rng(0).choice(100, size=50, replace=False))]  # measure_recall's draw
    assert _rank_margin(queries, feats, slice(10, 11)) > 10 * _order_bound(8)  # faiss and numpy find the same top 11
    assert measure_recall(exact, feats, k=10, queries=50) == pytest.approx(1.0)


def test_search_marks_matches_and_writes_json_and_csv(tmp_path):
    names = ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg", "0002_c1s1_000003_00.jpg", "-1_c2s1_000004_00.jpg",
             "street/unknown.jpg"]
    feats = np.eye(5, 8, dtype=np.float32)
    folder = _feature_dir(tmp_path, feats, names)
    index = build_index(folder, tmp_path / "index")
    queries = queries_from_features(folder)
    results = search_gallery(index, queries, k=3)
    first = results[0]
    assert first.query == names[0] and [h.path for h in first.hits][0] == names[0]
    assert first.hits[0].score == pytest.approx(1.0) and first.hits[0].match is True
    assert [h.match for h in results[2].hits][0] is True and results[3].hits[0].match is None  # junk is unknown
    assert results[4].hits[0].match is None and results[4].pid is None
    assert is_match(1, 2) is False and is_match(None, 1) is None and is_match(0, 0) is True
    payload = json.loads(write_json(results, tmp_path / "hits.json", index, queries).read_text())
    assert payload["results"][0]["hits"][0] == {"rank": 1, "row": 0, "path": names[0], "score": pytest.approx(1.0),
                                                "camera": 1, "pid": 1, "match": True}
    rows = list(csv.DictReader(open(write_csv(results, tmp_path / "hits.csv"))))
    assert len(rows) == 15 and rows[0]["query"] == names[0] and rows[0]["match"] == "1"
    own = [r for r in rows if r["query"] == names[4]][0]  # an unlabelled image finds itself: no pid, no match
    assert own["gallery"] == names[4] and own["pid"] == "" and own["camera"] == "" and own["match"] == ""


def test_search_refuses_query_features_of_another_model(tmp_path):
    folder = _feature_dir(tmp_path, np.eye(3, 4, dtype=np.float32), ["a.jpg", "b.jpg", "c.jpg"])
    index = build_index(folder, tmp_path / "index")
    queries = queries_from_features(folder)
    queries.model = {"backbone": "x", "sha256": "def"}
    with pytest.raises(UserError, match="another model.*sha256: abc vs def"):
        search_gallery(index, queries)


def _self_match_tolerance(fm, image: torch.Tensor) -> float:
    """How far below 1 an image's score with itself may be when the query (a batch of 1) and the gallery (one batch of
    all) are extracted with different kernels: the two unit features differ by d <= 2 * 2 * forward_error, which
    lowers q.g by d^2 / 2; each is unit within normalize_error of D values, and faiss rounds the D-term dot within D u."""
    dim = fm.model.feat_dim
    d = 4 * forward_error(copy.deepcopy(fm.model).eval(), image)
    return d * d / 2 + 2 * normalize_error(dim) + sum_error(dim, 1.0)


def _self_match(fm, tiny_root, tmp_path):
    gallery = extract_folder(fm, tiny_root / "bounding_box_test", tmp_path / "g", workers=0, progress=False)
    index = build_index(gallery, tmp_path / "index")
    one = sorted((tiny_root / "bounding_box_test").iterdir())[3]
    hit = search_gallery(index, queries_from_images(fm, one, workers=0), k=1)[0].hits[0]
    image = eval_transform(fm.cfg.data)(read_image(one)).unsqueeze(0)
    return one, hit, index, _self_match_tolerance(fm, image)


def test_query_images_use_the_gallerys_model(fm, tiny_root, tmp_path):
    one, hit, index, tol = _self_match(fm, tiny_root, tmp_path)
    assert hit.path == one.name and hit.score == pytest.approx(1.0, abs=tol)  # the image finds itself
    shutil.rmtree(tmp_path / "g")  # the index is usable without the features folder
    assert GalleryIndex.load(tmp_path / "index").records[3].path == one.name


def test_self_match_check_catches_queries_preprocessed_unlike_the_gallery(fm, tiny_root, tmp_path, monkeypatch):
    """Negative twin: query features extracted with flip while the gallery's were not."""
    from hardreid.retrieval import search as search_module

    real = search_module.extract_features
    monkeypatch.setattr(search_module, "extract_features", lambda *a, **k: real(*a, **{**k, "flip": True}))
    _, hit, _, tol = _self_match(fm, tiny_root, tmp_path)
    assert 1.0 - hit.score > 100 * tol, (hit.score, tol)
