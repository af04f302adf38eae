"""benchmarks/hard_sample_study.py: rows x seeds on the tiny set, mean and spread, reuse of finished runs, estimates."""

from __future__ import annotations

import json
import statistics

import pytest
import yaml

from conftest import load_benchmark, tiny_config


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("hard_sample_study")


@pytest.fixture
def study(tmp_path):
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_config().to_dict()))
    spec = {"budget": {"epochs": 1, "iters": 1}, "set": ["train.eval_every=1"],
            "rows": [{"name": "base", "memory": "momentum", "config": str(folder / "tiny.yaml"), "seeds": [1, 2]}]}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def test_dry_run_and_bad_rows(bench, study, tmp_path, capsys):
    assert bench.main(["--study", study, "--data-root", "x", "--output", str(tmp_path / "o"), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "would run 2 runs" in text and "base seed 2" in text and "hard samples hpf" not in text
    assert bench.main(["--study", study, "--data-root", "x", "--only", "nope", "--dry-run"]) == 2
    assert "nope" in capsys.readouterr().err


def test_seeds_are_aggregated_and_finished_runs_reused(bench, study, tiny_root, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["--study", study, "--data-root", str(tiny_root), "--output", str(out), "--quiet"]
    assert bench.main(args) == 0
    report = json.loads((out / "results.json").read_text())
    (base,) = report["rows"]
    assert [r["seed"] for r in base["runs"]] == [1, 2]
    maps = [r["mAP"] for r in base["runs"]]
    assert base["mAP"]["mean"] == pytest.approx(statistics.fmean(maps))
    assert base["mAP"]["sd"] == pytest.approx(statistics.stdev(maps)) and base["mAP"]["n"] == 2
    assert base["label_ari"]["n"] == 2 and base["seconds_per_step"]["mean"] > 0
    assert base["curve"] == {"1": pytest.approx(statistics.fmean(maps))}
    table = (out / "results.md").read_text().splitlines()
    assert table[0].startswith("| row | memory | seeds | mAP |") and table[2].startswith("| base | momentum | 2 |")
    # a second call trains nothing: finished runs are read back (their checkpoints stay untouched)
    stamp = (out / "runs" / "base" / "seed1" / "checkpoints" / "last.pth").stat().st_mtime_ns
    assert bench.main(args + ["--estimate", "20", "100"]) == 0
    assert (out / "runs" / "base" / "seed1" / "checkpoints" / "last.pth").stat().st_mtime_ns == stamp
    assert "estimated CPU hours per run at 20 epochs x 100 steps" in capsys.readouterr().out
    assert bench.main(args + ["--aggregate-only"]) == 0
    # another config in the same run directory is refused rather than mixed
    (out / "runs" / "base" / "seed2" / "metrics.json").unlink()
    assert bench.main(args + ["--set", "memory.temperature=0.1"]) == 2
    assert "another config" in capsys.readouterr().err


def test_an_interrupted_run_of_an_auto_config_resumes(bench, tmp_path, tiny_root, capsys, monkeypatch):
    """A row whose config says model.camera_bn / cluster.jaccard auto (the CPU configs since issue 26): its
    checkpoint holds the decided values, and the lane's next call resumes it rather than refusing "another config"."""
    folder = tmp_path / "configs"
    folder.mkdir()
    (folder / "tiny.yaml").write_text(yaml.safe_dump(tiny_config(model={"camera_bn": "auto"}, cluster={
        "jaccard": "auto", "k1_intra": 3, "k1_inter": 6}).to_dict()))
    spec = {"budget": {"epochs": 2, "iters": 1}, "set": ["train.eval_every=0", "train.eval_at_start=false"],
            "rows": [{"name": "cam", "memory": "momentum", "config": str(folder / "tiny.yaml"), "seeds": [1]}]}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    args = ["--study", str(tmp_path / "study.yaml"), "--data-root", str(tiny_root), "--output", str(out), "--quiet"]
    from hardreid.training.trainer import Trainer

    run_epoch = Trainer.run_epoch

    def stopped_in_epoch_2(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt  # the lane killed at the end of a session
        return run_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "run_epoch", stopped_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        bench.main(args)
    monkeypatch.setattr(Trainer, "run_epoch", run_epoch)
    run_dir = out / "runs" / "cam" / "seed1"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert (saved["model"]["camera_bn"], saved["cluster"]["jaccard"]) == (True, "camera_aware")
    assert len(json.loads((run_dir / "metrics.json").read_text())) == 1
    assert bench.main(args) == 0, capsys.readouterr().err
    assert [row["epoch"] for row in json.loads((run_dir / "metrics.json").read_text())] == [1, 2]


def test_estimate_counts_steps_epochs_and_evaluations(bench):
    assert bench.spread([2.0, None]) == {"n": 1, "mean": 2.0, "sd": 0.0, "min": 2.0, "max": 2.0}
    row = {"seconds_per_step": {"mean": 0.5}, "overhead_seconds": 60.0, "evaluation_seconds": 30.0}
    # 20 epochs x (60 s) + 10 evaluations x 30 s + 2000 steps x 0.5 s = 2500 s
    assert bench.estimate_hours(row, 20, 100, 2) == pytest.approx(2500 / 3600)
    history = [{"epoch": 1, "seconds": 70.0, "train_seconds": 10.0}, {"epoch": 2, "seconds": 105.0, "train_seconds": 15.0,
                                                                        "mAP": 3.0}]
    assert bench.epoch_costs(history) == {"overhead_seconds": 60.0, "evaluation_seconds": 30.0}
