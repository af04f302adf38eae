"""Person-pretrained ViT-S (PASS, TransReID-SSL ICS): checkpoints as published, the official forward, whole runs.

No real checkpoint is needed: each test fabricates the files their authors publish, with the key names, shapes
and wrappers of their code (PASS-reID ``PASS/vision_transformer.py`` + ``main_pass.py``; TransReID-SSL
``dino/ours_vit.py`` + ``main_dino.py``; DINO's ``MultiCropWrapper``, ``DINOHead`` and DDP's ``module.``), saved
as they save them (``torch.save`` of ``{"student", "teacher", "optimizer", "epoch", "args", "dino_loss",
"fp16_scaler"}``, or the plain backbone dict of ``convert_model_dino.py``). The backbones are 2 blocks deep here
(the published ones 12: only the count of ``blocks.N`` keys differs); the DINO heads are narrow (65536 outputs
in the real files): they are dropped anyway. The reference forward is written from the papers' description and
the official fine-tuning models with plain tensor operations, independent of timm and of hardreid's modules.
"""

from __future__ import annotations

import argparse
import fractions
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardreid.errors import UserError
from hardreid.models import BACKBONES, build_model
from hardreid.models.vit_person import person_vit_backbone
from hardreid.serialization import load_pth

from conftest import tiny_config

timm = pytest.importorskip("timm")

DIM, HEADS, DEPTH = 384, 6, 2


@pytest.fixture(autouse=True)
def two_blocks(monkeypatch):
    """The person ViTs with 2 blocks instead of 12 (everything else as published) for the whole test."""
    for name in ("vit_small_pass", "vit_small_pass_mean", "vit_small_ics"):
        monkeypatch.setitem(BACKBONES, name, lambda s, size, name=name: person_vit_backbone(name, size, depth=DEPTH))


# -- the published layouts ---------------------------------------------------------------------------------------
def _blocks(gen: torch.Generator, depth: int = DEPTH, dim: int = DIM) -> dict[str, torch.Tensor]:
    shapes = {"norm1.weight": (dim,), "norm1.bias": (dim,), "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
              "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
              "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,), "mlp.fc2.weight": (dim, 4 * dim),
              "mlp.fc2.bias": (dim,)}
    out = {}
    for i in range(depth):
        for key, shape in shapes.items():
            value = 0.05 * torch.randn(shape, generator=gen)
            out[f"blocks.{i}.{key}"] = value + 1.0 if key.startswith("norm") and key.endswith("weight") else value
    out["norm.weight"] = 1.0 + 0.1 * torch.randn(dim, generator=gen)
    out["norm.bias"] = 0.1 * torch.randn(dim, generator=gen)
    return out


def pass_backbone(seed: int, grid: tuple[int, int] = (16, 8)) -> dict[str, torch.Tensor]:
    """PASS/vision_transformer.py VisionTransformer (vit_small, img 256x128, patch 16): part tokens, patch-only pos."""
    gen = torch.Generator().manual_seed(seed)
    out = {name: 0.1 * torch.randn(1, 1, DIM, generator=gen)
           for name in ("cls_token", "part_token1", "part_token2", "part_token3", "cls_pos", "part1_pos", "part2_pos",
                        "part3_pos")}
    out["pos_embed"] = 0.1 * torch.randn(1, grid[0] * grid[1], DIM, generator=gen)
    out["patch_embed.proj.weight"] = 0.02 * torch.randn(DIM, 3, 16, 16, generator=gen)
    out["patch_embed.proj.bias"] = 0.02 * torch.randn(DIM, generator=gen)
    return {**out, **_blocks(gen)}


def ics_backbone(seed: int, grid: tuple[int, int] = (16, 8)) -> dict[str, torch.Tensor]:
    """TransReID-SSL dino/ours_vit.py Ours_ViT (ours_vit_small): PatchEmbed_VOLO conv stem with IBN, CLS + pos."""
    gen = torch.Generator().manual_seed(seed)
    out = {"cls_token": 0.1 * torch.randn(1, 1, DIM, generator=gen),
           "pos_embed": 0.1 * torch.randn(1, 1 + grid[0] * grid[1], DIM, generator=gen),
           "patch_embed.conv.0.weight": 0.1 * torch.randn(64, 3, 7, 7, generator=gen)}

    def batchnorm(prefix: str, n: int) -> None:
        out[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(n, generator=gen)
        out[f"{prefix}.bias"] = 0.1 * torch.randn(n, generator=gen)
        out[f"{prefix}.running_mean"] = 0.1 * torch.randn(n, generator=gen)
        out[f"{prefix}.running_var"] = 1 + torch.rand(n, generator=gen)
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(1000)

    for i in (1, 4):
        out[f"patch_embed.conv.{i}.IN.weight"] = 1 + 0.1 * torch.randn(32, generator=gen)
        out[f"patch_embed.conv.{i}.IN.bias"] = 0.1 * torch.randn(32, generator=gen)
        batchnorm(f"patch_embed.conv.{i}.BN", 32)
        out[f"patch_embed.conv.{i + 2}.weight"] = 0.05 * torch.randn(64, 64, 3, 3, generator=gen)
    batchnorm("patch_embed.conv.7", 64)
    out["patch_embed.proj.weight"] = 0.02 * torch.randn(DIM, 64, 8, 8, generator=gen)
    out["patch_embed.proj.bias"] = 0.02 * torch.randn(DIM, generator=gen)
    return {**out, **_blocks(gen)}


def plain_backbone(seed: int) -> dict[str, torch.Tensor]:
    """TransReID-SSL dino/vision_transformer.py vit_small at 256x128 (ViT-S/16 without ICS): timm's names."""
    gen = torch.Generator().manual_seed(seed)
    out = {"cls_token": 0.1 * torch.randn(1, 1, DIM, generator=gen),
           "pos_embed": 0.1 * torch.randn(1, 129, DIM, generator=gen),
           "patch_embed.proj.weight": 0.02 * torch.randn(DIM, 3, 16, 16, generator=gen),
           "patch_embed.proj.bias": torch.zeros(DIM)}
    return {**out, **_blocks(gen, depth=12)}


def pass_head(gen: torch.Generator, hidden: int = 32, bottleneck: int = 16, out_dim: int = 64) -> dict[str, torch.Tensor]:
    """PASS's DINOHead: one 3-layer MLP and one weight-normed last layer per token (cls, pt1-3)."""
    out = {}
    for token in ("cls", "pt1", "pt2", "pt3"):
        for i, (o, n) in zip((0, 2, 4), ((hidden, DIM), (hidden, hidden), (bottleneck, hidden))):
            out[f"mlp_{token}.{i}.weight"] = torch.randn(o, n, generator=gen)
            out[f"mlp_{token}.{i}.bias"] = torch.randn(o, generator=gen)
        out[f"last_layer_{token}.weight_g"] = torch.ones(out_dim, 1)
        out[f"last_layer_{token}.weight_v"] = torch.randn(out_dim, bottleneck, generator=gen)
    return out


def dino_head(gen: torch.Generator, hidden: int = 32, bottleneck: int = 16, out_dim: int = 64) -> dict[str, torch.Tensor]:
    """DINO's DINOHead (TransReID-SSL): mlp.0/2/4 and the weight-normed last_layer."""
    out = {}
    for i, (o, n) in zip((0, 2, 4), ((hidden, DIM), (hidden, hidden), (bottleneck, hidden))):
        out[f"mlp.{i}.weight"] = torch.randn(o, n, generator=gen)
        out[f"mlp.{i}.bias"] = torch.randn(o, generator=gen)
    out["last_layer.weight_g"] = torch.ones(out_dim, 1)
    out["last_layer.weight_v"] = torch.randn(out_dim, bottleneck, generator=gen)
    return out


def dino_checkpoint(teacher: dict[str, torch.Tensor], student: dict[str, torch.Tensor], head, teacher_ddp: bool,
                    arch: str) -> dict:
    """main_pass.py / main_dino.py's save_dict. The student is always DDP-wrapped; the teacher only when the backbone
    has BatchNorm (utils.has_batchnorms: the ICS stem), else it is the bare MultiCropWrapper."""
    gen = torch.Generator().manual_seed(99)
    t_head, s_head = head(gen), head(gen)
    prefix = "module." if teacher_ddp else ""
    wrapped_teacher = {f"{prefix}backbone.{k}": v for k, v in teacher.items()} | {f"{prefix}head.{k}": v for k, v in t_head.items()}
    wrapped_student = {f"module.backbone.{k}": v for k, v in student.items()} | {f"module.head.{k}": v for k, v in s_head.items()}
    params = [v for k, v in wrapped_student.items() if v.is_floating_point() and "running" not in k]
    optimizer = {"state": {i: {"step": torch.tensor(5.0), "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
                           for i, p in enumerate(params[:3])},
                 "param_groups": [{"lr": 0.0, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.04, "amsgrad": False,
                                   "params": list(range(len(params)))}]}
    args = argparse.Namespace(arch=arch, patch_size=16, out_dim=65536, norm_last_layer=True, use_fp16=True, height=256,
                              width=128, crop_height=128, crop_width=64, local_crops_number=9, local_crops_scale=(0.1, 0.8),
                              lr=0.0005, epochs=100, data_path="/data/LUP", output_dir="./log", dist_url="env://", gpu=0)
    return {"student": wrapped_student, "teacher": wrapped_teacher, "optimizer": optimizer, "epoch": 100, "args": args,
            "dino_loss": {"center": torch.zeros(1, 64)},
            "fp16_scaler": {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                            "_growth_tracker": 10}}


# -- the reference forward, from the papers and the official fine-tuning models ----------------------------------
def _block(x: torch.Tensor, sd: dict[str, torch.Tensor], i: int) -> torch.Tensor:
    p = lambda k: sd[f"blocks.{i}.{k}"]  # noqa: E731
    b, n, c = x.shape
    h = F.layer_norm(x, (c,), p("norm1.weight"), p("norm1.bias"), eps=1e-6)
    qkv = (h @ p("attn.qkv.weight").t() + p("attn.qkv.bias")).reshape(b, n, 3, HEADS, c // HEADS).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * (c // HEADS) ** -0.5).softmax(dim=-1)
    h = (attn @ v).transpose(1, 2).reshape(b, n, c)
    x = x + h @ p("attn.proj.weight").t() + p("attn.proj.bias")
    h = F.layer_norm(x, (c,), p("norm2.weight"), p("norm2.bias"), eps=1e-6)
    h = F.gelu(h @ p("mlp.fc1.weight").t() + p("mlp.fc1.bias"))
    return x + h @ p("mlp.fc2.weight").t() + p("mlp.fc2.bias")


def _encoder(tokens: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    for i in range(DEPTH):
        tokens = _block(tokens, sd, i)
    return F.layer_norm(tokens, (DIM,), sd["norm.weight"], sd["norm.bias"], eps=1e-6)


def _neck(feature: torch.Tensor, neck: torch.nn.BatchNorm1d) -> torch.Tensor:
    """The single BatchNorm neck (eval: running statistics), then L2 normalisation."""
    out = F.batch_norm(feature, neck.running_mean, neck.running_var, neck.weight, neck.bias, False, 0.0, neck.eps)
    return F.normalize(out, dim=1)


def reference_pass(sd: dict[str, torch.Tensor], x: torch.Tensor, fusion: str, neck) -> torch.Tensor:
    """PASS: [CLS, PART1-3, patches] + [cls_pos, part1-3_pos, pos_embed]; 12 blocks; LayerNorm; the
    feature of PASS_cluster_contrast_reid (single neck): cat(cls, mean parts) or (cls + mean parts) / 2."""
    b = x.shape[0]
    patches = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=16).flatten(2).transpose(1, 2)
    prefix = [sd[k].expand(b, -1, -1) for k in ("cls_token", "part_token1", "part_token2", "part_token3")]
    pos = torch.cat([sd["cls_pos"], sd["part1_pos"], sd["part2_pos"], sd["part3_pos"], sd["pos_embed"]], dim=1)
    t = _encoder(torch.cat(prefix + [patches], dim=1) + pos, sd)
    parts = t[:, 1] / 3 + t[:, 2] / 3 + t[:, 3] / 3
    feature = torch.cat([t[:, 0], parts], dim=1) if fusion == "cat" else (t[:, 0] + parts) / 2
    return _neck(feature, neck)


def reference_ics(sd: dict[str, torch.Tensor], x: torch.Tensor, neck) -> torch.Tensor:
    """TransReID-SSL ViT-S/16+ICS: conv 7x7/2 -> IBN -> ReLU -> conv 3x3 -> IBN -> ReLU -> conv 3x3 -> BN -> ReLU ->
    conv 8x8/8; [CLS, patches] + pos_embed; blocks; LayerNorm; CLS -> BatchNorm neck -> L2 (eval mode)."""
    def bn(h, prefix):
        return F.batch_norm(h, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"], sd[f"{prefix}.weight"],
                            sd[f"{prefix}.bias"], False, 0.0, 1e-5)

    def ibn(h, i):
        first = F.instance_norm(h[:, :32], weight=sd[f"patch_embed.conv.{i}.IN.weight"],
                                bias=sd[f"patch_embed.conv.{i}.IN.bias"], eps=1e-5)
        return torch.cat([first, bn(h[:, 32:], f"patch_embed.conv.{i}.BN")], dim=1)

    h = F.relu(ibn(F.conv2d(x, sd["patch_embed.conv.0.weight"], stride=2, padding=3), 1))
    h = F.relu(ibn(F.conv2d(h, sd["patch_embed.conv.3.weight"], padding=1), 4))
    h = F.relu(bn(F.conv2d(h, sd["patch_embed.conv.6.weight"], padding=1), "patch_embed.conv.7"))
    patches = F.conv2d(h, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=8).flatten(2).transpose(1, 2)
    t = _encoder(torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), patches], dim=1) + sd["pos_embed"], sd)
    return _neck(t[:, 0], neck)


def _random_neck(model) -> None:
    with torch.no_grad():
        model.neck.running_mean.normal_(0, 0.1)
        model.neck.running_var.uniform_(0.5, 2.0)
        model.neck.weight.uniform_(0.5, 1.5)


def _assert_loaded(model, source: dict[str, torch.Tensor]) -> None:
    own = model.backbone.state_dict()
    assert set(own) == set(source)
    for key, value in own.items():
        assert torch.equal(value, source[key]), key


# -- loading as published, and the official forward -------------------------------------------------------------
@pytest.mark.parametrize("name, fusion", [("vit_small_pass", "cat"), ("vit_small_pass_mean", "mean")])
def test_pass_dino_checkpoint_loads_the_teacher_and_matches_the_reference(name, fusion, tmp_path, caplog):
    teacher, student = pass_backbone(1), pass_backbone(2)
    torch.save(dino_checkpoint(teacher, student, pass_head, teacher_ddp=False, arch="vit_small"), tmp_path / "checkpoint.pth")
    with caplog.at_level(logging.INFO, logger="hardreid"):
        model = build_model(name, weights=tmp_path / "checkpoint.pth", img_size=(256, 128)).eval()
    _assert_loaded(model, teacher)
    assert model.feat_dim == (768 if fusion == "cat" else 384)
    lines = [r.getMessage() for r in caplog.records if "checkpoint.pth" in r.getMessage()]
    assert len(lines) == 1, lines
    line = lines[0]  # every key accounted for: loaded, or named as dropped
    assert f"{len(teacher)} tensors of the DINO teacher's backbone loaded into {name}" in line
    for dropped in ("student", "optimizer", "epoch", "args", "dino_loss", "fp16_scaler", "head.*", "DINO projection head"):
        assert dropped in line, dropped
    _random_neck(model)
    x = torch.randn(3, 3, 256, 128, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_pass(teacher, x, fusion, model.neck), atol=2e-5, rtol=1e-4)


def test_ics_dino_checkpoint_loads_the_teacher_and_matches_the_reference(tmp_path, caplog):
    teacher, student = ics_backbone(3), ics_backbone(4)
    torch.save(dino_checkpoint(teacher, student, dino_head, teacher_ddp=True, arch="ours_vit_small"), tmp_path / "ics.pth")
    with caplog.at_level(logging.INFO, logger="hardreid"):
        model = build_model("vit_small_ics", weights=tmp_path / "ics.pth", img_size=(256, 128)).eval()
    _assert_loaded(model, teacher)
    line = " ".join(r.getMessage() for r in caplog.records)
    assert "loaded into vit_small_ics" in line and "head.*" in line and "student" in line
    _random_neck(model)
    x = torch.randn(3, 3, 256, 128, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference_ics(teacher, x, model.neck), atol=2e-5, rtol=1e-4)
    assert model.backbone.patch_embed.proj.stride == (8, 8) and model.backbone.grid == (16, 8)


@pytest.mark.parametrize("name, make", [("vit_small_pass", pass_backbone), ("vit_small_ics", ics_backbone)])
def test_converted_and_wrapped_backbone_files_load(name, make, tmp_path):
    """convert_model_dino.py's plain dict, a {"state_dict"} with DataParallel's module. and TransReID's base., a
    {"model"} with backbone. (and a classifier / neck that the official loaders skip)."""
    source = make(7)
    layouts = {
        "plain.pth": source,
        "module.pth": {"state_dict": {f"module.base.{k}": v for k, v in source.items()}, "epoch": 3},
        "model.pth": {"model": {**{f"backbone.{k}": v for k, v in source.items()}, "bottleneck.weight": torch.ones(DIM),
                                "classifier.weight": torch.zeros(10, DIM)}},
    }
    for file, state in layouts.items():
        torch.save(state, tmp_path / file)
        model = build_model(name, weights=tmp_path / file, img_size=(256, 128))
        _assert_loaded(model, source)


@pytest.mark.parametrize("name, make, fusion", [("vit_small_pass", pass_backbone, "cat"),
                                                ("vit_small_pass_mean", pass_backbone, "mean"),
                                                ("vit_small_ics", ics_backbone, "cls")])
def test_a_fine_tuned_unsupervised_model_evaluates_as_its_own_code(name, make, fusion, tmp_path, caplog):
    """Their cluster_contrast_train_usl.py saves {"state_dict": DataParallel(TransReID).state_dict(), "epoch", ...}:
    the backbone under module., the single neck as module.bottleneck.*; the neck goes into ReidModel's neck, so the
    feature is their Evaluator's (eval mode: normalize(bottleneck(feature))). Their files hold best_mAP as a
    numpy.float64: the safe loader reads numpy numbers in weights files."""
    source = make(11)
    width = 768 if fusion == "cat" else DIM
    gen = torch.Generator().manual_seed(12)
    neck = {"weight": 1 + 0.1 * torch.randn(width, generator=gen), "bias": torch.zeros(width),
            "running_mean": 0.1 * torch.randn(width, generator=gen), "running_var": 1 + torch.rand(width, generator=gen),
            "num_batches_tracked": torch.tensor(10000)}
    state = {f"module.{k}": v for k, v in source.items()} | {f"module.bottleneck.{k}": v for k, v in neck.items()}
    torch.save({"state_dict": state, "epoch": 50, "best_mAP": np.float64(0.887)}, tmp_path / "model_best.pth.tar")
    with caplog.at_level(logging.INFO, logger="hardreid"):
        model = build_model(name, weights=tmp_path / "model_best.pth.tar", img_size=(256, 128)).eval()
    assert "bottleneck.* (5 tensors) loaded into the BatchNorm neck" in caplog.text
    assert "the entries epoch, best_mAP beside 'state_dict'" in caplog.text
    for key, value in neck.items():
        assert torch.equal(model.neck.state_dict()[key], value), key
    x = torch.randn(2, 3, 256, 128, generator=gen)
    with torch.no_grad():
        expected = (reference_ics(source, x, model.neck) if fusion == "cls"
                    else reference_pass(source, x, fusion, model.neck))
        torch.testing.assert_close(model(x), expected, atol=2e-5, rtol=1e-4)
    # hardreid evaluate / extract --backbone NAME --weights FILE: their normalisation (mean = std = 0.5), their neck
    from hardreid.retrieval.model import load_feature_model

    fm = load_feature_model(backbone=name, weights=tmp_path / "model_best.pth.tar")
    assert fm.cfg.data.mean == fm.cfg.data.std == [0.5, 0.5, 0.5] and torch.equal(fm.model.neck.weight, neck["weight"])
    # PASS's multi-neck variant (bottleneck + bottleneck_pt1-3) is another feature: its necks are named, not loaded
    if fusion == "mean":
        multi = state | {f"module.bottleneck_pt{i}.{k}": v for i in (1, 2, 3) for k, v in neck.items()}
        torch.save({"state_dict": multi}, tmp_path / "multi.pth")
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="hardreid"):
            fresh = build_model(name, weights=tmp_path / "multi.pth", img_size=(256, 128))
        assert "bottleneck.*, bottleneck_pt1.*, bottleneck_pt2.*, bottleneck_pt3.* (20 tensors" in caplog.text
        assert torch.equal(fresh.neck.running_var, torch.ones(DIM))


@pytest.mark.parametrize("name, make, prefix", [("vit_small_pass", pass_backbone, 0), ("vit_small_ics", ics_backbone, 1)])
def test_position_embedding_is_resampled_to_the_input_size(name, make, prefix, tmp_path, caplog):
    """A 256x128 (16x8) checkpoint at 384x128 (24x8) and 128x64 (8x4): bilinear over the patch grid as the official
    resize_pos_embed (--hw-ratio 2); prefix positions unchanged."""
    source = make(8)
    torch.save(source, tmp_path / "w.pth")
    grid = source["pos_embed"][:, prefix:].reshape(1, 16, 8, DIM).permute(0, 3, 1, 2)
    for size in ((384, 128), (128, 64)):
        with caplog.at_level(logging.INFO, logger="hardreid"):
            model = build_model(name, weights=tmp_path / "w.pth", img_size=size)
        rows, cols = size[0] // 16, size[1] // 16
        expected = F.interpolate(grid, size=(rows, cols), mode="bilinear").permute(0, 2, 3, 1).reshape(1, rows * cols, DIM)
        pos = model.backbone.pos_embed.detach()
        torch.testing.assert_close(pos[:, prefix:], expected)
        torch.testing.assert_close(pos[:, :prefix], source["pos_embed"][:, :prefix])
        assert f"pos_embed resampled from a 16x8 grid to {rows}x{cols}" in caplog.text
        with torch.no_grad():
            assert model.eval()(torch.randn(2, 3, *size)).shape == (2, model.feat_dim)
            assert model(torch.randn(2, 3, 256, 128)).shape == (2, model.feat_dim)  # other sizes: resampled on the fly


def test_truncated_shuffled_or_extended_files_are_refused(tmp_path):
    source = pass_backbone(9)
    model = build_model("vit_small_pass", img_size=(256, 128))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    keys = sorted(source)
    truncated = {k: source[k] for k in list(source)[: len(source) // 2]}  # the first half, in the published order
    shuffled = dict(zip(keys, [source[k] for k in keys[1:] + keys[:1]]))  # every tensor under its neighbour's name
    extended = {**source, "blocks.2.attn.qkv.weight": torch.zeros(3 * DIM, DIM)}  # a 3-block file into 2 blocks
    cases = {"truncated.pth": (truncated, r"does not fit backbone 'vit_small_pass': \d+ missing keys"),
             "shuffled.pth": (shuffled, r"does not fit backbone 'vit_small_pass'.*with other shapes"),
             "extended.pth": (extended, r"has 1 tensors that backbone 'vit_small_pass' does not have.*blocks\.2")}
    from hardreid.models import load_backbone_weights

    for file, (state, message) in cases.items():
        torch.save(state, tmp_path / file)
        with pytest.raises(UserError, match=message):
            load_backbone_weights(model, tmp_path / file)
    torch.save(source, tmp_path / "whole.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:100_000])  # an interrupted download
    with pytest.raises(UserError, match="cannot read weights file .*cut.pth"):
        load_backbone_weights(model, tmp_path / "cut.pth")
    for key, value in model.state_dict().items():  # a refused file changes nothing
        assert torch.equal(value, before[key]), key


def test_a_file_of_another_family_names_the_backbone_it_needs(tmp_path):
    torch.save(dino_checkpoint(ics_backbone(1), ics_backbone(2), dino_head, True, "ours_vit_small"), tmp_path / "ics.pth")
    torch.save(dino_checkpoint(pass_backbone(1), pass_backbone(2), pass_head, False, "vit_small"), tmp_path / "pass.pth")
    torch.save({"teacher": {f"backbone.{k}": v for k, v in plain_backbone(1).items()}}, tmp_path / "plain.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "layer4.0.conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pth")
    expect = {
        ("vit_small_pass", "ics.pth"): r"looks like a TransReID-SSL ICS checkpoint \(conv stem with IBN\); use model.backbone=vit_small_ics",
        ("vit_small", "ics.pth"): r"looks like a TransReID-SSL ICS checkpoint.*use model.backbone=vit_small_ics",
        ("vit_small_ics", "pass.pth"): r"looks like a PASS checkpoint \(part tokens.*use model.backbone=vit_small_pass",
        ("vit_small", "pass.pth"): r"looks like a PASS checkpoint.*use model.backbone=vit_small_pass",
        ("vit_small_ics", "plain.pth"): r"looks like a plain ViT checkpoint.*use model.backbone=vit_small\b",
        ("vit_small_pass", "resnet.pth"): r"looks like a ResNet checkpoint \(torchvision layout, basic blocks\); use model.backbone=resnet18 or resnet34",
        ("resnet50", "pass.pth"): r"looks like a PASS checkpoint.*use model.backbone=vit_small_pass",
    }
    for (name, file), message in expect.items():
        with pytest.raises(UserError, match=message):
            build_model(name, weights=tmp_path / file, img_size=(256, 128))


def test_transreid_ssl_plain_vit_s_dino_checkpoint_loads_into_vit_small(tmp_path, caplog):
    """TransReID-SSL's ViT-S/16 without ICS (vit_small_cfs_lup.pth) is timm's architecture: vit_small reads the DINO
    teacher, its 2:1 grid kept (256x128) or resampled (128x64)."""
    source = plain_backbone(4)
    torch.save({"teacher": {f"backbone.{k}": v for k, v in source.items()}
                | {f"head.{k}": v for k, v in dino_head(torch.Generator().manual_seed(0)).items()},
                "student": {}, "epoch": 100, "args": argparse.Namespace(arch="vit_small")}, tmp_path / "cfs.pth")
    with caplog.at_level(logging.INFO, logger="hardreid"):
        model = build_model("vit_small", weights=tmp_path / "cfs.pth", img_size=(256, 128))
    torch.testing.assert_close(model.backbone.vit.blocks[11].mlp.fc2.weight, source["blocks.11.mlp.fc2.weight"])
    torch.testing.assert_close(model.backbone.vit.pos_embed, source["pos_embed"])
    assert "loaded into vit_small" in caplog.text and "student" in caplog.text
    with caplog.at_level(logging.INFO, logger="hardreid"):
        small = build_model("vit_small", weights=tmp_path / "cfs.pth", img_size=(128, 64))
    grid = source["pos_embed"][:, 1:].reshape(1, 16, 8, DIM).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(8, 4), mode="bilinear").permute(0, 2, 3, 1).reshape(1, 32, DIM)
    torch.testing.assert_close(small.backbone.vit.pos_embed[:, 1:].detach(), expected)
    assert "pos_embed resampled from a 16x8 grid to 8x4" in caplog.text


def test_safe_loader_allows_dino_args_and_nothing_else(tmp_path):
    args = argparse.Namespace(arch="vit_small", lr=0.0005)
    torch.save({"teacher": {"backbone.cls_token": torch.zeros(1)}, "args": args}, tmp_path / "dino.pth")
    from hardreid.serialization import WEIGHTS_FILE_GLOBALS

    assert load_pth(tmp_path / "dino.pth", "weights file", WEIGHTS_FILE_GLOBALS)["args"].lr == 0.0005
    # the same class is still refused where hardreid reads its own checkpoints
    with pytest.raises(UserError, match=r"refusing to load checkpoint .*argparse.Namespace"):
        load_pth(tmp_path / "dino.pth", "checkpoint")
    # any other class beside it (here inside the Namespace, as an attribute) is refused, naming it; nothing runs
    torch.save({"teacher": {}, "args": argparse.Namespace(lr=fractions.Fraction(1, 3))}, tmp_path / "other.pth")
    with pytest.raises(UserError, match=r"refusing to load weights file .*fractions.Fraction") as refused:
        build_model("vit_small_pass", weights=tmp_path / "other.pth", img_size=(256, 128))
    assert "argparse.Namespace" not in str(refused.value)


def test_no_download_for_person_vits():
    with pytest.raises(UserError, match=r"vit_small_ics has no download: pass TransReID-SSL's ViT-S/16\+ICS.*--weights"):
        build_model("vit_small_ics", pretrained=True, img_size=(256, 128))
    with pytest.raises(UserError, match="CLS token"):
        build_model("vit_small_pass", pooling="gem", img_size=(256, 128))


# -- the person ViTs in every part of hardreid --------------------------------------------------------------------
def test_hard_positive_instances_ascend_on_pixels_through_the_vit():
    """ACFL's HPI (Eq. 4) takes gradients with respect to the pixels through the ViT (and the ICS stem's BatchNorm,
    frozen_batch): L_ins rises at each step, the model is left as it was."""
    from hardreid.methods.generators.hpi import hard_positive_instances

    torch.manual_seed(0)
    for name in ("vit_small_pass", "vit_small_ics"):
        model = build_model(name, img_size=(64, 32)).train()
        images = torch.randn(4, 3, 64, 32)
        with torch.no_grad():
            anchors = model(images.flip(3))
        before = {k: v.clone() for k, v in model.state_dict().items()}
        history: list[float] = []
        hard = hard_positive_instances(model, anchors, images, F.normalize(torch.randn(3, model.feat_dim), dim=1), 3,
                                       1.0, 0.05, history=history)
        assert hard.shape == images.shape and not torch.equal(hard, images)
        assert all(b > a for a, b in zip(history, history[1:])), history
        assert all(p.grad is None for p in model.parameters())
        for key, value in model.state_dict().items():
            assert torch.equal(value, before[key]), key


def _tiny_run(name: str, sections: dict, tiny_root, tmp_path, export: bool):
    """A 1-epoch run on the tiny data set from a published-layout checkpoint, its model_info.json (info), evaluation
    of its checkpoint, and (``export``) its ONNX export with parity on real images."""
    import json

    from hardreid.cli import main
    from hardreid.data.datasets import load_dataset
    from hardreid.runs import train

    weights = tmp_path / "pretrained.pth"
    source = pass_backbone(1, grid=(4, 2)) if name.startswith("vit_small_pass") else ics_backbone(1, grid=(4, 2))
    torch.save(source, weights)
    sections = {k: dict(v) for k, v in sections.items()}
    sections.setdefault("train", {}).update(epochs=1, eval_every=1)
    cfg = tiny_config(model={"backbone": name, "weights": str(weights)}, **sections)
    result = train(cfg, load_dataset("market", tiny_root), tmp_path / "run", log_to_stderr=False)
    row = result.final
    assert math.isfinite(row["loss"]) and 0 <= row["mAP"] <= 100
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"{len(source)} tensors of the file loaded into {name}; dropped: nothing" in log  # the run says what it read
    info = json.loads((tmp_path / "run" / "model_info.json").read_text())
    assert info["backbone"] == name and info["feat_dim"] == result.model.feat_dim and info["flops"] > 0
    checkpoint = tmp_path / "run" / "checkpoints" / "last.pth"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-root", str(tiny_root), "--json",
                 str(tmp_path / "eval.json")]) == 0
    if export:
        assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--output", str(tmp_path / "m.onnx"),
                     "--images", str(tiny_root / "query"), "--json", str(tmp_path / "parity.json")]) == 0
        parity = json.loads((tmp_path / "parity.json").read_text())
        assert parity["ok"] and parity["max_abs_diff"] < 1e-4 and parity["backbone"] == name
    return row


def test_tiny_full_acfl_run_with_the_ics_vit_trains_and_evaluates(tiny_root, tmp_path):
    """Full ACFL (HPF + HPI on pixels through the conv stem and the blocks; per-chunk BatchNorm in the stem and the
    neck; bfloat16 autocast on the CPU), then evaluation of its checkpoint (ONNX export: the slow test below)."""
    row = _tiny_run("vit_small_ics", {"method": {"hard_samples": ["hpf", "hpi"]}, "memory": {"kind": "instance"},
                                      "train": {"bn_chunk": 4, "amp_cpu": True}}, tiny_root, tmp_path, export=False)
    assert row["loss_ins"] > 0 and row["hpf_pos_shift"] <= 0 <= row["hpf_neg_shift"]


def test_tiny_cluster_contrast_run_with_the_pass_vit(tiny_root, tmp_path):
    _tiny_run("vit_small_pass", {}, tiny_root, tmp_path, export=False)


@pytest.mark.slow  # about 1 minute on a busy core (ONNX export: about 12 s each)
@pytest.mark.parametrize("name, sections, export", [
    ("vit_small_pass", {"method": {"base": "spcl", "hard_samples": ["hpf", "hpi"]}}, False),
    ("vit_small_pass_mean", {"method": {"base": "ice"}}, True),
    ("vit_small_pass", {"method": {"base": "strong_baseline", "hard_samples": ["hng"]}, "hng": {"warmup_epochs": 0}}, False),
    ("vit_small_ics", {}, True),  # InstanceNorm / BatchNorm of the stem in the ONNX graph
])
def test_tiny_runs_of_the_other_bases_and_generators_and_onnx_export(name, sections, export, tiny_root, tmp_path):
    _tiny_run(name, sections, tiny_root, tmp_path, export=export)


def test_the_vit_configs_state_the_official_fine_tuning_settings():
    from hardreid.config import load_config

    acfl = load_config("acfl/t7_acfl_vit")
    assert acfl.method.hard_samples == ["hpf", "hpi"] and acfl.memory.kind == "instance"
    for cfg in (acfl, load_config("cluster_contrast/market1501_vit_pass")):
        assert cfg.model.backbone == "vit_small_pass" and cfg.model.pooling == "avg"
        assert (cfg.optim.name, cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.step_size) == ("sgd", 0.00035, 0.0005, 20)
        assert (cfg.data.batch_size, cfg.data.num_instances, cfg.data.height, cfg.data.width) == (256, 8, 256, 128)
        assert cfg.data.mean == cfg.data.std == [0.5, 0.5, 0.5] and cfg.cluster.eps == 0.6
        assert (cfg.train.epochs, cfg.train.iters, cfg.train.bn_chunk) == (50, 200, 64)
    msmt = load_config("cluster_contrast/msmt17_vit_pass")
    assert (msmt.model.backbone, msmt.cluster.eps, msmt.train.bn_chunk) == ("vit_small_pass_mean", 0.7, 128)
    ics = load_config("cluster_contrast/msmt17_vit_ics")
    assert (ics.model.backbone, ics.cluster.eps, ics.memory.momentum) == ("vit_small_ics", 0.7, 0.2)
