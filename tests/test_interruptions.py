"""Kill tests: a tiny run is killed (SIGKILL) at chosen and at random points, including inside both checkpoint
writes, then ``--resume`` must give the same final weights as an uninterrupted run, a best.pth that matches the
metrics, and no leftover temporary file. SIGTERM must stop a run as Ctrl-C does.

The kill points inside a write are made deterministic with the test hook of ``hardreid.files``
(``HARDREID_TEST_PAUSE_WRITE=NAME:N`` pauses the N-th write of NAME after its bytes are written, before the
rename, and says so on stderr).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from hardreid.cli import main
from hardreid.config import dump_config
from hardreid.files import PAUSE_ENV, TEMP_SUFFIX
from hardreid.training.checkpoint import load_checkpoint
from hardreid.training.resume import best_epoch

from conftest import tiny_config

SRC = Path(__file__).resolve().parents[1] / "src"
# 3 epochs of 2 steps, evaluated every epoch; the tests need the mAP to improve at epoch 2, so that best.pth is
# written at epochs 1 and 2. With seed 7 it does here with 1 and 2 threads (measured 18.6 -> 22.9 and 12.3 -> 22.3),
# but the trajectory is float arithmetic over many steps: another CPU's kernels (or thread count) round differently
# and can end elsewhere, so `reference` moves on to the next seed when epoch 2 does not improve.
SETTINGS = {"train": {"epochs": 3, "iters": 2, "eval_every": 1, "seed": 7}}
SEEDS = (7, 8, 9, 10, 11)


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("kill") / "tiny.yaml"
    dump_config(tiny_config(**SETTINGS), path)
    return path


@pytest.fixture(scope="module")
def reference(config_file, tiny_root, tmp_path_factory) -> Path:
    """The uninterrupted run, with the first seed of SEEDS whose mAP improves at epoch 2 (written to config_file)."""
    histories = {}
    for seed in SEEDS:
        dump_config(tiny_config(**{**SETTINGS, "train": {**SETTINGS["train"], "seed": seed}}), config_file)
        run = tmp_path_factory.mktemp("kill") / f"straight_seed{seed}"
        assert main(["train", "--config", str(config_file), "--data-root", str(tiny_root), "--output", str(run)]) == 0
        history = load_checkpoint(run / "checkpoints" / "last.pth")["history"]
        if history[1]["mAP"] > history[0]["mAP"]:
            assert best_epoch(history) >= 2
            return run
        histories[seed] = [row["mAP"] for row in history]
    raise AssertionError(f"no seed of {SEEDS} gives a tiny run whose mAP improves at epoch 2: {histories}")


def launch(config_file: Path, tiny_root: Path, run: Path, pause: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": str(torch.get_num_threads())}  # same numerics
    env.pop(PAUSE_ENV, None)
    if pause:
        env[PAUSE_ENV] = pause
    return subprocess.Popen([sys.executable, "-m", "hardreid", "train", "--config", str(config_file), "--data-root",
                             str(tiny_root), "--output", str(run)], env=env, stderr=subprocess.PIPE, text=True)


def wait_for_pause(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Read the run's stderr until the write hook says it paused; return that line."""
    deadline = time.time() + timeout
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.startswith("HARDREID_TEST_PAUSED"):
            return line
        if time.time() > deadline:
            break
    proc.kill()
    raise AssertionError("the run never reached the pause point:\n" + "".join(lines[-20:]))


def resume(run: Path, tiny_root: Path, capsys) -> None:
    code = main(["train", "--output", str(run), "--data-root", str(tiny_root), "--resume"])
    _, err = capsys.readouterr()
    assert code == 0, err


def assert_same_as_reference(run: Path, reference: Path) -> None:
    """Same final weights, metrics and best.pth as the uninterrupted run; no temporary file left."""
    for name in ("last.pth", "best.pth"):
        ours, theirs = load_checkpoint(run / "checkpoints" / name), load_checkpoint(reference / "checkpoints" / name)
        assert ours["epoch"] == theirs["epoch"], name
        for key, value in theirs["model"].items():
            torch.testing.assert_close(ours["model"][key], value, msg=f"{name}: {key}")
    last = load_checkpoint(run / "checkpoints" / "last.pth")
    assert [r["epoch"] for r in last["history"]] == [1, 2, 3]
    assert load_checkpoint(run / "checkpoints" / "best.pth")["epoch"] == best_epoch(last["history"])
    leftovers = [p for p in run.rglob("*") if p.name.endswith((TEMP_SUFFIX, ".tmp"))]
    assert not leftovers, leftovers


def kill_at(pause: str, config_file: Path, tiny_root: Path, run: Path) -> None:
    proc = launch(config_file, tiny_root, run, pause)
    wait_for_pause(proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    assert list((run / "checkpoints").glob(f".*{TEMP_SUFFIX}")) or pause == "metrics.json:2"


def test_sigkill_inside_the_best_write_then_resume(config_file, tiny_root, reference, tmp_path, capsys):
    """Killed while best.pth of epoch 2 is written: best.pth still holds epoch 1 (the stale case of the issue);
    resume rewrites it from last.pth, removes the temporary file and finishes like the uninterrupted run."""
    run = tmp_path / "run"
    kill_at("best.pth:2", config_file, tiny_root, run)
    assert load_checkpoint(run / "checkpoints" / "best.pth")["epoch"] == 1
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 2
    resume(run, tiny_root, capsys)
    assert_same_as_reference(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("pause", ["last.pth:1", "best.pth:1", "last.pth:2", "metrics.json:2", "last.pth:3"])
def test_sigkill_inside_other_writes_then_resume(pause, config_file, tiny_root, reference, tmp_path, capsys):
    run = tmp_path / "run"
    kill_at(pause, config_file, tiny_root, run)
    if (run / "checkpoints" / "last.pth").is_file():
        resume(run, tiny_root, capsys)
    else:  # killed before the first checkpoint: nothing to resume, a fresh start must work
        assert main(["train", "--output", str(run), "--data-root", str(tiny_root), "--resume"]) == 2
        assert "nothing to resume" in capsys.readouterr().err
        assert main(["train", "--config", str(config_file), "--data-root", str(tiny_root), "--output", str(run)]) == 0
    assert_same_as_reference(run, reference)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_sigkill_at_a_random_time_then_resume(seed, config_file, tiny_root, reference, tmp_path, capsys):
    run = tmp_path / "run"
    proc = launch(config_file, tiny_root, run)
    started = time.time()
    while not (run / "train.log").is_file() and proc.poll() is None:  # the run has passed its start-up checks
        time.sleep(0.05)
    time.sleep(random.Random(seed).uniform(0, 2.0 * (time.time() - started) + 3.0))
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    if (run / "checkpoints" / "last.pth").is_file():
        resume(run, tiny_root, capsys)
    else:
        assert main(["train", "--config", str(config_file), "--data-root", str(tiny_root), "--output", str(run)]) == 0
    assert_same_as_reference(run, reference)


@pytest.mark.slow  # (tests/test_reliability.py sends a real SIGTERM in-process in the default run)
def test_sigterm_stops_cleanly_and_the_run_resumes(config_file, tiny_root, reference, tmp_path, capsys):
    """SIGTERM (what cluster schedulers send) inside the last.pth write of epoch 2: exit code 143, a message
    saying how to resume, no temporary file, and --resume finishes like the uninterrupted run."""
    run = tmp_path / "run"
    proc = launch(config_file, tiny_root, run, "last.pth:2")
    wait_for_pause(proc)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(60) == 143, err
    assert "terminated by SIGTERM" in err and "--resume" in err and "Traceback" not in err
    assert not list((run / "checkpoints").glob(f".*{TEMP_SUFFIX}"))
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 1
    resume(run, tiny_root, capsys)
    assert_same_as_reference(run, reference)
