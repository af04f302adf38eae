"""benchmarks/pseudo_label_robustness.py at toy size: rows in their own processes, resumable, one table.

The end-to-end run is marked slow (``-m slow``); the rest checks the plan, the resume logic and the table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import load_benchmark, tiny_config


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("pseudo_label_robustness")


@pytest.fixture
def toy(tmp_path):
    """The tiny settings as a YAML, and the arguments every call shares (synthetic rows only, no weights)."""
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config(train={"epochs": 1, "iters": 2, "eval_every": 1}).to_dict()))
    return ["--config", str(config), "--datasets", "synth4", "--synthetic-ids", "10", "4", "--output",
            str(tmp_path / "out")]


def test_dry_run_and_argument_errors(bench, toy, capsys):
    assert bench.main([*toy, "--dry-run", "--option", "ms3=cluster.min_samples=3,cluster.eps=0.55"]) == 0
    text = capsys.readouterr().out
    assert "11 rows (0 done)" in text and "synth4     camera_penalty       todo     cluster.same_camera_penalty=0.1" in text
    assert "synth4     camera_proxy         todo     method.hard_samples=[camera_proxy]" in text
    assert "synth4     cpu_mobilenet        todo     cluster.min_samples=2 method.hard_samples=[camera_proxy]" in text
    assert "ms3" in text and "cluster.min_samples=3 cluster.eps=0.55" in text
    assert bench.main([*toy, "--options", "nothing", "--dry-run"]) == 2
    assert "unknown option(s) nothing" in capsys.readouterr().err
    assert bench.main([*toy, "--datasets", "cuhk03_k4", "--dry-run"]) == 2
    assert "need --cuhk03 DIR" in capsys.readouterr().err
    assert bench.main([*toy, "--option", "broken", "--dry-run"]) == 2
    assert bench.main([*toy, "--set", "cluster.eps=2", "--options", "default", "--dry-run"]) == 2  # checked at load
    assert "config key 'cluster.eps'" in capsys.readouterr().err


@pytest.mark.slow  # three processes that import torch: ~20 s on an idle 2-core machine, ~50 s under load
def test_two_rows_end_to_end_and_resumable(bench, toy, tmp_path, capsys):
    args = [*toy, "--options", "default", "hdbscan"]
    assert bench.main(args) == 0
    out = tmp_path / "out"
    report = json.loads((out / "results.json").read_text())
    assert [(r["dataset"], r["option"]) for r in report["rows"]] == [("synth4", "default"), ("synth4", "hdbscan")]
    start = report["start_map"]["synth4"]["mAP"]
    assert 0 < start <= 100 and report["settings"]["threads"] == 1
    for r in report["rows"]:
        history = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert r["start_mAP"] == start and r["final_mAP"] == pytest.approx(history[-1]["mAP"])
        assert r["change"] == pytest.approx(r["final_mAP"] - start)
        epoch = r["epochs"][0]
        assert epoch["label_ari"] == pytest.approx(history[0]["label_ari"]) and epoch["clusters"] == history[0]["clusters"]
        assert epoch["size_max"] == history[0]["cluster_sizes"]["size_max"]
        assert set(epoch) >= {"collapse_warning", "large_cluster_share", "single_camera_share", "partition_ari", "eps"}
    assert report["rows"][1]["epochs"][0]["eps"] is None  # HDBSCAN has no radius
    train_images = len(list((out / "data" / "synth4" / "bounding_box_train").glob("*.jpg")))
    assert train_images == 40
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| data set | option | start mAP | final mAP | change |") and len(table) == 4
    # again: both rows are done and skipped, nothing retrains
    stamp = (out / "runs" / "synth4" / "default" / "metrics.json").stat().st_mtime_ns
    capsys.readouterr()
    assert bench.main(args) == 0
    assert capsys.readouterr().out.count("done, skipped") == 2
    assert (out / "runs" / "synth4" / "default" / "metrics.json").stat().st_mtime_ns == stamp
    # a row trained with other settings is an error, not a silent mix
    assert bench.main([*args, "--epochs", "2"]) == 2
    assert "trained with other train settings" in capsys.readouterr().err


def test_unfinished_row_is_resumed(bench, toy, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(bench, "train_row", lambda row, root, args, resume: calls.append((row["option"], resume)))
    monkeypatch.setattr(bench, "start_maps", lambda rows, roots, args: {})
    monkeypatch.setattr(bench, "prepare_data", lambda dataset, args: tmp_path)
    run = tmp_path / "out" / "runs" / "synth4" / "default"
    (run / "checkpoints").mkdir(parents=True)
    cfg = bench.load_config(toy[1], ["data.format=market"])
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (run / "checkpoints" / "last.pth").write_bytes(b"")
    (run / "metrics.json").write_text("[]")
    (tmp_path / "out" / "runs" / "synth4" / "hdbscan").mkdir(parents=True)
    for option in ("default", "hdbscan"):  # what the stand-in trainer would have written
        (tmp_path / "out" / "runs" / "synth4" / option / "metrics.json").write_text("[]")
    assert bench.main([*toy, "--options", "default", "hdbscan"]) == 0
    assert calls == [("default", True), ("hdbscan", False)]


def test_summary_and_table_flag_silent_harm(bench):
    history = [{"epoch": 1, "clusters": 5, "outliers": 2, "label_ari": 0.1, "collapse_warning": True, "seconds": 10.0,
                "cluster_sizes": {"size_max": 40, "size_median": 4}},
               {"epoch": 2, "clusters": 3, "outliers": 1, "label_ari": 0.05, "collapse_warning": False, "mAP": 2.0,
                "seconds": 20.0, "cluster_sizes": {"size_max": 90, "size_median": 5}}]
    s = bench.summarize(history, {"mAP": 2.5})
    assert (s["start_mAP"], s["final_mAP"], s["evaluated_epoch"]) == (2.5, 2.0, 2) and s["change"] == pytest.approx(-0.5)
    assert s["warning_epochs"] == [1] and (s["label_ari_first"], s["label_ari_last"]) == (0.1, 0.05)
    assert s["size_max_last"] == 90 and s["seconds_per_epoch"] == 15.0
    silent = dict(s, warning_epochs=[])
    table = bench.markdown([{"dataset": "d", "option": "a", **s}, {"dataset": "d", "option": "b", **silent}])
    assert "| d | a | 2.5 | 2.0 | -0.5 | 0.100 -> 0.050 | 3 | 90 | 1 | yes | 15 |" in table
    assert "| d | b | 2.5 | 2.0 | -0.5 | 0.100 -> 0.050 | 3 | 90 | none | NO: silent | 15 |" in table
