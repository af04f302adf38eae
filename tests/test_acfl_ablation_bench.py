"""benchmarks/acfl_ablation.py end to end on the tiny set (two rows, 1 epoch x 2 steps) and the trainer's step timing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import load_benchmark, tiny_config


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("acfl_ablation")


@pytest.fixture
def rows(tmp_path):
    """A base YAML holding the tiny settings and two rows inheriting from it (as configs/acfl/*.yaml do)."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_config().to_dict()))
    (folder / "base.yaml").write_text("# baseline row\n_base_: tiny.yaml\n")
    (folder / "warm.yaml").write_text("# another row\n_base_: tiny.yaml\nmemory:\n  temperature: 0.1\n")
    return [str(folder / "base.yaml"), str(folder / "warm.yaml")]


def test_dry_run_lists_rows_and_runs_nothing(bench, rows, tmp_path, capsys):
    out = tmp_path / "out"
    assert bench.main(["--rows", *rows, "--data-root", "nowhere", "--epochs", "3", "--iters", "5",
                       "--set", "data.workers=0", "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "base: " in text and "warm: " in text and "train.epochs=3 train.iters=5 data.workers=0" in text
    assert "3 epochs x 5 steps" in text and not out.exists()
    assert bench.main(["--rows", rows[0], "--data-root", "x", "--set", "train.epoch=2", "--dry-run"]) == 2
    assert "unknown config key 'train.epoch'" in capsys.readouterr().err


def test_two_rows_and_trainer_step_time(bench, rows, tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    assert bench.main(["--rows", *rows, "--data-root", str(tiny_root), "--format", "market", "--epochs", "1",
                       "--iters", "2", "--output", str(out), "--quiet"]) == 0
    report = json.loads((out / "results.json").read_text())
    assert report["machine"]["torch"] and report["settings"]["epochs"] == 1
    assert [r["row"] for r in report["rows"]] == ["base", "warm"]
    for r in report["rows"]:
        history = json.loads((Path(r["run_dir"]) / "metrics.json").read_text())
        assert r["mAP"] == pytest.approx(history[-1]["mAP"]) and r["top1"] == pytest.approx(history[-1]["top1"])
        # trainer.py records the training steps only: no extraction, clustering or evaluation
        row = history[-1]
        assert 0 < row["train_seconds"] < row["seconds"] and row["seconds_per_step"] == pytest.approx(row["train_seconds"] / 2)
        assert "seconds_per_step" in (Path(r["run_dir"]) / "metrics.csv").read_text().splitlines()[0]
        assert r["train_steps"] == 2 and r["seconds_per_step"] == pytest.approx(row["seconds_per_step"])
        assert r["wall_seconds"] > r["train_seconds"] > 0
    assert report["rows"][0]["step_ratio"] == 1.0
    assert report["rows"][1]["step_ratio"] == pytest.approx(report["rows"][1]["seconds_per_step"] / report["rows"][0]["seconds_per_step"])
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| row | mAP | top-1 | top-5 |") and len(table) == 4
    assert table[2].startswith("| base |") and table[2].endswith("| 1.00x |")
    last = json.loads((Path(report["rows"][0]["run_dir"]) / "metrics.json").read_text())[-1]
    cells = [c.strip() for c in table[2].split("|")[1:-1]]
    assert table[0].split("|")[5:8] == [" clusters ", " outliers ", " label ARI "]
    assert cells[4:7] == [str(last["clusters"]), str(last["outliers"]), f"{last['label_ari']:.3f}"]
    # the same output again: the runs exist, a clear error instead of overwriting them
    assert bench.main(["--rows", rows[0], "--data-root", str(tiny_root), "--format", "market", "--epochs", "1",
                       "--iters", "1", "--output", str(out), "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_summarize_weights_step_time_by_steps(bench):
    history = [{"epoch": 1, "train_seconds": 2.0, "seconds_per_step": 1.0},
               {"epoch": 2, "train_seconds": 6.0, "seconds_per_step": 2.0, "mAP": 10.0, "top1": 20.0, "top5": 30.0},
               {"epoch": 3, "train_seconds": 2.0, "seconds_per_step": 1.0, "clusters": 7, "outliers": 3}]
    s = bench.summarize(history)
    assert s["train_steps"] == 7 and s["seconds_per_step"] == pytest.approx(10.0 / 7) and s["mAP"] == 10.0
    assert s["evaluated_epoch"] == 2 and (s["clusters"], s["outliers"], s["label_ari"]) == (7, 3, None)
    assert bench.row_names(["a/x.yaml", "b/x.yaml", "c/y.yaml"]) == ["a_x", "b_x", "y"]
