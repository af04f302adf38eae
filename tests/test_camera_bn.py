"""Camera-based BatchNorm (ECCV 2020): the training path (per-camera batch statistics) and the test-time step
(per-camera recalibration before extraction). Not wired into the trainer yet (issue 26, item 2)."""

from __future__ import annotations

import copy
import logging

import pytest
import torch

from hardreid.data.datasets import load_dataset
from hardreid.data.transforms import eval_transform
from hardreid.data.types import Sample
from hardreid.errors import UserError
from hardreid.evaluation.camera_bn import extract_features_camera_bn
from hardreid.evaluation.features import calibrate_batchnorm, extract_features
from hardreid.models.camera_bn import per_camera_pool_and_embed
from hardreid.models.reid import ReidModel

from conftest import tiny_config


def small_model() -> ReidModel:
    torch.manual_seed(0)
    return ReidModel("resnet18", last_stride=2, img_size=(64, 32)).train()


def test_each_camera_is_normalised_with_its_own_batch_statistics():
    model = small_model()
    reference = copy.deepcopy(model)
    x = torch.randn(8, 3, 64, 32)
    cams = torch.tensor([2, 0, 2, 1, 0, 1, 0, 2])
    pooled, embedded = per_camera_pool_and_embed(model, x, cams)
    for cam in (0, 1, 2):  # what one forward per camera gives (cameras in increasing order, as the groups run)
        rows = torch.nonzero(cams == cam).flatten()
        p, e = reference.embed_chunk(x[rows])
        torch.testing.assert_close(pooled[rows], p, rtol=0, atol=0)
        torch.testing.assert_close(embedded[rows], e, rtol=0, atol=0)
    for (name, a), (_, b) in zip(model.named_buffers(), reference.named_buffers()):
        assert torch.equal(a, b), name  # the running statistics moved as the per-camera forwards moved them
    plain = copy.deepcopy(reference).pool_and_embed(x)[1]  # the whole batch in one group differs
    assert (plain - embedded).abs().max() > 1e-2
    embedded.sum().backward()  # gradients flow through every camera's group
    assert model.neck.weight.grad is not None and torch.isfinite(model.neck.weight.grad).all()


def test_eval_mode_and_refusals():
    model = small_model()
    x = torch.randn(6, 3, 64, 32)
    with pytest.raises(UserError, match=r"at least 2 images of each camera.*\[1\] have 1"):
        per_camera_pool_and_embed(model, x, torch.tensor([0, 0, 1, 2, 2, 2]))
    with pytest.raises(UserError, match="one camera id per image"):
        per_camera_pool_and_embed(model, x, torch.tensor([0, 0, 1]))
    model.eval()
    torch.testing.assert_close(per_camera_pool_and_embed(model, x, torch.tensor([0, 0, 1, 2, 2, 2]))[1],
                               model.pool_and_embed(x)[1], rtol=0, atol=0)


def test_features_are_extracted_with_each_cameras_recalibrated_statistics(tiny_root, caplog):
    cfg = tiny_config()
    data = load_dataset("market", tiny_root)
    transform = eval_transform(cfg.data)
    model = ReidModel("mobilenet_v2", last_stride=2, img_size=(64, 32))
    calibrate_batchnorm(model, data.train, transform, batch_size=16, workers=0)  # some global statistics
    samples = list(data.gallery[:12])
    samples.append(Sample(samples[0].path, -1, -1))  # an image without a camera
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="hardreid"):
        got = extract_features_camera_bn(model, samples, transform, batch_size=4, workers=0)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # statistics restored
    assert sum("no camera" in r.getMessage() for r in caplog.records) == 1
    cams = sorted({s.camid for s in samples if s.camid >= 0})
    assert len(cams) >= 2
    for cam in cams:  # expected: a fresh copy calibrated on that camera's images only
        rows = [i for i, s in enumerate(samples) if s.camid == cam]
        part = [samples[i] for i in rows]
        calibrated = copy.deepcopy(model)
        calibrate_batchnorm(calibrated, part, transform, batch_size=4, workers=0)
        torch.testing.assert_close(got[rows], extract_features(calibrated, part, transform, batch_size=4, workers=0))
    torch.testing.assert_close(got[-1:], extract_features(model, samples[-1:], transform, workers=0))  # global
    assert (got[-1] - got[0]).abs().max() > 1e-3  # the same image with its camera's statistics differs
