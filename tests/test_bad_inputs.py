"""A hostile tester's table: bad inputs and faults on the command line, each with the exit code and one clear line.

Every case runs ``hardreid.cli.main`` in-process on the tiny synthetic set and checks the exit code, that the
expected fragment is in the output, and (for errors) that there is no traceback and no advice to load
checkpoints unsafely. Cases that need files make them in ``setup(env, tmp, monkeypatch)``; ``{root}``,
``{cfg}``, ``{run}`` and ``{tmp}`` in the arguments are the tiny data set, a tiny config file, a finished
one-epoch run and the case's own folder.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import torchvision
import yaml

from hardreid.cli import main
from hardreid.config import dump_config

from conftest import tiny_config


@dataclass
class Env:
    root: Path  # tiny synthetic data set (Market layout)
    cfg: Path  # tiny config: 1 epoch x 1 step
    run: Path  # a finished run of that config


@pytest.fixture(scope="module")
def env(tiny_root, tmp_path_factory) -> Env:
    base = tmp_path_factory.mktemp("bad_inputs")
    cfg = base / "tiny.yaml"
    dump_config(tiny_config(train={"epochs": 1, "iters": 1}), cfg)
    run = base / "run"
    assert main(["train", "--config", str(cfg), "--data-root", str(tiny_root), "--output", str(run)]) == 0
    return Env(tiny_root, cfg, run)


# -- helpers that make bad files ------------------------------------------------------------------------------
class Evil:
    """A pickle payload: loading it would run a shell command that creates MARKER."""

    marker: Path = Path()

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_checkpoint(path: Path, marker: Path, legacy: bool = False) -> Path:
    Evil.marker = marker
    torch.save({"format": "hardreid-checkpoint-v2", "model": Evil()}, path, _use_new_zipfile_serialization=not legacy)
    return path


def evil_raw_pickle(path: Path, marker: Path) -> Path:
    Evil.marker = marker
    path.write_bytes(pickle.dumps({"model": Evil()}))
    return path


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def yaml_over_tiny(text: str | bytes) -> Callable:
    """A setup writing {tmp}/c.yaml: the tiny config as its _base_, then ``text``."""
    def setup(env: Env, tmp: Path) -> None:
        head = f"_base_: {env.cfg}\n"
        write(tmp / "c.yaml", head.encode() + text if isinstance(text, bytes) else head + text)
    return setup


def tiny_yaml(tmp: Path, name: str = "c.yaml", **sections) -> Path:
    path = tmp / name
    dump_config(tiny_config(**sections), path)
    return path


def copy_root(env: Env, tmp: Path) -> Path:
    return Path(shutil.copytree(env.root, tmp / "data"))


def copy_run(env: Env, tmp: Path) -> Path:
    return Path(shutil.copytree(env.run, tmp / "run"))


def fake_ice_checkpoint(env: Env, tmp: Path) -> None:
    """The run's last.pth relabelled as an ICE run (what an ICE last.pth copied into this run looks like)."""
    from hardreid.training.checkpoint import load_checkpoint, save_checkpoint

    run = copy_run(env, tmp)
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    state["config"]["method"]["base"] = "ice"
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, run / "checkpoints" / "last.pth")


def drop_a_training_image(env: Env, tmp: Path) -> None:
    copy_run(env, tmp)
    root = copy_root(env, tmp)
    sorted((root / "bounding_box_train").iterdir())[0].unlink()


def no_cross_camera_gallery(env: Env, tmp: Path) -> None:
    root = copy_root(env, tmp)
    for image in (root / "bounding_box_test").iterdir():  # keep only gallery images from camera 1 ...
        if "_c1" not in image.name:
            image.unlink()
    for image in (root / "query").iterdir():  # ... and queries from camera 1: no query can be scored
        if "_c1" not in image.name:
            image.unlink()


def stray_msmt_list(env: Env, tmp: Path) -> None:
    write(copy_root(env, tmp) / "list_train.txt", "x/0000_000_01_0303morning_0015_0.jpg 0\n")


def subfolder_images(env: Env, tmp: Path) -> None:
    root = copy_root(env, tmp)
    extra = root / "bounding_box_train" / "more"
    extra.mkdir()
    shutil.copy(sorted((root / "bounding_box_train").glob("*.jpg"))[0], extra / "0001_c1s1_000001_00.jpg")


def looping_folder(env: Env, tmp: Path) -> None:
    folder = tmp / "crops"
    folder.mkdir()
    for image in sorted((env.root / "bounding_box_train").iterdir())[:8]:
        shutil.copy(image, folder / image.name)
    (folder / "loop").symlink_to(folder, target_is_directory=True)


def unreadable_folder(env: Env, tmp: Path, monkeypatch) -> None:
    real = os.scandir

    def scandir(path="."):
        if str(path).endswith("bounding_box_train"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def disk_full_on_save(env: Env, tmp: Path, monkeypatch) -> None:
    def full(obj, handle, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)


def disk_full_on_flush(env: Env, tmp: Path, monkeypatch) -> None:
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)


def resnet_state(tmp: Path) -> None:
    torch.save(torchvision.models.resnet18().state_dict(), tmp / "r18.pth")


def truncated_checkpoint(env: Env, tmp: Path) -> None:
    data = (env.run / "checkpoints" / "last.pth").read_bytes()
    write(tmp / "cut.pth", data[: len(data) // 2])


# -- the table --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    args: list[str]
    code: int
    fragment: str
    setup: Callable | None = None
    needs_monkeypatch: bool = False
    extra: dict = field(default_factory=dict)


TRAIN = ["train", "--config", "{cfg}", "--data-root", "{root}", "--output", "{tmp}/out"]
RESUME = ["train", "--output", "{tmp}/run", "--data-root", "{root}", "--resume"]
EVAL = ["evaluate", "--checkpoint", "{run}/checkpoints/last.pth", "--data-root", "{root}", "--workers", "0"]


def train_with(*overrides: str) -> list[str]:
    return TRAIN + list(overrides)


CASES = [
    # config values: one line naming the key and what is allowed (issue items 4, 6, 7)
    Case("batch_size_0", train_with("data.batch_size=0"), 2, "'data.batch_size' in command-line overrides must be an integer >= 1, got 0"),
    Case("num_instances_0", train_with("data.num_instances=0"), 2, "'data.num_instances'"),
    Case("height_0", train_with("data.height=0"), 2, "'data.height' in command-line overrides must be an integer >= 1"),
    Case("eval_batch_0", train_with("eval.batch_size=0"), 2, "'eval.batch_size'"),
    Case("workers_negative", train_with("data.workers=-1"), 2, "'data.workers' in command-line overrides must be an integer >= 0"),
    Case("lr_negative", train_with("optim.lr=-1"), 2, "'optim.lr' in command-line overrides must be a number > 0"),
    Case("lr_nan", train_with("optim.lr=nan"), 2, "'optim.lr' in command-line overrides must be a finite number"),
    Case("device_tpu", train_with("train.device=tpu"), 2, "'train.device' in command-line overrides must be auto, cpu, cuda or cuda:N"),
    Case("device_missing_gpu", train_with("train.device=cuda:99"), 2, "train.device=cuda:99"),
    Case("epochs_0", train_with("train.epochs=0"), 2, "'train.epochs' in command-line overrides must be an integer >= 1"),
    Case("epochs_negative", train_with("train.epochs=-1"), 2, "'train.epochs'"),
    Case("iters_negative", train_with("train.iters=-5"), 2, "'train.iters' in command-line overrides must be an integer >= 0"),
    Case("epochs_float_cli", train_with("train.epochs=1.9"), 2, "'train.epochs' in command-line overrides must be an integer, got '1.9'"),
    Case("epochs_float_yaml", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "must be an integer, got 1.9", yaml_over_tiny("train:\n  epochs: 1.9\n")),
    Case("epochs_bool_yaml", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "must be an integer, got True", yaml_over_tiny("train:\n  epochs: yes\n")),
    Case("bool_from_int_yaml", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "'eval.flip' in", yaml_over_tiny("eval:\n  flip: 5\n")),
    Case("str_from_number_yaml", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "'model.backbone' in", yaml_over_tiny("model:\n  backbone: 50\n")),
    Case("bool_maybe", train_with("eval.flip=maybe"), 2, "'eval.flip' in command-line overrides must be true or false"),
    Case("eps_above_1", train_with("cluster.eps=1.5"), 2, "'cluster.eps' in command-line overrides must be a number in (0, 1)"),
    Case("eps_0", train_with("cluster.eps=0"), 2, "'cluster.eps'"),
    Case("min_samples_0", train_with("cluster.min_samples=0"), 2, "'cluster.min_samples'"),
    Case("k1_0", train_with("cluster.k1=0"), 2, "'cluster.k1'"),
    Case("k2_above_k1", train_with("cluster.k1=6", "cluster.k2=7"), 2, "cluster.k2 (7) must not exceed cluster.k1 (6)"),
    Case("batch_not_multiple", train_with("data.batch_size=10"), 2, "data.batch_size (10) must be a multiple of data.num_instances (4)"),
    Case("batch_one_identity", train_with("data.batch_size=4"), 2, "must hold at least 2 identities"),
    Case("unknown_base", train_with("method.base=foo"), 2, "'method.base' in command-line overrides must be one of cluster_contrast, ice, spcl"),
    Case("hard_samples_twice", train_with("method.hard_samples=[hpf,hpf]"), 2, "'method.hard_samples' in command-line overrides must be a list of distinct names from:"),
    Case("hard_samples_unknown", train_with("method.hard_samples=[xyz]"), 2, "must be a list of distinct names from:"),
    Case("memory_kind", train_with("memory.kind=stack"), 2, "'memory.kind' in command-line overrides must be one of momentum, instance, queue"),
    Case("acfl_alignment", train_with("acfl.alignment=kl"), 2, "'acfl.alignment'"),
    Case("hng_fusion", train_with("hng.fusion=add"), 2, "'hng.fusion'"),
    Case("calibrate_bn", train_with("train.calibrate_bn=sometimes"), 2, "'train.calibrate_bn'"),
    Case("milestones_decreasing", train_with("optim.milestones=[20,10]"), 2, "'optim.milestones' in command-line overrides must be increasing epochs, got [20, 10]"),
    Case("lr_schedule_start", train_with("optim.lr_schedule=[[5,1.0]]"), 2, "'optim.lr_schedule' in command-line overrides must start at epoch 0"),
    Case("flip_p_above_1", train_with("data.flip_p=1.5"), 2, "'data.flip_p'"),
    Case("backbone_unknown", train_with("model.backbone=resnet51"), 2, "'model.backbone' in command-line overrides must be one of"),
    Case("last_stride_3", train_with("model.last_stride=3"), 2, "'model.last_stride'"),
    Case("save_every_0", train_with("train.save_every=0"), 2, "'train.save_every'"),
    Case("unknown_key", train_with("train.epoch=2"), 2, "Did you mean 'train.epochs'"),
    Case("camera_pattern_invalid", train_with("data.camera_pattern=cam("), 2, "'data.camera_pattern'"),
    Case("override_without_section", train_with("epochs=3"), 2, "must look like section.key=value"),
    # config files (issue items 6, 9)
    Case("base_is_a_number", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "_base_ in", lambda env, tmp: write(tmp / "c.yaml", "_base_: 5\n")),
    Case("config_not_utf8", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "is not UTF-8 text", yaml_over_tiny("train:\n  epochs: 1 # \xe9t\xe9\n".encode("latin-1"))),
    Case("config_is_a_folder", ["train", "--config", "{tmp}", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "is a folder, expected a YAML file"),
    Case("config_missing", ["train", "--config", "{tmp}/none.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "none.yaml does not exist"),
    Case("config_symlink_loop", ["train", "--config", "{tmp}/loop.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "loop.yaml", lambda env, tmp: (tmp / "loop.yaml").symlink_to(tmp / "loop.yaml")),
    Case("config_bad_yaml", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "is not valid YAML", yaml_over_tiny("train: [epochs: 3\n")),
    Case("config_top_level_list", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "must hold a mapping of sections", lambda env, tmp: write(tmp / "c.yaml", "- 1\n- 2\n")),
    Case("config_section_scalar", ["train", "--config", "{tmp}/c.yaml", "--data-root", "{root}", "--output", "{tmp}/out"], 2,
         "config section 'train'", yaml_over_tiny("train: 5\n")),
    Case("no_config", ["train", "--data-root", "{root}", "--output", "{tmp}/out"], 2, "train needs --config NAME_OR_FILE"),
    # data (issue items 4, 6, 7, 9)
    Case("data_root_missing", ["train", "--config", "{cfg}", "--data-root", "{tmp}/nowhere", "--output", "{tmp}/out"], 2,
         "nowhere does not exist"),
    Case("data_root_symlink_loop", ["train", "--config", "{cfg}", "--data-root", "{tmp}/loop", "--output", "{tmp}/out"], 2,
         "leads nowhere", lambda env, tmp: (tmp / "loop").symlink_to(tmp / "loop")),
    Case("folder_with_symlink_loop", ["datasets", "inspect", "{tmp}/crops", "--format", "folder"], 0,
         "train   0:8", looping_folder),
    Case("unreadable_folder", ["datasets", "inspect", "{root}"], 2, "cannot read folder", unreadable_folder, True),
    Case("stray_list_train_txt", ["datasets", "inspect", "{tmp}/data"], 0, "(format market)", stray_msmt_list),
    Case("subfolder_images", ["datasets", "inspect", "{tmp}/data"], 0, "ignored 1 subfolder(s)", subfolder_images),
    Case("empty_training_split", ["train", "--config", "{cfg}", "--data-root", "{tmp}/data", "--output", "{tmp}/out"], 2,
         "has no training images", lambda env, tmp: [p.unlink() for p in (copy_root(env, tmp) / "bounding_box_train").iterdir()]),
    Case("fewer_images_than_a_batch", train_with("data.batch_size=64"), 2, "has 60 images, fewer than one batch"),
    Case("k1_above_images", train_with("cluster.k1=100"), 2, "cluster.k1=100 needs more than k1 training images"),
    Case("no_cross_camera_match", ["train", "--config", "{cfg}", "--data-root", "{tmp}/data", "--output", "{tmp}/out"], 2,
         "no query of", no_cross_camera_gallery),
    Case("evaluate_no_cross_camera_match", EVAL[:4] + ["{tmp}/data", "--workers", "0"], 2, "no query of",
         no_cross_camera_gallery),
    # outputs (issue items 6, 7, 9)
    Case("output_empty", ["train", "--config", "{cfg}", "--data-root", "{root}", "--output", ""], 2,
         "argument --output: must not be empty"),
    Case("output_under_a_file", ["train", "--config", "{cfg}", "--data-root", "{root}", "--output", "{tmp}/f/run"], 2,
         "is a file, not a folder", lambda env, tmp: write(tmp / "f", "x")),
    Case("json_under_a_file", EVAL + ["--json", "{tmp}/f/r.json"], 2, "--json", lambda env, tmp: write(tmp / "f", "x")),
    Case("json_is_a_folder", EVAL + ["--json", "{tmp}"], 2, "is a folder: give a file name"),
    Case("ranked_image_under_a_file", EVAL + ["--ranked-image", "{tmp}/f/r.png"], 2, "--ranked-image",
         lambda env, tmp: write(tmp / "f", "x")),
    Case("json_disk_full", EVAL + ["--json", "{tmp}/r.json"], 2, "cannot write", disk_full_on_flush, True),
    Case("checkpoint_disk_full", train_with(), 2, "cannot write", disk_full_on_save, True),
    Case("synth_output_under_a_file", ["datasets", "synth", "{tmp}/f/data"], 2, "is a file, not a folder",
         lambda env, tmp: write(tmp / "f", "x")),
    Case("figures_output_under_a_file", ["figures", "--run", "{run}", "--which", "fig5a", "--output", "{tmp}/f/figs"], 2,
         "is a file, not a folder", lambda env, tmp: write(tmp / "f", "x")),
    Case("demo_output_under_a_file", ["demo", "--output", "{tmp}/f/demo"], 2, "is a file, not a folder",
         lambda env, tmp: write(tmp / "f", "x")),
    Case("inspect_json_under_a_file", ["datasets", "inspect", "{root}", "--json", "{tmp}/f/r.json"], 2, "--json",
         lambda env, tmp: write(tmp / "f", "x")),
    # checkpoints and weights: nothing in them runs (issue items 1, 9)
    Case("evil_checkpoint", ["evaluate", "--checkpoint", "{tmp}/evil.pth", "--data-root", "{root}"], 2,
         "refusing to load checkpoint", lambda env, tmp: evil_checkpoint(tmp / "evil.pth", tmp / "MARKER")),
    Case("evil_legacy_checkpoint", ["evaluate", "--checkpoint", "{tmp}/evil.pth", "--data-root", "{root}"], 2,
         "posix.system", lambda env, tmp: evil_checkpoint(tmp / "evil.pth", tmp / "MARKER", legacy=True)),
    Case("evil_raw_pickle", ["evaluate", "--checkpoint", "{tmp}/evil.pth", "--data-root", "{root}"], 2,
         "not a file written by torch.save", lambda env, tmp: evil_raw_pickle(tmp / "evil.pth", tmp / "MARKER")),
    Case("evil_weights", ["evaluate", "--backbone", "resnet18", "--weights", "{tmp}/evil.pth", "--data-root", "{root}"], 2,
         "refusing to load weights file", lambda env, tmp: evil_checkpoint(tmp / "evil.pth", tmp / "MARKER")),
    Case("evil_figures_checkpoint", ["figures", "--run", "{run}", "--checkpoint", "{tmp}/evil.pth", "--data-root", "{root}",
                                     "--which", "fig5b"], 2, "refusing to load checkpoint",
         lambda env, tmp: evil_checkpoint(tmp / "evil.pth", tmp / "MARKER")),
    Case("evil_resume", RESUME, 2, "refusing to load checkpoint",
         lambda env, tmp: evil_checkpoint(copy_run(env, tmp) / "checkpoints" / "last.pth", tmp / "MARKER")),
    Case("checkpoint_is_a_folder", ["evaluate", "--checkpoint", "{tmp}", "--data-root", "{root}"], 2, "is a folder, expected a .pth file"),
    Case("checkpoint_is_plain_weights", ["evaluate", "--checkpoint", "{tmp}/r18.pth", "--data-root", "{root}"], 2,
         "is not a hardreid checkpoint", lambda env, tmp: resnet_state(tmp)),
    Case("checkpoint_truncated", ["evaluate", "--checkpoint", "{tmp}/cut.pth", "--data-root", "{root}"], 2,
         "cannot read checkpoint", truncated_checkpoint),
    Case("weights_text_file", ["evaluate", "--backbone", "resnet18", "--weights", "{tmp}/w.pth", "--data-root", "{root}"], 2,
         "cannot read weights file", lambda env, tmp: write(tmp / "w.pth", "not weights")),
    # resume (issue items 2, 9)
    Case("resume_empty_dir", ["train", "--output", "{tmp}", "--data-root", "{root}", "--resume"], 2, "nothing to resume in"),
    Case("resume_other_method", RESUME + ["method.base=ice"], 2, "method.base: 'cluster_contrast' -> 'ice'",
         lambda env, tmp: copy_run(env, tmp)),
    Case("resume_ice_checkpoint_in_cc_run", RESUME, 2, "method.base: 'ice' -> 'cluster_contrast'", fake_ice_checkpoint),
    Case("resume_other_data", RESUME[:4] + ["{tmp}/data", "--resume"], 2, "was trained on 60 training images",
         drop_a_training_image),
    Case("resume_other_config_file", RESUME + ["--config", "{tmp}/c.yaml"], 2, "train.seed: 0 -> 5",
         lambda env, tmp: (copy_run(env, tmp), tiny_yaml(tmp, train={"epochs": 1, "iters": 1, "seed": 5}))),
    Case("resume_fewer_epochs_than_done", RESUME + ["train.epochs=1"], 2, "has already trained 2 epochs",
         lambda env, tmp: _two_epoch_checkpoint(env, tmp)),
    # command-line values
    Case("evaluate_without_model", ["evaluate", "--data-root", "{root}"], 2, "--checkpoint FILE or --backbone NAME"),
    Case("evaluate_workers_negative", EVAL[:-1] + ["-1"], 2, "argument --workers: must be >= 0"),
    Case("evaluate_height_0", EVAL + ["--height", "0"], 2, "argument --height: must be >= 1"),
    Case("synth_one_camera", ["datasets", "synth", "{tmp}/s", "--cameras", "1"], 2, "argument --cameras: must be >= 2"),
    Case("figures_without_metrics", ["figures", "--run", "{tmp}", "--which", "fig5a"], 2, "has no metrics.json"),
]


def _two_epoch_checkpoint(env: Env, tmp: Path) -> None:
    """The run's last.pth as if it had trained 2 epochs (history and config say so)."""
    from hardreid.training.checkpoint import load_checkpoint, save_checkpoint

    run = copy_run(env, tmp)
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    state["epoch"], state["config"]["train"]["epochs"] = 2, 2
    save_checkpoint({k: v for k, v in state.items() if k != "format"}, run / "checkpoints" / "last.pth")
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["train"]["epochs"] = 2
    (run / "config.yaml").write_text(yaml.safe_dump(config))


def test_the_table_has_at_least_60_cases():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input(case: Case, env: Env, tmp_path: Path, capsys, monkeypatch):
    if case.setup is not None:
        case.setup(env, tmp_path, monkeypatch) if case.needs_monkeypatch else case.setup(env, tmp_path)
    capsys.readouterr()
    args = [a.format(root=env.root, cfg=env.cfg, run=env.run, tmp=tmp_path) for a in case.args]
    try:
        code = main(args)
    except SystemExit as exit_info:  # argparse errors
        code = exit_info.code
    out, err = capsys.readouterr()
    assert code == case.code, f"exit code {code}, expected {case.code}\nstdout: {out}\nstderr: {err}"
    assert case.fragment in out + err, f"{case.fragment!r} not in\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in err and "weights_only=False" not in err
    if code == 2 and not err.startswith("usage:"):
        errors = [line for line in err.splitlines() if "error:" in line]
        assert len(errors) == 1, err  # one clear line
    assert not (tmp_path / "MARKER").exists(), "code from a pickle ran"
