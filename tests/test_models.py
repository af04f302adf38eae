"""Backbones, pooling, neck, weight loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from hardreid.errors import UserError
from hardreid.models import build_model
from hardreid.models.reid import GeneralizedMeanPooling

from rounding import U64, forward_error

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "mobilenet_v2_imagenet.pth"


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("mobilenet_v2", 1280)])
def test_feature_dims_and_unit_norm(name, dim):
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 32))
    assert out.shape == (2, dim)
    torch.testing.assert_close(out.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("name,stride2,stride1", [("resnet18", (2, 1), (4, 2)), ("mobilenet_v2", (2, 1), (4, 2))])
def test_last_stride(name, stride2, stride1):
    x = torch.randn(1, 3, 64, 32)
    assert build_model(name, last_stride=2).backbone(x).shape[-2:] == stride2
    assert build_model(name, last_stride=1).backbone(x).shape[-2:] == stride1


def test_gem_pooling_matches_formula_and_limits():
    x = torch.rand(2, 3, 4, 5) + 0.1
    # the module runs these very operations on the same shapes (its clamp at eps is the identity for x >= 0.1):
    # equal on every CPU, the default tolerance only covers a reordering inside the module
    torch.testing.assert_close(GeneralizedMeanPooling(3.0)(x), x.pow(3).mean((2, 3)).pow(1 / 3))
    torch.testing.assert_close(GeneralizedMeanPooling(1.0)(x), x.mean((2, 3)))
    assert torch.allclose(GeneralizedMeanPooling(200.0)(x), x.amax((2, 3)), rtol=0.05)


def test_neck_bias_frozen():
    model = build_model("resnet18")
    assert not model.neck.bias.requires_grad and model.neck.weight.requires_grad


def test_torchvision_state_dict_loads_exactly(tmp_path):
    reference = torchvision.models.resnet18(weights=None)
    torch.save(reference.state_dict(), tmp_path / "r18.pth")
    model = build_model("resnet18", weights=tmp_path / "r18.pth", last_stride=2).eval()
    reference.eval()
    x = torch.randn(1, 3, 64, 32)
    body = torch.nn.Sequential(*list(reference.children())[:-2])
    torch.testing.assert_close(model.backbone(x), body(x))  # the same layers, weights and shapes: exact by construction


def test_weights_of_another_architecture_are_refused(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"r18.pth looks like a ResNet checkpoint \(torchvision layout, basic blocks\); "
                                        r"use model.backbone=resnet18 or resnet34"):
        build_model("resnet50", weights=tmp_path / "r18.pth")
    with pytest.raises(UserError, match=r"r18.pth does not fit backbone 'resnet34'.*missing keys"):  # same family
        build_model("resnet34", weights=tmp_path / "r18.pth")
    torch.save(torchvision.models.resnet34(weights=None).state_dict(), tmp_path / "r34.pth")
    with pytest.raises(UserError, match=r"r34.pth does not fit backbone 'resnet18': it holds \d+ backbone keys that "
                                        r"'resnet18' does not have \(e.g. \['4.2."):  # a deeper network used to load its first layers
        build_model("resnet18", weights=tmp_path / "r34.pth")
    with pytest.raises(UserError, match="does not exist"):
        build_model("resnet18", weights=tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        build_model("resnet18", weights=tmp_path / "junk.pth")


def test_download_offline_gives_clear_error(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"cannot download ImageNet weights for resnet18.*--weights PATH"):
        build_model("resnet18", pretrained=True)


def test_unknown_backbone():
    with pytest.raises(UserError, match="unknown backbone 'resnet51'"):
        build_model("resnet51")


def test_bn_chunk_normalises_each_chunk_separately():
    torch.manual_seed(0)
    model = build_model("resnet18", bn_chunk=2).train()
    x = torch.randn(4, 3, 64, 32)
    whole = model(x)
    parts = torch.nn.functional.normalize(torch.cat([model.embed_chunk(c)[1] for c in x.split(2)]), dim=1)
    torch.testing.assert_close(whole, parts)  # the model runs the same 2-image chunks: exact by construction
    model.bn_chunk = 0
    assert not torch.allclose(model(x), whole)


def test_bn_chunk_running_statistics_follow_the_first_chunk():
    """As nn.DataParallel (the first GPU's replica) and DDP (rank 0's buffers): the other chunks leave them alone."""
    torch.manual_seed(0)
    chunked = build_model("mobilenet_v2", bn_chunk=2, last_stride=2).train()
    alone = build_model("mobilenet_v2", last_stride=2).train()
    alone.load_state_dict(chunked.state_dict())
    x = torch.randn(6, 3, 64, 32)
    chunked(x)
    alone(x[:2])
    for (name, mine), theirs in zip(chunked.state_dict().items(), alone.state_dict().values()):
        if "running" in name or "num_batches" in name:  # the first chunk is x[:2] on its own: the same kernels and shapes
            assert torch.equal(mine, theirs), name
    assert int(chunked.neck.num_batches_tracked) == 1 and chunked.neck.momentum == 0.1


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason="shared MobileNetV2 weights not present")
def test_shared_mobilenet_weights_load():
    model = build_model("mobilenet_v2", weights=SHARED_WEIGHTS)
    reference = torchvision.models.mobilenet_v2()
    reference.load_state_dict(torch.load(SHARED_WEIGHTS, weights_only=True))
    torch.testing.assert_close(model.backbone[0][0].weight, reference.features[0][0].weight)


def _channels_last_gap() -> tuple[float, float]:
    """max |NHWC features - NCHW features| of one model on the same images, and the tolerance for it.

    The two layouts run different convolution kernels, whose float32 rounding depends on the CPU (up to ~2 u *
    sum of the reduction lengths, 1e-3 for MobileNetV2: no useful tolerance), so the comparison runs in float64:
    two evaluations of a unit feature differ by at most 2 * 2 * forward_error (tests/rounding.py), ~4e-12 here.
    """
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", last_stride=2).eval().double()
    x = torch.randn(3, 3, 64, 32, dtype=torch.float64)
    with torch.no_grad():
        plain = model(x)
        fast = model.use_channels_last()(x)
    return float((fast - plain).abs().max()), 4 * forward_error(model, x, U64)


def test_channels_last_gives_the_same_features():
    gap, tol = _channels_last_gap()
    assert gap <= tol, (gap, tol)


def test_channels_last_check_catches_a_layout_conversion_that_moves_pixels(monkeypatch):
    """Negative twin: NCHW -> NHWC written as a reshape (the pixels end up in the wrong places)."""
    contiguous = torch.Tensor.contiguous

    def reshaped(self, memory_format=torch.contiguous_format):
        if memory_format is torch.channels_last:
            n, c, h, w = self.shape
            return contiguous(self.reshape(n, h, w, c).permute(0, 3, 1, 2), memory_format=memory_format)
        return contiguous(self, memory_format=memory_format)

    monkeypatch.setattr(torch.Tensor, "contiguous", reshaped)
    gap, tol = _channels_last_gap()
    assert gap > 1e6 * tol, (gap, tol)


def test_learnable_gem_trains_its_exponent():
    from hardreid.models.reid import GeneralizedMeanPooling

    x = torch.rand(2, 3, 4, 2) + 0.1
    fixed, learned = GeneralizedMeanPooling(3.0), GeneralizedMeanPooling(3.0, learnable=True)
    # the same value at its initial p: x.pow(tensor p) and x.pow(3.0) may take different elementwise kernels (a few
    # u apart, relative), the mean of 8 terms and the root keep that: ~4 u = 2.4e-7 relative, inside rtol 1.3e-6
    torch.testing.assert_close(learned(x), fixed(x))
    learned(x).sum().backward()
    assert isinstance(learned.p, torch.nn.Parameter) and learned.p.grad is not None and learned.p.grad.abs() > 0
    model = build_model("resnet18", pooling="gem", gem_learnable=True)
    assert any(name == "pool.p" for name, _ in model.named_parameters())
    assert not any(name == "pool.p" for name, _ in build_model("resnet18", pooling="gem").named_parameters())
