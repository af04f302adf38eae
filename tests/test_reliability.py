"""Reliability and safety of runs: safe checkpoint loading, checked resume, best.pth in step with the metrics,
start-up checks before any work, file modes and temporary files, SIGTERM (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hardreid.cli import main
from hardreid.config import dump_config
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.files import TEMP_SUFFIX, atomic_write_text
from hardreid.serialization import check_plain
from hardreid.runs import train
from hardreid.training.checkpoint import FORMAT_V1, load_checkpoint
from hardreid.training.resume import RESUMABLE_KEYS, best_epoch

from conftest import tiny_config
from test_bad_inputs import evil_checkpoint, evil_raw_pickle


def _forbid_work(monkeypatch) -> None:
    from hardreid.training import trainer as trainer_module

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the start-up checks failed")

    monkeypatch.setattr(trainer_module, "calibrate_batchnorm", forbidden)
    monkeypatch.setattr(trainer_module, "extract_model_features", forbidden)
    monkeypatch.setattr(trainer_module, "camera_statistics", forbidden)


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if BatchNorm calibration or feature extraction starts."""
    _forbid_work(monkeypatch)


@pytest.fixture
def no_work_after_first_run(monkeypatch):
    """Call it to fail the test if BatchNorm calibration or feature extraction starts from then on."""
    return lambda: _forbid_work(monkeypatch)


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def finished_run(tiny_root, tmp_path_factory) -> Path:
    """A run of 2 epochs x 1 step, evaluated every epoch."""
    base = tmp_path_factory.mktemp("finished")
    dump_config(tiny_config(train={"epochs": 2, "iters": 1}), base / "tiny.yaml")
    assert main(["train", "--config", str(base / "tiny.yaml"), "--data-root", str(tiny_root), "--output",
                 str(base / "run")]) == 0
    return base / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# -- checkpoints: nothing in them runs -------------------------------------------------------------------------
@pytest.mark.parametrize("make", ["zip", "legacy", "raw"])
def test_a_malicious_checkpoint_runs_nothing_and_fails_in_one_line(make, tmp_path):
    marker, path = tmp_path / "MARKER", tmp_path / "evil.pth"
    if make == "raw":
        evil_raw_pickle(path, marker)
    else:
        evil_checkpoint(path, marker, legacy=make == "legacy")
    with pytest.raises(UserError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert not marker.exists(), "the pickle's os.system ran"
    assert "\n" not in message and str(path) in message and "weights_only" not in message
    assert ("refusing" in message or "posix.system" in message) if make != "raw" else "torch.save" in message


def test_checkpoints_hold_only_what_weights_only_loading_reads(finished_run):
    state = load_checkpoint(finished_run / "checkpoints" / "last.pth")
    assert not torch.serialization.get_unsafe_globals_in_checkpoint(finished_run / "checkpoints" / "last.pth")
    check_plain(state)
    assert state["trained_on"]["method"] == "cluster_contrast" and state["trained_on"]["data"]["train_images"] == 60
    with pytest.raises(TypeError, match=r"checkpoint\['history'\]\[0\]\['mAP'\] is a numpy.float64"):
        check_plain({"history": [{"mAP": np.float64(1.0)}]})


def test_a_version_1_checkpoint_still_loads_and_resumes(finished_run, tiny_root, tmp_path, capsys):
    """v1 stored numpy's RNG state and numpy numbers: read with an explicit allowlist of numpy globals only."""
    run = copy_run(finished_run, tmp_path)
    last = run / "checkpoints" / "last.pth"
    state = load_checkpoint(last)
    rng = state["rng"]["numpy"]
    state["rng"]["numpy"] = (rng["bit_generator"], rng["keys"].numpy().astype(np.uint32), rng["pos"], rng["has_gauss"],
                             rng["cached_gaussian"])
    state["history"][0]["top1"] = np.float64(state["history"][0]["top1"])
    state.pop("trained_on")
    torch.save({**state, "format": FORMAT_V1}, last)
    assert set(torch.serialization.get_unsafe_globals_in_checkpoint(last)) <= {
        "numpy._core.multiarray._reconstruct", "numpy._core.multiarray.scalar", "numpy.dtype", "numpy.ndarray"}
    loaded = load_checkpoint(last)
    check_plain(loaded)  # converted to the v2 form
    code, _, err = run_cli(["train", "--output", run, "--data-root", tiny_root, "--resume", "train.epochs=3"], capsys)
    assert code == 0, err
    assert "does not record its training images" in err
    assert load_checkpoint(last)["epoch"] == 3


def test_checkpoint_files_follow_the_umask(tiny_root, tmp_path):
    old = os.umask(0o022)
    try:
        train(tiny_config(train={"epochs": 1, "iters": 1}), load_dataset("market", tiny_root), tmp_path / "run",
              log_to_stderr=False)
    finally:
        os.umask(old)
    for name in ("checkpoints/last.pth", "checkpoints/best.pth", "metrics.json", "config.yaml"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


def test_writing_to_a_pipe_writes_in_place(tmp_path):
    """--json /dev/stdout and the like: a target that is not a regular file is written, never replaced."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    atomic_write_text(fifo, "hello")
    reader.join(10)
    assert received == ["hello"] and fifo.is_fifo()


# -- resume checks what it resumes ------------------------------------------------------------------------------
def test_a_refused_resume_writes_nothing_and_leaves_the_run_resumable(finished_run, tiny_root, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    code, _, err = run_cli(["train", "--output", run, "--data-root", tiny_root, "--resume", "method.base=ice",
                            "cluster.eps=0.5"], capsys)
    assert code == 2
    assert "method.base: 'cluster_contrast' -> 'ice'" in err and "cluster.eps: 0.6 -> 0.5" in err
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # config.yaml, train.log, ...
    code, _, err = run_cli(["train", "--output", run, "--data-root", tiny_root, "--resume", "train.epochs=3",
                            "train.eval_every=2", "data.workers=0", "eval.batch_size=16"], capsys)
    assert code == 0, err
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 3


def test_resumable_keys_are_documented():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("### Resuming and interruptions", 1)[1][:3000]
    assert all(f"`{key}`" in section for key in RESUMABLE_KEYS)


def test_resume_without_config_yaml_uses_the_checkpoint_config(finished_run, tiny_root, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    (run / "config.yaml").unlink()
    code, _, err = run_cli(["train", "--output", run, "--data-root", tiny_root, "--resume", "train.epochs=3"], capsys)
    assert code == 0, err
    assert (run / "config.yaml").is_file()


def test_resume_on_another_data_set_is_refused_before_any_work(tiny_root, tmp_path, no_work_after_first_run):
    """SpCL's instance memory has one row per training image: another data set used to end in a traceback."""
    cfg = tiny_config(train={"epochs": 1, "iters": 1}, method={"base": "spcl"})
    train(cfg, load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
    root = Path(shutil.copytree(tiny_root, tmp_path / "data"))
    sorted((root / "bounding_box_train").iterdir())[3].unlink()
    no_work_after_first_run()
    cfg.train.epochs = 2
    with pytest.raises(UserError, match=r"trained on 60 training images of data set 'market', but .* holds 59"):
        train(cfg, load_dataset("market", root), tmp_path / "run", resume=True, log_to_stderr=False)
    victim = sorted((tiny_root / "bounding_box_train").iterdir())[3]
    shutil.copy(victim, root / "bounding_box_train" / ("0999" + victim.name[4:]))  # as many images, other names
    with pytest.raises(UserError, match="with other file names"):
        train(cfg, load_dataset("market", root), tmp_path / "run", resume=True, log_to_stderr=False)


# -- best.pth never stays stale ---------------------------------------------------------------------------------
def fake_scores(monkeypatch, values: list[float]) -> None:
    """Evaluation replaced by these mAP values, one per evaluated epoch (also after a resume)."""
    from hardreid.training import trainer as trainer_module

    scores = iter(values)
    monkeypatch.setattr(trainer_module, "evaluate_model",
                        lambda *args, **kwargs: SimpleNamespace(mAP=(m := next(scores)), cmc=np.full(10, m), rank=lambda r, m=m: m))


def test_a_stale_best_checkpoint_is_rewritten_on_resume(tiny_root, tmp_path, monkeypatch):
    """Interrupted while best.pth of an improving epoch was written (the order is last.pth, then best.pth):
    best.pth holds an older epoch; resume rewrites it from last.pth."""
    from hardreid.training import trainer as trainer_module

    fake_scores(monkeypatch, [0.1, 0.5, 0.2])  # epoch 2 is the best; epoch 3 (after the resume) is not better
    data = load_dataset("market", tiny_root)
    cfg = tiny_config(train={"epochs": 3, "iters": 1, "eval_at_start": False})
    real_save, best_writes = trainer_module.save_checkpoint, []

    def save(state, path):
        if path.name == "best.pth":
            best_writes.append(state["epoch"])
            if len(best_writes) == 2:
                raise KeyboardInterrupt  # killed during the second best.pth write
        real_save(state, path)

    monkeypatch.setattr(trainer_module, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, tmp_path / "run", log_to_stderr=False)
    monkeypatch.setattr(trainer_module, "save_checkpoint", real_save)
    ckpt = tmp_path / "run" / "checkpoints"
    assert load_checkpoint(ckpt / "best.pth")["epoch"] == 1 and load_checkpoint(ckpt / "last.pth")["epoch"] == 2
    train(cfg, data, tmp_path / "run", resume=True, log_to_stderr=False)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert load_checkpoint(ckpt / "best.pth")["epoch"] == best_epoch(history) == 2
    assert "rewrote" in (tmp_path / "run" / "train.log").read_text()


def test_last_is_written_before_best_and_whenever_best_is(tiny_root, tmp_path, monkeypatch):
    """With save_every > 1 an improving epoch still writes last.pth, first, so best.pth can always be rebuilt."""
    from hardreid.training import trainer as trainer_module

    fake_scores(monkeypatch, [0.1, 0.2])
    writes, real_save = [], trainer_module.save_checkpoint
    monkeypatch.setattr(trainer_module, "save_checkpoint",
                        lambda state, path: (writes.append((path.name, state["epoch"])), real_save(state, path)))
    train(tiny_config(train={"epochs": 2, "iters": 1, "save_every": 5, "eval_at_start": False}), load_dataset("market", tiny_root),
          tmp_path / "run", log_to_stderr=False)
    assert writes == [("last.pth", 1), ("best.pth", 1), ("last.pth", 2), ("best.pth", 2)]


# -- temporary files ---------------------------------------------------------------------------------------------
def test_stale_temporary_files_are_removed_on_start_and_resume(finished_run, tiny_root, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path)
    planted = [run / "checkpoints" / f".last.pth.0badc0de{TEMP_SUFFIX}", run / "checkpoints" / "best.pth.x1y2z3.tmp",
               run / "metrics.json.tmp", run / f".metrics.csv.12345678{TEMP_SUFFIX}"]
    for path in planted:
        path.write_bytes(b"x" * 1000)
    keep = run / "checkpoints" / "notes.tmp"  # not ours
    keep.write_text("mine")
    code, _, err = run_cli(["train", "--output", run, "--data-root", tiny_root, "--resume"], capsys)
    assert code == 0, err
    assert not any(p.exists() for p in planted) and keep.read_text() == "mine"


def test_a_temporary_file_is_named_so_and_removed_when_the_write_fails(tmp_path, monkeypatch):
    def fail(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(UserError, match=r"cannot write .*x.json: No space left on device"):
        atomic_write_text(tmp_path / "x.json", "{}")
    assert list(tmp_path.iterdir()) == []


# -- start-up checks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("settings, message", [
    ({"data": {"batch_size": 64, "num_instances": 4}}, "fewer than one batch"),
    ({"cluster": {"k1": 60, "k2": 6}}, "cluster.k1=60 needs more than k1 training images"),
    ({"train": {"epochs": 1, "device": "cuda:99"}}, "cuda:99"),
])
def test_start_up_checks_fail_before_any_work(settings, message, tiny_root, tmp_path, no_work):
    with pytest.raises(UserError, match=message):
        train(tiny_config(**settings), load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
    assert not (tmp_path / "run" / "config.yaml").exists()


def test_a_test_set_without_cross_camera_matches_fails_at_start(tiny_root, tmp_path, no_work):
    root = Path(shutil.copytree(tiny_root, tmp_path / "data"))
    for image in [*(root / "query").iterdir(), *(root / "bounding_box_test").iterdir()]:
        if "_c1" not in image.name:
            image.unlink()
    with pytest.raises(UserError, match="no query of .* has a gallery image of the same identity from another camera"):
        train(tiny_config(), load_dataset("market", root), tmp_path / "run", log_to_stderr=False)


def test_evaluate_checks_output_paths_before_evaluating(finished_run, tiny_root, tmp_path, capsys, monkeypatch):
    from hardreid.evaluation import pipeline

    monkeypatch.setattr(pipeline, "query_gallery_distances", lambda *a, **k: pytest.fail("evaluated first"))
    (tmp_path / "file").write_text("x")
    for flag in ("--json", "--ranked-image"):
        code, _, err = run_cli(["evaluate", "--checkpoint", finished_run / "checkpoints" / "last.pth", "--data-root",
                                tiny_root, flag, tmp_path / "file" / "out"], capsys)
        assert code == 2 and flag in err and "is a file, not a folder" in err


def test_evaluate_counts_only_the_queries_it_scored(finished_run, tiny_root, tmp_path, capsys):
    root = Path(shutil.copytree(tiny_root, tmp_path / "data"))
    queries = sorted((root / "query").iterdir())
    pid = queries[0].name[:4]  # this identity keeps only its camera-1 gallery images: its queries there are skipped
    for image in (root / "bounding_box_test").glob(f"{pid}_*"):
        if "_c1" not in image.name:
            image.unlink()
    skipped = len([q for q in queries if q.name.startswith(pid + "_c1")])
    assert skipped > 0
    code, out, err = run_cli(["evaluate", "--checkpoint", finished_run / "checkpoints" / "last.pth", "--data-root",
                              root, "--workers", 0, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    assert f"({len(queries) - skipped} of {len(queries)} queries scored ({skipped} skipped" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["num_valid_query"] == len(queries) - skipped and report["num_skipped_query"] == skipped


# -- signals ----------------------------------------------------------------------------------------------------
def test_sigterm_exits_like_ctrl_c_with_its_own_code(finished_run, tiny_root, tmp_path, capsys, monkeypatch):
    from hardreid.training import trainer as trainer_module

    real = trainer_module.Trainer.run_epoch

    def run_epoch(self, epoch):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "run_epoch", run_epoch)
    run = copy_run(finished_run, tmp_path)
    code, _, err = run_cli(["train", "--output", run, "--data-root", tiny_root, "--resume", "train.epochs=4"], capsys)
    assert code == 143
    assert "terminated by SIGTERM" in err and f"--output {run}" in err and "--resume" in err
    assert load_checkpoint(run / "checkpoints" / "last.pth")["epoch"] == 2
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only there while a command runs


def test_an_error_caused_by_the_same_sigterm_is_reported_as_termination(tiny_root, tmp_path, capsys, monkeypatch):
    """A scheduler's SIGTERM also kills the DataLoader workers; their failure is part of the termination."""
    from hardreid.training import trainer as trainer_module
    from hardreid.signals import Terminated

    def run_epoch(self, epoch):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises Terminated at once
        except Terminated:
            raise RuntimeError("DataLoader worker (pid 12345) exited unexpectedly") from None

    monkeypatch.setattr(trainer_module.Trainer, "run_epoch", run_epoch)
    dump_config(tiny_config(train={"epochs": 1, "iters": 1}), tmp_path / "tiny.yaml")
    code, _, err = run_cli(["train", "--config", tmp_path / "tiny.yaml", "--data-root", tiny_root, "--output",
                            tmp_path / "run"], capsys)
    assert code == 143 and "terminated by SIGTERM" in err and "Traceback" not in err
