"""Feature extraction and BatchNorm calibration."""

from __future__ import annotations

import torch

from hardreid.data.datasets import load_dataset
from hardreid.data.transforms import eval_transform
from hardreid.evaluation.features import calibrate_batchnorm, extract_features
from hardreid.models import build_model

from conftest import tiny_config


def test_extract_features_order_norm_and_flip(tiny_root):
    data = load_dataset("market", tiny_root)
    cfg = tiny_config()
    model = build_model("resnet18", last_stride=2)
    samples = data.query[:10]
    feats = extract_features(model, samples, eval_transform(cfg.data), batch_size=4, workers=0)
    assert feats.shape == (10, 512) and model.training  # mode restored
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    one = extract_features(model, samples[3:4], eval_transform(cfg.data), batch_size=4, workers=0)
    torch.testing.assert_close(one[0], feats[3], atol=1e-5, rtol=1e-4)  # batch composition does not matter in eval
    flipped = extract_features(model, samples, eval_transform(cfg.data), batch_size=4, workers=0, flip=True)
    model.eval()
    with torch.no_grad():
        images = torch.stack([eval_transform(cfg.data)(__import__("PIL.Image").Image.open(s.path).convert("RGB")) for s in samples])
        expected = torch.nn.functional.normalize(model(images) + model(images.flip(3)), dim=1)
    torch.testing.assert_close(flipped, expected, atol=1e-5, rtol=1e-4)


def test_calibrated_eval_mode_matches_train_mode_statistics(tiny_root):
    """After calibration on one batch holding every image, eval-mode features equal train-mode ones on it."""
    data = load_dataset("market", tiny_root)
    cfg = tiny_config()
    samples = data.train[:24]
    model = build_model("resnet18", last_stride=2)
    images = torch.stack([eval_transform(cfg.data)(__import__("PIL.Image").Image.open(s.path).convert("RGB")) for s in samples])
    with torch.no_grad():
        before_gap = (model.eval()(images) - model.train()(images)).abs().max()
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    calibrate_batchnorm(model, samples, eval_transform(cfg.data), batch_size=24, workers=0)
    for key, value in weights.items():
        assert torch.equal(model.state_dict()[key], value), key  # weights untouched
    with torch.no_grad():
        eval_out = model.eval()(images)
        train_out = model.train()(images)
    # Equal up to the unbiased (n / (n - 1)) variance that BatchNorm stores for the 24-image neck.
    assert (eval_out - train_out).abs().max() < 0.03 < before_gap
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
