"""Feature extraction and BatchNorm calibration."""

from __future__ import annotations

import copy

import PIL.Image
import torch

from hardreid.data.datasets import load_dataset
from hardreid.data.transforms import eval_transform
from hardreid.evaluation.features import calibrate_batchnorm, extract_features
from hardreid.models import build_model

from conftest import tiny_config
from rounding import U64, forward_error, normalize_error


class Float64(torch.nn.Module):
    """``model`` in float64 on the loader's float32 images.

    The checks below compare two evaluations that run different kernels (a batch of 2 vs one of 4, the whole set
    at once vs batches of 4), whose float32 results differ by the CPU's and the library's rounding (up to
    ~u * sum of the reduction lengths, 1.9e-3 for ResNet-18: far too loose to be a useful tolerance). In float64
    those differences are ~2^29 times smaller; what is left is extract_features' float32 tail (the cast and
    F.normalize), bounded in ``tolerance``.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model.double()
        self.feat_dim = model.feat_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double())


def tolerance(model: Float64, images: torch.Tensor, norm_of_sum: float = 1.0) -> float:
    """Largest difference between two extractions of the same images by different kernels.

    Each float64 forward is within e = forward_error (relative) of the exact value, a unit feature within 2e, and
    ``flip`` sums two of them and normalises again (2 * 4e / |a + b|, ``norm_of_sum`` = the smallest |a + b|); two
    extractions: twice that. The float32 tail of each: the cast (u) and F.normalize of D values (normalize_error).
    """
    e = forward_error(model.model, images.double(), U64)
    return 2 * (8 * e / norm_of_sum) + 2 * (normalize_error(model.feat_dim) + 2.0**-24)


def _images(samples, cfg) -> torch.Tensor:
    return torch.stack([eval_transform(cfg.data)(PIL.Image.open(s.path).convert("RGB")) for s in samples])


def _batch_composition_gap(tiny_root) -> tuple[float, float]:
    """max |features of images 2-3 extracted as a batch of 2 - the same rows of a 10-image extraction in batches of
    4|, and the tolerance for it."""
    data = load_dataset("market", tiny_root)
    cfg = tiny_config()
    torch.manual_seed(0)
    model = Float64(build_model("resnet18", last_stride=2))
    samples = data.query[:10]
    feats = extract_features(model, samples, eval_transform(cfg.data), batch_size=4, workers=0)
    two = extract_features(model, samples[2:4], eval_transform(cfg.data), batch_size=4, workers=0)
    return float((two - feats[2:4]).abs().max()), tolerance(model, _images(samples, cfg))


def _flip_gap(tiny_root) -> tuple[float, float]:
    """max |flip=True extraction (batches of 4) - normalize(model(x) + model(mirrored x)) of all 10 at once|, tolerance."""
    data = load_dataset("market", tiny_root)
    cfg = tiny_config()
    torch.manual_seed(0)
    model = Float64(build_model("resnet18", last_stride=2))
    samples = data.query[:10]
    flipped = extract_features(model, samples, eval_transform(cfg.data), batch_size=4, workers=0, flip=True)
    model.eval()
    images = _images(samples, cfg)
    with torch.no_grad():
        both = model(images) + model(images.flip(3))
    expected = torch.nn.functional.normalize(both, dim=1)
    gap = float((flipped.double() - expected).abs().max())
    return gap, tolerance(model, images, float(both.norm(dim=1).min()))


def test_extract_features_order_norm_and_flip(tiny_root):
    data = load_dataset("market", tiny_root)
    cfg = tiny_config()
    model = build_model("resnet18", last_stride=2)
    samples = data.query[:10]
    feats = extract_features(model, samples, eval_transform(cfg.data), batch_size=4, workers=0)
    assert feats.shape == (10, 512) and feats.dtype == torch.float32 and model.training  # mode restored
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    gap, tol = _batch_composition_gap(tiny_root)
    assert gap <= tol, (gap, tol)  # batch composition does not matter in eval
    gap, tol = _flip_gap(tiny_root)
    assert gap <= tol, (gap, tol)  # flip: the image's and its mirror's features summed, then normalised


def test_batch_composition_check_catches_extraction_in_train_mode(tiny_root, monkeypatch):
    """Negative twin: extraction that forgets eval mode (BatchNorm normalises with each batch's statistics)."""
    monkeypatch.setattr(torch.nn.Module, "eval", lambda self: self)
    gap, tol = _batch_composition_gap(tiny_root)
    assert gap > 100 * tol, (gap, tol)


def test_flip_check_catches_a_flip_of_the_wrong_axis(tiny_root, monkeypatch):
    """Negative twin: the mirror image flipped upside down (dimension 2) instead of left-right (3) in extraction."""
    import hardreid.evaluation.features as features_module

    real = features_module.extract_features

    def upside_down(*args, **kwargs):
        flip = torch.Tensor.flip
        with monkeypatch.context() as patch:
            patch.setattr(torch.Tensor, "flip", lambda self, *dims: flip(self, 2))
            return real(*args, **kwargs)

    monkeypatch.setattr(features_module, "extract_features", upside_down)
    monkeypatch.setitem(globals(), "extract_features", upside_down)
    gap, tol = _flip_gap(tiny_root)
    assert gap > 100 * tol, (gap, tol)


def test_calibrated_eval_mode_matches_train_mode_statistics(tiny_root):
    """After calibration on one batch holding every image, eval-mode features equal train-mode ones on it."""
    data = load_dataset("market", tiny_root)
    cfg = tiny_config()
    samples = data.train[:24]
    model = build_model("resnet18", last_stride=2)
    images = _images(samples, cfg)
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


def test_calibration_measures_whole_batches_whatever_bn_chunk_says(tiny_root):
    """train.bn_chunk (per-GPU BatchNorm, emulated) does not reach calibration: chunked, only each batch's first
    chunk would count and an 11-image batch in chunks of 5 would end in a 1-image chunk (BatchNorm1d refuses it).
    The statistics equal those of the unchunked model bit for bit; bn_chunk is back afterwards."""
    data = load_dataset("market", tiny_root)
    transform = eval_transform(tiny_config().data)
    samples = data.train[:24]
    plain = build_model("resnet18", last_stride=2)
    chunked = copy.deepcopy(plain)
    chunked.bn_chunk = 5
    for model in (plain, chunked):
        calibrate_batchnorm(model, samples, transform, batch_size=11, workers=0)
    assert chunked.bn_chunk == 5
    buffers = dict(plain.named_buffers())
    assert all(torch.equal(value, buffers[key]) for key, value in chunked.named_buffers())


def test_extraction_leaves_the_global_random_stream_alone(tiny_root):
    """Extraction and calibration loaders seed themselves privately: the draws training makes next (ACFL's random
    positives) do not depend on how many loaders a run made (one per camera and process shard)."""
    data = load_dataset("market", tiny_root)
    transform = eval_transform(tiny_config().data)
    model = build_model("resnet18", last_stride=2).eval()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    extract_features(model, data.train[:6], transform, batch_size=4, workers=0)
    calibrate_batchnorm(model, data.train[:6], transform, batch_size=4, workers=0)
    assert torch.equal(torch.rand(3), expected)
