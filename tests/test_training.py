"""The epoch loop end to end on a tiny synthetic set: run files, resume, failure modes."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from hardreid.config import load_config
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.runs import train
from hardreid.training.checkpoint import load_checkpoint

from conftest import tiny_config


def test_run_writes_config_log_metrics_checkpoints(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    result = train(tiny_config(), data, tmp_path / "run", log_to_stderr=False)
    run = tmp_path / "run"
    assert load_config(run / "config.yaml") == tiny_config()
    rows = json.loads((run / "metrics.json").read_text())
    assert [r["epoch"] for r in rows] == [1, 2]
    for row in rows:
        assert row["clusters"] > 0 and row["clusters"] + row["outliers"] <= len(data.train)
        assert 0 <= row["mAP"] <= 100 and 0 <= row["top1"] <= row["top5"] <= row["top10"] <= 100
        assert row["loss"] > 0 and row["seconds"] > 0
    with open(run / "metrics.csv") as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in table] == [1, 2] and {"mAP", "top1", "clusters", "outliers", "loss"} <= set(table[0])
    log = (run / "train.log").read_text()
    assert "epoch 1/2 pseudo labels" in log and "epoch 2/2 done" in log
    state = load_checkpoint(run / "checkpoints" / "last.pth")
    assert state["epoch"] == 2 and (run / "checkpoints" / "best.pth").is_file() and (run / "curves.png").is_file()
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert result.final["epoch"] == 2


def test_training_changes_weights_and_memory_update_is_outside_backward(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    from hardreid.models import model_from_config

    cfg = tiny_config(train={"epochs": 1, "eval_every": 0})
    model = model_from_config(cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = train(cfg, data, tmp_path / "run", model=model, log_to_stderr=False)
    changed = [k for k, v in result.model.state_dict().items() if v.dtype.is_floating_point and not torch.equal(v, before[k])]
    assert any("backbone" in k for k in changed)
    assert "neck.bias" not in changed  # frozen


def test_resume_continues_exactly(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    straight = train(tiny_config(), data, tmp_path / "straight", log_to_stderr=False)
    train(tiny_config(train={"epochs": 1}), data, tmp_path / "split", log_to_stderr=False)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(), data, tmp_path / "split", log_to_stderr=False)
    resumed = train(tiny_config(), data, tmp_path / "split", resume=True, log_to_stderr=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    # a resumed run repeats the straight run's computations (same shapes, order, thread count; saved state exact): equal by construction
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    assert resumed.history[1]["mAP"] == pytest.approx(straight.history[1]["mAP"])


def test_evaluation_does_not_change_training(tiny_root, tmp_path):
    """Evaluating after every epoch or only at the end gives the same weights (evaluation forks the RNG)."""
    data = load_dataset("market", tiny_root)
    every = train(tiny_config(train={"eval_every": 1}), data, tmp_path / "every", log_to_stderr=False)
    end = train(tiny_config(train={"eval_every": 0}), data, tmp_path / "end", log_to_stderr=False)
    assert "mAP" in every.history[0] and "mAP" not in end.history[0]
    # the same training computations in both runs (evaluation forks the RNG and changes no state): equal by construction
    for key, value in every.model.state_dict().items():
        torch.testing.assert_close(end.model.state_dict()[key], value, msg=key)


def test_resume_without_run_is_an_error(tiny_root, tmp_path):
    with pytest.raises(UserError, match="nothing to resume"):
        train(tiny_config(), load_dataset("market", tiny_root), tmp_path / "none", resume=True, log_to_stderr=False)


def test_dbscan_without_clusters_is_a_clear_error(tiny_root, tmp_path):
    cfg = tiny_config(cluster={"eps": 0.01, "min_samples": 10000})
    with pytest.raises(UserError, match=r"DBSCAN found no cluster among \d+ training images \(cluster.eps=0.01, cluster.min_samples=10000\)"):
        train(cfg, load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)


def test_nan_loss_is_reported(tiny_root, tmp_path):
    cfg = tiny_config(optim={"lr": 1e30}, train={"epochs": 2, "iters": 3})
    with pytest.raises(UserError, match=r"(loss is nan|NaN/inf features).*lower optim.lr"):
        train(cfg, load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
