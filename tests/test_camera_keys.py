"""``model.camera_bn: auto`` and ``cluster.jaccard: auto`` (config/camera_keys.py): decided from the training images'
cameras when a run starts, written into the run, never refused for data without cameras; the CPU configs use them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from hardreid.config import CONFIG_DIR as CONFIGS
from hardreid.config import load_config
from hardreid.config.camera_keys import camera_aware_applies, resolve_camera_keys, resolve_jaccard
from hardreid.data.datasets import load_dataset
from hardreid.data.types import Sample
from hardreid.errors import UserError

from conftest import tiny_config


@pytest.mark.parametrize("given, expected", [("auto", "auto"), (" AUTO ", "auto"), (True, True), ("yes", True),
                                             (False, False), ("off", False), ("0", False)])
def test_camera_bn_takes_a_bool_or_auto(given, expected):
    assert load_config(None, [f"model.camera_bn={given}"]).model.camera_bn == expected
    assert tiny_config(model={"camera_bn": given}).model.camera_bn == expected


def test_bad_values_are_refused_in_one_line():
    with pytest.raises(UserError, match=r"'model.camera_bn' .* must be true, false or auto, got 'automatic'\. Did you "
                                        r"mean 'auto'\?"):
        load_config(None, ["model.camera_bn=automatic"])
    with pytest.raises(UserError, match="cluster.jaccard"):
        load_config(None, ["cluster.jaccard=camera"])
    # auto may turn camera_aware on, which the same-camera penalty contradicts: refused before any work
    with pytest.raises(UserError, match=r"cluster.jaccard=auto \(camera_aware on data with cameras\) both act on the "
                                        r"cameras .* or cluster.jaccard=standard\)"):
        load_config(None, ["cluster.jaccard=auto", "cluster.same_camera_penalty=1"])
    # auto may turn camera BN on: its pairing rules hold for auto too
    with pytest.raises(UserError, match="data.num_instances must be even, got 3"):
        load_config(None, ["model.camera_bn=auto", "data.num_instances=3", "data.batch_size=12"])
    with pytest.raises(UserError, match=r"set train.sync_bn=false \(or model.camera_bn=false, which auto would not be"):
        load_config(None, ["model.camera_bn=auto", "train.sync_bn=true"])


@pytest.mark.parametrize("camids, applies, why", [
    ([0, 1, 1, 0, 2], True, "the 5 training images come from 3 cameras"),
    (np.array([3, 3, 3]), False, "all 3 training images come from one camera"),
    ([0, -1, 1, -1], False, "2 of the 4 training images have no camera id"),
    ([], False, "there are no training images"),
    ((c for c in [0, 1]), True, "the 2 training images come from 2 cameras"),  # any iterable, read once
])
def test_camera_aware_applies_with_two_named_cameras_or_more(camids, applies, why):
    assert camera_aware_applies(camids) == (applies, why)


def test_resolution_copies_and_leaves_explicit_values_alone():
    cfg = tiny_config(model={"camera_bn": "auto"}, cluster={"jaccard": "auto"})
    two, line = resolve_camera_keys(cfg, [0, 1, 0])
    assert (two.model.camera_bn, two.cluster.jaccard) == (True, "camera_aware")
    assert line == ("model.camera_bn: auto -> true, cluster.jaccard: auto -> camera_aware (the 3 training images come "
                    "from 2 cameras)")
    assert (cfg.model.camera_bn, cfg.cluster.jaccard) == ("auto", "auto")  # the caller's config is untouched
    one, line = resolve_camera_keys(cfg, [0, 0])
    assert (one.model.camera_bn, one.cluster.jaccard) == (False, "standard") and "-> false" in line
    only_bn = tiny_config(model={"camera_bn": "auto"}, cluster={"jaccard": "standard"})
    resolved, line = resolve_camera_keys(only_bn, [0, 1])
    assert (resolved.model.camera_bn, resolved.cluster.jaccard) == (True, "standard")
    assert line.startswith("model.camera_bn: auto -> true (") and "jaccard" not in line
    explicit = tiny_config(model={"camera_bn": True})
    assert resolve_camera_keys(explicit, [0, 0]) == (explicit, "")  # nothing auto: the same object, no line
    assert [resolve_jaccard(v, [0, 1]) for v in ("auto", "standard", "camera_aware")] == \
        ["camera_aware", "standard", "camera_aware"]
    assert resolve_jaccard("auto", [0, 0, 0]) == "standard"


def test_a_model_built_before_the_decision_has_no_test_time_step():
    """model_from_config with camera_bn auto (not decided yet, e.g. a config inspected by `hardreid info`) builds
    the plain model: "auto" is not taken for true."""
    from hardreid.models import model_from_config

    assert model_from_config(tiny_config(model={"camera_bn": "auto"}), initial_weights=False).camera_bn_images is None
    assert model_from_config(tiny_config(model={"camera_bn": True}), initial_weights=False).camera_bn_images == 3200


def test_cluster_epoch_with_auto_is_the_decided_distance():
    """cluster_epoch (also called outside training, e.g. by the figures) decides auto from the cameras it is given:
    the same labels and distances as the explicit setting."""
    from hardreid.pseudo_labels import cluster_epoch

    rng = np.random.default_rng(0)
    feats = torch.nn.functional.normalize(torch.from_numpy(rng.normal(size=(60, 16)).astype(np.float32)), dim=1)
    for camids, decided in (((np.arange(60) % 3), "camera_aware"), (np.zeros(60, dtype=int), "standard")):
        base = {"k1": 8, "k2": 3, "eps": 0.6, "min_samples": 2}
        auto = cluster_epoch(feats, camids, tiny_config(cluster={**base, "jaccard": "auto"}).cluster)
        want = cluster_epoch(feats, camids, tiny_config(cluster={**base, "jaccard": decided}).cluster)
        np.testing.assert_array_equal(auto.labels, want.labels)
        assert auto.jaccard == want.jaccard == decided  # the collapse warning's advice reads it
        np.testing.assert_array_equal(auto.distance.toarray() if hasattr(auto.distance, "toarray") else auto.distance,
                                      want.distance.toarray() if hasattr(want.distance, "toarray") else want.distance)


AUTO = {"model": {"camera_bn": "auto"}, "cluster": {"jaccard": "auto"},
        "train": {"epochs": 1, "iters": 1, "eval_every": 0, "eval_at_start": False}}


def test_a_run_decides_auto_once_logs_it_and_keeps_it(tiny_root, tmp_path):
    """On data with two cameras auto trains with camera BN and CA-Jaccard: config.yaml and the checkpoint hold
    true / camera_aware, train.log says why in one line, and resume with the auto config continues."""
    from hardreid.training.trainer import train

    data = load_dataset("market", tiny_root)
    cfg = tiny_config(**AUTO)
    train(cfg, data, tmp_path / "run", log_to_stderr=False)
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert (saved.model.camera_bn, saved.cluster.jaccard) == (True, "camera_aware")
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pth", weights_only=False)
    assert (state["config"]["model"]["camera_bn"], state["config"]["cluster"]["jaccard"]) == (True, "camera_aware")
    assert set(state["camera_bn"]["weights"]) == {0, 1}  # per-camera statistics of both cameras
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("model.camera_bn: auto -> true, cluster.jaccard: auto -> camera_aware (the "
                     f"{len(data.train)} training images come from 2 cameras)") == 1
    assert (cfg.model.camera_bn, cfg.cluster.jaccard) == ("auto", "auto")
    longer = tiny_config(**{**AUTO, "train": {**AUTO["train"], "epochs": 2}})
    result = train(longer, data, tmp_path / "run", resume=True, log_to_stderr=False)
    assert [row["epoch"] for row in result.history] == [1, 2]


def test_data_without_cameras_is_not_refused_by_auto(tiny_root, tmp_path):
    """A one-camera folder (or images without camera ids): auto trains with plain BatchNorm and the standard
    Jaccard distance, where camera_bn=true refuses the data."""
    from hardreid.training.trainer import train

    data = load_dataset("market", tiny_root)
    one_camera = dataclasses.replace(data, train=[Sample(s.path, s.pid, 0) for s in data.train])
    train(tiny_config(**AUTO), one_camera, tmp_path / "one", log_to_stderr=False)
    saved = load_config(tmp_path / "one" / "config.yaml")
    assert (saved.model.camera_bn, saved.cluster.jaccard) == (False, "standard")
    assert "auto -> false, cluster.jaccard: auto -> standard (all " in (tmp_path / "one" / "train.log").read_text()
    with pytest.raises(UserError, match="model.camera_bn normalises each camera's images apart"):
        train(tiny_config(**{**AUTO, "model": {"camera_bn": True}}), one_camera, tmp_path / "refused",
              log_to_stderr=False)


def test_the_cpu_configs_use_auto_and_the_paper_configs_do_not():
    """The rule of benchmarks/studies/camera_cuhk03/study.yaml made camera-aware Jaccard + camera BN the default of
    the ACFL, Cluster Contrast and SHNG CPU configs (configs/camera_aware.yaml); the papers' configs and
    cluster_contrast/cpu_official.yaml (Cluster Contrast as published, at CPU size) keep standard / false."""
    auto = ["acfl/cpu_mobilenet", "acfl/cpu_momentum_memory", "cluster_contrast/cpu_mobilenet", "hng/cpu_mobilenet",
            "hng/cpu_20_epochs", "hng/cpu_study_momentum"]
    plain = ["cluster_contrast/cpu_official", "cluster_contrast/market1501", "acfl/market1501", "acfl/base",
             "hng/cluster_contrast_market", "ice/cpu_mobilenet", "spcl/cpu_mobilenet", "strong_baseline/cpu_mobilenet"]
    for name in auto + plain:
        cfg = load_config(CONFIGS / f"{name}.yaml")
        assert (cfg.model.camera_bn, cfg.cluster.jaccard) == (("auto", "auto") if name in auto else (False, "standard")), name
