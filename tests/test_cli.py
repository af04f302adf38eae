"""The command line: contract of train / evaluate / datasets, and one clear message per user mistake."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from hardreid.cli import main

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_train_then_evaluate_contract(tiny_root, tmp_path, capsys):
    from hardreid.config import dump_config

    dump_config(tiny_config(train={"epochs": 1}), tmp_path / "tiny.yaml")
    code, out, err = run_cli(["train", "--config", tmp_path / "tiny.yaml", "--data-root", tiny_root,
                              "--output", tmp_path / "run", "train.iters=1"], capsys)
    assert code == 0, err
    assert "final: mAP" in out
    ckpt = tmp_path / "run" / "checkpoints" / "last.pth"
    code, out, err = run_cli(["evaluate", "--checkpoint", ckpt, "--data-root", tiny_root, "--format", "market",
                              "--json", tmp_path / "r.json", "--ranked-image", tmp_path / "ranked.png", "--workers", 0], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report) >= {"mAP", "cmc", "num_query", "num_gallery"} and set(report["cmc"]) >= {"1", "5", "10"}
    assert report["num_query"] > 0 and 0 <= report["mAP"] <= 100
    assert f"mAP {report['mAP']:.1f}" in out
    assert (tmp_path / "ranked.png").stat().st_size > 1000
    code, out, err = run_cli(["evaluate", "--checkpoint", ckpt, "--data-root", tiny_root, "--rerank", "--workers", 0],
                             capsys)
    assert code == 0 and "re-ranked (standard)" in out, err  # a bare --rerank: k-reciprocal, as before
    code, out, err = run_cli(["evaluate", "--checkpoint", ckpt, "--data-root", tiny_root, "--rerank", "camera_aware",
                              "--workers", 0], capsys)
    assert code == 0 and "re-ranked (camera_aware)" in out, err
    with pytest.raises(SystemExit):  # argparse: usage and one line
        main(["evaluate", "--checkpoint", str(ckpt), "--data-root", str(tiny_root), "--rerank", "ca"])
    assert "invalid choice: 'ca'" in capsys.readouterr().err


def test_evaluate_untrained_backbone(tiny_root, tmp_path, capsys):
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mnv2.pth")
    code, out, err = run_cli(["evaluate", "--backbone", "mobilenet_v2", "--weights", tmp_path / "mnv2.pth",
                              "--data-root", tiny_root, "--height", 64, "--width", 32, "--workers", 0], capsys)
    assert code == 0, err and "mAP" in out


def _error(args, capsys) -> str:
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "Traceback" not in err
    return err


def test_user_mistakes_get_one_clear_message(tiny_root, tmp_path, capsys):
    cfg = ROOT / "configs" / "cluster_contrast" / "cpu_mobilenet.yaml"
    err = _error(["train", "--config", cfg, "--data-root", tiny_root, "--output", tmp_path / "r", "train.epoch=2"], capsys)
    assert "unknown config key 'train.epoch'" in err
    err = _error(["train", "--config", cfg, "--data-root", tmp_path / "nowhere", "--output", tmp_path / "r"], capsys)
    assert "nowhere" in err
    err = _error(["evaluate", "--data-root", tiny_root], capsys)
    assert "--checkpoint" in err
    err = _error(["evaluate", "--checkpoint", tmp_path / "missing.pth", "--data-root", tiny_root], capsys)
    assert "missing.pth does not exist" in err
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    err = _error(["evaluate", "--checkpoint", tmp_path / "r18.pth", "--data-root", tiny_root], capsys)
    assert "not a hardreid checkpoint" in err


def test_checkpoint_of_another_architecture(tiny_root, tmp_path, capsys):
    from hardreid.models import model_from_config
    from hardreid.training.checkpoint import load_checkpoint, load_model_state, save_checkpoint

    save_checkpoint({"model": model_from_config(tiny_config()).state_dict(), "backbone": "mobilenet_v2", "feat_dim": 1280,
                     "config": tiny_config().to_dict()}, tmp_path / "m.pth")
    from hardreid.errors import UserError

    other = model_from_config(tiny_config(model={"backbone": "resnet18"}))
    with pytest.raises(UserError, match=r"m.pth holds a 'mobilenet_v2' model.*'resnet18' model being built \(\d+ missing "
                                        r"keys: [^;]+ and \d+ more; \d+ unexpected keys") as err:
        load_model_state(other, load_checkpoint(tmp_path / "m.pth"), tmp_path / "m.pth")
    assert len(str(err.value)) < 700  # issue 24: it was one 3-8 KB line


def test_unreadable_image_during_training_names_the_file(tiny_root, tmp_path, capsys):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(tiny_root, root)
    victim = sorted((root / "bounding_box_train").iterdir())[5]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated JPEG
    from hardreid.config import dump_config

    dump_config(tiny_config(), tmp_path / "tiny.yaml")
    err = _error(["train", "--config", tmp_path / "tiny.yaml", "--data-root", root, "--output", tmp_path / "r"], capsys)
    assert victim.name in err and "cannot read image" in err


def test_datasets_inspect_and_help(tiny_root, capsys):
    code, out, _ = run_cli(["datasets", "inspect", tiny_root], capsys)
    assert code == 0 and "train" in out and "query" in out
    for command in (["--help"], ["train", "--help"], ["evaluate", "--help"], ["demo", "--help"], ["datasets", "inspect", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(command)
        assert exit_info.value.code == 0
        assert "examples:" in capsys.readouterr().out


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "hardreid.cli", "--help"], capture_output=True, text=True, check=True).stdout
    assert "hardreid" in out and "train" in out


def test_choices_are_the_library_names():
    """The parser offers exactly the names the implementing modules accept (no second list to forget)."""
    from hardreid.cli import build_parser
    from hardreid.cli.common import FORMATS, SUBSETS
    from hardreid.data.datasets import CUHK03NP_SUBSETS, FORMATS as DATA_FORMATS
    from hardreid.data.subsample import MARKET_LAYOUT_FORMATS
    from hardreid.export.formats import FORMATS as EXPORT_FORMATS
    from hardreid.retrieval.index import KINDS

    assert sorted(FORMATS) == sorted(["auto", *DATA_FORMATS]) and sorted(SUBSETS) == sorted(CUHK03NP_SUBSETS)
    commands = build_parser()._subparsers._group_actions[0].choices
    datasets = commands["datasets"]._subparsers._group_actions[0].choices

    def choices(parser, option):
        return next(a.choices for a in parser._actions if option in a.option_strings)

    assert list(choices(commands["export"], "--format")) == list(EXPORT_FORMATS)
    assert list(choices(commands["index"], "--kind")) == list(KINDS)
    assert list(choices(datasets["subsample"], "--format")) == ["auto", *MARKET_LAYOUT_FORMATS]
    for parser in (commands["train"], commands["evaluate"], commands["figures"], datasets["inspect"]):
        assert choices(parser, "--format") == FORMATS


def test_weights_path_is_stored_absolute_so_resume_works_from_elsewhere(tiny_root, tmp_path, capsys, monkeypatch):
    from hardreid.config import dump_config, load_config

    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mnv2.pth")
    dump_config(tiny_config(train={"epochs": 1, "iters": 1}), tmp_path / "tiny.yaml")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli(["train", "--config", "tiny.yaml", "--data-root", tiny_root, "--output", "run",
                            "--weights", "mnv2.pth"], capsys)
    assert code == 0, err
    stored = load_config(tmp_path / "run" / "config.yaml").model.weights
    assert stored == str((tmp_path / "mnv2.pth").resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # resume from another directory with the run's own config (2 epochs now)
    code, _, err = run_cli(["train", "--output", tmp_path / "run", "--data-root", tiny_root, "--resume",
                            "train.epochs=2"], capsys)
    assert code == 0, err
