"""ViT-S/16 backbone through timm: shapes, CLS-token feature, weight files, clear errors."""

from __future__ import annotations

import sys

import pytest
import torch

from hardreid.cli import build_parser
from hardreid.errors import UserError
from hardreid.models import BACKBONES, build_model, load_backbone_weights

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_model("vit_small", img_size=(256, 128)).eval()


@pytest.fixture(scope="module")
def other_vit():
    torch.manual_seed(1)
    return build_model("vit_small", img_size=(256, 128)).eval()


def test_forward_shapes_cls_token_and_unit_norm(vit):
    assert vit.feat_dim == 384 and vit.backbone.vit.pos_embed.shape == (1, 1 + 16 * 8, 384)  # 256x128 / 16 + CLS
    with torch.no_grad():
        for size in ((256, 128), (128, 64)):  # 128x64: timm interpolates the position embedding
            x = torch.randn(2, 3, *size)
            out = vit(x)
            assert out.shape == (2, 384)
            torch.testing.assert_close(out.norm(dim=1), torch.ones(2))
            tokens = vit.backbone.vit.forward_features(x)
            assert tokens.shape == (2, 1 + (size[0] // 16) * (size[1] // 16), 384)
            # the feature is the CLS token (index 0) through the BN neck, then L2-normalised
            torch.testing.assert_close(out, torch.nn.functional.normalize(vit.neck(tokens[:, 0]), dim=1))


def test_timm_state_dict_round_trip_and_resampled_position_embedding(vit, other_vit, tmp_path):
    torch.save(vit.backbone.vit.state_dict(), tmp_path / "vit.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in vit.backbone.vit.state_dict().items()}}, tmp_path / "wrapped.pth")
    assert not torch.equal(other_vit.backbone.vit.blocks[0].attn.qkv.weight, vit.backbone.vit.blocks[0].attn.qkv.weight)
    for name in ("vit.pth", "wrapped.pth"):
        load_backbone_weights(other_vit, tmp_path / name)
        for key, value in vit.backbone.state_dict().items():
            torch.testing.assert_close(other_vit.backbone.state_dict()[key], value, msg=key)
    x = torch.randn(2, 3, 256, 128)
    with torch.no_grad():
        torch.testing.assert_close(other_vit(x), vit(x))
    # an ImageNet-style 224x224 timm checkpoint (14x14 grid, classifier head) loads at 256x128 (16x8 grid)
    source = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "in1k.pth")
    load_backbone_weights(other_vit, tmp_path / "in1k.pth")
    torch.testing.assert_close(other_vit.backbone.vit.blocks[3].attn.qkv.weight, source.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(other_vit.backbone.vit.cls_token, source.cls_token)
    assert other_vit.backbone.vit.pos_embed.shape == (1, 129, 384)


def test_wrong_files_are_refused(vit, tmp_path):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "resnet.pth")
    with pytest.raises(UserError, match=r"resnet.pth looks like a ResNet checkpoint.*use model.backbone=resnet18 or resnet34"):
        load_backbone_weights(vit, tmp_path / "resnet.pth")
    narrow = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=(128, 64))
    torch.save(narrow.state_dict(), tmp_path / "tiny.pth")  # ViT-Ti: width 192, not 384
    with pytest.raises(UserError, match=r"tiny.pth does not fit backbone 'vit_small'.*ViT-S/16"):
        load_backbone_weights(vit, tmp_path / "tiny.pth")
    with pytest.raises(UserError, match="does not exist"):
        load_backbone_weights(vit, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read weights file"):
        load_backbone_weights(vit, tmp_path / "junk.pth")
    for key, value in vit.state_dict().items():  # a refused file changes nothing
        assert torch.equal(value, before[key]), key
    with pytest.raises(UserError, match="CLS token"):
        build_model("vit_small", pooling="gem", img_size=(128, 64))


def test_pretrained_offline_asks_for_a_local_file(monkeypatch):
    real = timm.create_model

    def offline(name, pretrained=False, **kwargs):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return real(name, pretrained=False, **kwargs)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(UserError, match=r"cannot download pretrained weights for vit_small.*--weights PATH"):
        build_model("vit_small", pretrained=True, img_size=(128, 64))


def test_missing_timm_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # makes `import timm` raise ImportError
    with pytest.raises(UserError, match=r"pip install hardreid\[vit\]"):
        build_model("vit_small")


def test_registry_and_cli_list_every_backbone():
    assert "vit_small" in BACKBONES
    evaluate = build_parser()._subparsers._group_actions[0].choices["evaluate"]
    help_text = evaluate.format_help()
    for name in BACKBONES:
        assert name in help_text
