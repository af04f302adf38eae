"""benchmarks/device_run.py at toy size on the CPU (--smoke): stages in subprocesses, the time budget, the reports.

The default run exercises two stages (about 20-40 s on 2 cores); the slow test runs the whole smoke run,
which must finish in under 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import pytest

from conftest import load_benchmark


@pytest.fixture(scope="module")
def device_run():
    return load_benchmark("device_run")


def test_smoke_throughput_and_evaluation_stages(device_run, tmp_path):
    device_run.main(["--smoke", "--threads", "1", "--out", str(tmp_path), "--stages", "throughput", "evaluation"])
    report = json.loads((tmp_path / "device_run.json").read_text())
    assert report["smoke"] and report["device"] == "cpu" and report["machine"]["torch"]
    assert list(report["stages"]) == ["throughput", "evaluation"]
    assert all(stage["status"] == "ok" for stage in report["stages"].values()), report["stages"]
    steps = report["stages"]["throughput"]["backbones"]["mobilenet_v2"]
    assert list(steps) == ["floor: forward + backward", "floor + optimiser step", "cluster_contrast", "full ACFL",
                           "hng joint stage"]
    for name, r in steps.items():
        assert r["images_per_s"] > 0 and math.isclose(r["images_per_s"] * r["seconds_per_step"], 8), name
    assert steps["full ACFL"]["seconds_per_step"] > steps["cluster_contrast"]["seconds_per_step"]  # HPI's extra passes
    runs = report["stages"]["evaluation"]["runs"]
    assert set(runs) == {"market1501_test cpu", "100k_x_100k cpu"}
    assert all(0 < r["mAP"] <= 100 and 0 <= r["top1"] <= 100 for r in runs.values())
    md = (tmp_path / "device_run.md").read_text()
    assert "not GPU numbers" in md and "multi-GPU" in md and "| mobilenet_v2 | full ACFL |" in md
    assert "===== evaluation: ok" in (tmp_path / "device_run.log").read_text()


def test_stages_are_skipped_when_the_budget_is_spent(device_run, tmp_path):
    start = time.monotonic()
    device_run.main(["--smoke", "--out", str(tmp_path), "--budget-min", "0.1"])  # 6 s: no stage can start
    assert time.monotonic() - start < 6
    report = json.loads((tmp_path / "device_run.json").read_text())
    assert list(report["stages"]) == device_run.STAGE_NAMES
    for stage in report["stages"].values():
        assert stage["status"] == "skipped" and stage["note"].startswith("time budget")
    assert "| real_data | skipped |" in (tmp_path / "device_run.md").read_text()


def test_a_stage_past_its_limit_is_stopped(device_run, tmp_path):
    args = argparse.Namespace(smoke=True, device="cpu", seed=1, iters=1, threads=1, data=None, weights=None)
    stage = device_run.Stage("cuda_tests", None, 0.5, 0.0, "a stage with half a second")
    with open(tmp_path / "log", "w") as log:
        start = time.monotonic()
        result = device_run.run_stage(stage, args, time.monotonic() + 100, log, tmp_path)
    assert result["status"].startswith("stopped at its time limit")
    assert time.monotonic() - start < 0.5 + device_run.KILL_GRACE_S + 2


@pytest.mark.slow
def test_full_smoke_run_finishes_in_three_minutes(device_run, tmp_path):
    start = time.monotonic()
    device_run.main(["--smoke", "--threads", "1", "--out", str(tmp_path)])
    assert time.monotonic() - start < 180
    report = json.loads((tmp_path / "device_run.json").read_text())
    assert list(report["stages"]) == device_run.STAGE_NAMES
    assert all(stage["status"] == "ok" for stage in report["stages"].values()), report["stages"]
    assert report["stages"]["cuda_tests"]["summary"]["skipped"] == 5  # no CUDA here
    methods = report["stages"]["methods_amp"]["methods"]
    assert len(methods) == len(device_run.METHODS) and all(m["ok"] for m in methods.values()), methods
    assert report["stages"]["methods_amp"]["setup"]["autocast"] == "bfloat16"
    assert report["stages"]["pseudo_labels"]["largest_n"] > 1500
    assert len(report["stages"]["real_data"]["epochs"]["full ACFL"]) == 2


def test_cap_scale_stretches_a_stage_limit_and_refuses_nonsense(device_run, tmp_path, capsys):
    args = argparse.Namespace(smoke=True, device="cpu", seed=1, iters=1, threads=1, data=None, weights=None,
                              cap_scale=0.0001)
    stage = device_run.Stage("cuda_tests", None, 50.0, 0.0, "50 s, scaled to 5 ms")
    with open(tmp_path / "log", "w") as log:
        result = device_run.run_stage(stage, args, time.monotonic() + 100, log, tmp_path)
    assert result["status"].startswith("stopped at its time limit") and result["limit_s"] == 0.0
    for bad in ("0", "-1", "nan"):
        with pytest.raises(SystemExit):
            device_run.main(["--smoke", "--cap-scale", bad, "--out", str(tmp_path / "out")])
        assert "--cap-scale must be a positive number" in capsys.readouterr().err
