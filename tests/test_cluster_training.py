"""The clustering options in the epoch loop: diagnostics in log / metrics / curves, SpCL and ICE with every option."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from PIL import Image

from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.runs import train
from hardreid.training.checkpoint import load_checkpoint
from hardreid.methods import EpochData, build_method
from hardreid.methods.bases import spcl

from conftest import tiny_config

DIAGNOSTIC_KEYS = {"eps", "largest_to_median", "single_camera_share", "large_cluster_share", "partition_ari",
                   "collapse_warning"}


def test_diagnostics_in_log_metrics_and_curves(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    # thresholds that every partition passes: the warning must fire (and say so in every row)
    cfg = tiny_config(cluster={"warn_large_share": 0.0, "large_cluster_factor": 0.1})
    train(cfg, data, tmp_path / "run", log_to_stderr=False)
    run = tmp_path / "run"
    rows = json.loads((run / "metrics.json").read_text())
    assert all(DIAGNOSTIC_KEYS <= set(r) for r in rows)
    assert rows[0]["partition_ari"] is None and -1 <= rows[1]["partition_ari"] <= 1
    assert rows[0]["eps"] == 0.6 and all(r["collapse_warning"] is True for r in rows)
    assert rows[1]["large_cluster_share"] == pytest.approx(1 - rows[1]["outliers"] / len(data.train))
    with open(run / "metrics.csv") as handle:
        table = list(csv.DictReader(handle))
    assert DIAGNOSTIC_KEYS <= set(table[0]) and table[0]["partition_ari"] == "" and table[1]["collapse_warning"] == "True"
    log = (run / "train.log").read_text()
    assert log.count("pseudo labels look collapsed") == 2 and "images in clusters > 0.2" in log
    assert "largest/median" in log and "ARI vs last epoch" in log
    assert Image.open(run / "curves.png").size == (1650, 396)  # three panels: accuracy, pseudo labels, diagnostics


def test_default_thresholds_stay_quiet_and_resume_keeps_last_labels(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    one = train(tiny_config(train={"epochs": 1}), data, tmp_path / "run", log_to_stderr=False)
    assert one.history[0]["collapse_warning"] is False
    resumed = train(tiny_config(), data, tmp_path / "run", resume=True, log_to_stderr=False)
    straight = train(tiny_config(), data, tmp_path / "straight", log_to_stderr=False)
    assert resumed.history[1]["partition_ari"] is not None
    # the resumed run clusters the same features as the straight one (same computations): the same partitions
    assert resumed.history[1]["partition_ari"] == pytest.approx(straight.history[1]["partition_ari"])


@pytest.mark.parametrize("base,cluster", [
    ("spcl", {"eps": "auto", "eps_rho": 0.05, "camera_normalize": "standardize", "same_camera_penalty": 1.0}),
    ("ice", {"algorithm": "hdbscan", "min_samples": 2, "camera_normalize": "mean"}),
    ("ice", {"eps": "auto", "eps_rho": 0.05, "same_camera_penalty": 4.0}),
    ("cluster_contrast", {"jaccard": "camera_aware", "k1_intra": 3, "k1_inter": 6}),
    ("spcl", {"jaccard": "camera_aware", "eps": "auto", "eps_rho": 0.05, "search": "fast"}),
])
def test_bases_train_with_the_clustering_options(tiny_root, tmp_path, base, cluster):
    data = load_dataset("market", tiny_root)
    cfg = tiny_config(method={"base": base}, cluster=cluster, train={"eval_every": 0})
    result = train(cfg, data, tmp_path / "run", log_to_stderr=False)
    assert [r["epoch"] for r in result.history] == [1, 2] and np.isfinite(result.history[-1]["loss"])
    assert (result.history[0]["eps"] is None) == (cluster.get("algorithm") == "hdbscan")


def test_spcl_refuses_hdbscan(tiny_root):
    cfg = tiny_config(method={"base": "spcl"}, cluster={"algorithm": "hdbscan"})
    with pytest.raises(UserError, match="method.base=spcl needs cluster.algorithm=dbscan"):
        build_method(cfg, torch.device("cpu"))


def test_spcl_moves_the_radius_of_the_labels(monkeypatch):
    """eps auto: the tight / loose re-clusterings are the epoch's radius -/+ spcl.eps_gap."""
    cfg = tiny_config(method={"base": "spcl"}, cluster={"eps": "auto"})
    method = build_method(cfg, torch.device("cpu"))
    radii = []

    def fake_dbscan(distance, eps, min_samples):
        radii.append(round(eps, 6))
        return np.array([0, 0, 1, 1, -1])

    monkeypatch.setattr(spcl, "dbscan_labels", fake_dbscan)
    data = EpochData(0, torch.nn.functional.normalize(torch.randn(5, 8), dim=1), torch.tensor([0, 0, 1, 1, -1]),
                     torch.zeros(5, dtype=torch.long), 2, sp.eye(5, format="csr"), eps=0.31)
    method.start_epoch(data, torch.nn.Identity())
    assert radii == [0.29, 0.33]
    with pytest.raises(UserError, match="eps = 0.985"):
        method.start_epoch(EpochData(1, data.features, data.labels, data.camids, 2, data.distance, eps=0.985),
                           torch.nn.Identity())


def test_a_bad_cluster_key_fails_before_any_work(tiny_root, tmp_path, monkeypatch):
    import hardreid.training.trainer as trainer

    monkeypatch.setattr(trainer, "extract_model_features", lambda *a, **k: pytest.fail("extracted features first"))
    cfg = tiny_config()
    cfg.cluster.camera_normalize = "per_camera"  # set in Python: not checked by apply_dict, so train must check it
    with pytest.raises(UserError, match="'cluster.camera_normalize' must be one of none, mean, standardize"):
        train(cfg, load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)


@pytest.mark.parametrize("scores, worse", [([5.0, 7.0, 2.0], True), ([5.0, 4.0, 6.0], False)])
def test_a_run_that_ends_worse_than_its_first_score_says_so(tiny_root, tmp_path, monkeypatch, scores, worse):
    from test_reliability import fake_scores

    fake_scores(monkeypatch, scores)
    train(tiny_config(train={"epochs": 3, "iters": 1, "eval_every": 1, "eval_at_start": False}),
          load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
    log = (tmp_path / "run" / "train.log").read_text()
    line = "the score fell during training: mAP 5.0 after epoch 1, 2.0 after epoch 3 (the model before training was not scored"
    assert (line in log) is worse and ("best.pth holds epoch 2 (mAP 7.0)" in log) is worse
    assert not (tmp_path / "run" / "start_scores.json").exists()


def test_a_run_is_compared_with_the_model_it_started_from(tiny_root, tmp_path, monkeypatch):
    """train.eval_at_start (default): the weights before epoch 1 are scored, kept in the checkpoint and
    start_scores.json, drawn as epoch 0, and the end of the run compares with them; a resume does not rescore."""
    from test_reliability import fake_scores

    fake_scores(monkeypatch, [3.0, 2.0, 2.5])  # start, epoch 1, epoch 2: better than epoch 1, worse than the start
    data, run = load_dataset("market", tiny_root), tmp_path / "run"
    train(tiny_config(train={"epochs": 2, "iters": 1, "eval_every": 1}), data, run, log_to_stderr=False)
    log = (run / "train.log").read_text()
    assert "before training: mAP 3, top1 3, top5 3" in log
    assert "training made the model worse: mAP 3.0 before training, 2.5 after epoch 2" in log
    assert "no epoch beat the start: best.pth holds epoch 2 (mAP 2.5)" in log
    assert json.loads((run / "start_scores.json").read_text()) == {"epoch": 0, "mAP": 3.0, "top1": 3.0, "top5": 3.0,
                                                                  "top10": 3.0}
    assert load_checkpoint(run / "checkpoints" / "last.pth")["start_scores"]["mAP"] == 3.0
    from hardreid.viz import curves

    figures = []
    monkeypatch.setattr(curves.plt, "close", figures.append)
    curves.plot_training_curves(run)
    assert [list(line.get_xdata()) for line in figures[0].axes[0].lines] == [[0, 1, 2]] * 2  # top-1, mAP from epoch 0
    fake_scores(monkeypatch, [2.9])  # only epoch 3 is scored after the resume; the start comes from the checkpoint
    train(tiny_config(train={"epochs": 3, "iters": 1, "eval_every": 1}), data, run, resume=True, log_to_stderr=False)
    log = (run / "train.log").read_text()
    assert log.count("before training:") == 1
    assert "mAP 3.0 before training, 2.9 after epoch 3" in log
