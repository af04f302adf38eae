"""End to end as a user would: train -> export -> extract a folder -> index -> search -> HTML report; test-only data; one unit."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from hardreid.cli import main

from conftest import tiny_config
from rounding import forward_error

HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))


def test_train_export_extract_index_search_report(tiny_root, tmp_path, capsys):
    pytest.importorskip("faiss", reason="index and search need faiss (pip install 'hardreid[search]')")
    from hardreid.config import dump_config

    dump_config(tiny_config(train={"epochs": 1, "eval_every": 0}), tmp_path / "tiny.yaml")
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--data-root", str(tiny_root),
                 "--output", str(tmp_path / "run")]) == 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    assert json.loads((tmp_path / "run" / "model_info.json").read_text())["backbone"] == "mobilenet_v2"

    fmt, suffix = ("onnx", "onnx") if HAS_ONNX else ("torchscript", "ts")  # torchscript needs no extra package
    model_file = tmp_path / f"model.{suffix}"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", fmt, "--output", str(model_file),
                 "--images", str(tiny_root / "query")]) == 0

    gallery = tmp_path / "my_gallery"  # any layout: nested folders, Market-style names or not
    shutil.copytree(tiny_root / "bounding_box_test", gallery / "day1")
    shutil.copy(sorted(gallery.glob("day1/*.jpg"))[0], gallery / "visitor.jpg")
    assert main(["extract", "--checkpoint", str(checkpoint), "--images", str(gallery), "--output", str(tmp_path / "feats"),
                 "--workers", "0"]) == 0
    assert main(["index", "--features", str(tmp_path / "feats"), "--output", str(tmp_path / "index")]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "index"), "--query", str(tiny_root / "query"), "--top-k", "5",
                 "--html", str(tmp_path / "report.html"), "--json", str(tmp_path / "hits.json"), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "top-1 correct for" in out and "wrote" in out

    hits = json.loads((tmp_path / "hits.json").read_text())["results"]
    num_queries = len(list((tiny_root / "query").iterdir()))
    assert len(hits) == num_queries and all(len(r["hits"]) == 5 for r in hits)
    for r in hits:
        scores = [h["score"] for h in r["hits"]]
        assert scores == sorted(scores, reverse=True) and -1.0 <= scores[-1] <= scores[0] <= 1.0 + 1e-6
        assert all(h["match"] == (h["pid"] == r["pid"]) for h in r["hits"] if h["pid"] not in (None, -1))
    page = (tmp_path / "report.html").read_text()
    assert page.count('class="row"') == num_queries and page.count("data:image/jpeg;base64,") == 6 * num_queries

    # the exported file gives the extracted features (same model, same preprocessing)
    from hardreid.export.formats import exported_runner
    from hardreid.retrieval import load_feature_model, load_features

    feats = load_features(tmp_path / "feats")
    rows = [0, 7, len(feats.records) - 1]
    fm = load_feature_model(checkpoint)
    gap, tol = exported_gap(exported_runner(fmt, model_file), fm, [feats.image_path(i) for i in rows],
                            np.asarray(feats.features[rows]))
    assert gap <= tol, (gap, tol)
    assert feats.records[-1].path == "visitor.jpg" and feats.records[-1].pid is None


def exported_gap(run, fm, paths, stored: np.ndarray) -> tuple[float, float]:
    """max |exported file's features of ``paths`` (one batch) - ``stored`` (hardreid extract: other batches, PyTorch)|
    and the tolerance: two float32 evaluations of unit features by different kernels or libraries differ by at most
    4 * forward_error (tests/rounding.py), ~2e-3 for this MobileNetV2 at 64x32 (measured: ~3e-6 with ONNX Runtime)."""
    import copy

    from hardreid.data.images import read_image
    from hardreid.data.transforms import eval_transform

    images = torch.stack([eval_transform(fm.cfg.data)(read_image(p)) for p in paths])
    gap = float(np.abs(run(images.numpy()) - stored).max())
    return gap, 4 * forward_error(copy.deepcopy(fm.model).eval(), images)


def test_exported_features_check_catches_an_export_in_train_mode(tiny_checkpoint, tiny_root, tmp_path, monkeypatch):
    """Negative twin: the exporter traces the network in train mode (BatchNorm with each batch's statistics)."""
    import copy

    from hardreid.data.transforms import eval_transform
    from hardreid.data.types import Sample
    from hardreid.evaluation.features import extract_features
    from hardreid.export import formats
    from hardreid.retrieval import load_feature_model

    fm = load_feature_model(tiny_checkpoint)
    paths = sorted((tiny_root / "bounding_box_test").iterdir())[:8]
    stored = extract_features(fm.model, [Sample(str(p), -1, 0) for p in paths], eval_transform(fm.cfg.data), 128, 0)
    plain = formats._plain
    monkeypatch.setattr(formats, "_plain", lambda model: plain(copy.deepcopy(model)).train())
    path = formats.export_model(fm.model, "torchscript", tmp_path / "m.ts", 64, 32)
    monkeypatch.undo()
    gap, tol = exported_gap(formats.exported_runner("torchscript", path), fm, paths[:3], stored[:3].numpy())
    assert gap > 10 * tol, (gap, tol)


def test_evaluate_and_extract_accept_a_test_only_folder(tiny_root, tiny_checkpoint, tmp_path, capsys):
    test_only = tmp_path / "test_only"
    for split in ("query", "bounding_box_test"):
        shutil.copytree(tiny_root / split, test_only / split)
    code = main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data-root", str(test_only), "--workers", "0",
                 "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "test-only" in captured.err and 0 <= json.loads((tmp_path / "r.json").read_text())["mAP"] <= 100
    assert (tmp_path / "r.html").read_text().count('class="row"') > 0
    assert main(["extract", "--checkpoint", str(tiny_checkpoint), "--images", str(test_only), "--output",
                 str(tmp_path / "feats"), "--workers", "0"]) == 0


def test_one_unit_for_scores_in_the_api_the_logs_and_the_json(tiny_root, tiny_checkpoint, tmp_path, capsys):
    import hardreid as hr
    from hardreid.retrieval import load_feature_model

    fm = load_feature_model(tiny_checkpoint)
    fm.cfg.data.workers = 0
    api = hr.evaluate(fm.model, hr.data.load("market", root=tiny_root), fm.cfg, device="cpu")
    assert main(["evaluate", "--checkpoint", str(tiny_checkpoint), "--data-root", str(tiny_root), "--workers", "0",
                 "--json", str(tmp_path / "r.json")]) == 0
    cli = json.loads((tmp_path / "r.json").read_text())
    logged = torch.load(tiny_checkpoint, weights_only=False)["history"][-1]  # the run's metrics row
    assert api.mAP == pytest.approx(cli["mAP"], abs=1e-9) == pytest.approx(logged["mAP"], abs=1e-9)
    assert api.rank(1) == pytest.approx(cli["cmc"]["1"], abs=1e-9) == pytest.approx(logged["top1"], abs=1e-9)
    assert api.mAP > 1.0  # percent, not a fraction (random features already give more than 1 %)


def test_new_commands_have_help_with_examples(capsys):
    for command in ("extract", "index", "search", "export", "info", "configs"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0 and "examples:" in capsys.readouterr().out


def test_user_mistakes_in_the_new_commands_get_one_clear_line(tmp_path, capsys):
    def error(args: list[str]) -> str:
        code = main(args)
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
        return err

    assert "needs --checkpoint FILE" in error(["extract", "--images", str(tmp_path), "--output", str(tmp_path / "f")])
    assert "nowhere does not exist" in error(["extract", "--backbone", "mobilenet_v2", "--images", str(tmp_path / "nowhere"),
                                              "--output", str(tmp_path / "f")])
    assert "holds no extracted features" in error(["index", "--features", str(tmp_path), "--output", str(tmp_path / "i")])
    assert "is not a gallery index" in error(["search", "--index", str(tmp_path), "--query", str(tmp_path)])
    assert "does not exist" in error(["info", "--config", "acfl/no_such_row"])
