"""ViT-S/16 of the person-pretrained checkpoints (LUPerson): PASS and TransReID-SSL's ICS, on timm's blocks.

ACFL-VIT (ACFL Table 7) is "ViT-S as in PASS": a ViT-S pre-trained without labels on LUPerson person crops.
The two published families need their own architectures; the parameter names are those of their files, so a
checkpoint loads key for key:

``vit_small_pass`` / ``vit_small_pass_mean``  PASS (Zhu et al., ECCV 2022; CASIA-IVA-Lab/PASS-reID). Three part
    tokens ``part_token1..3`` after the CLS token, each token with its own position embedding (``cls_pos``,
    ``part1_pos..3``), and ``pos_embed`` covering the patches only. The re-ID feature is that of PASS's
    unsupervised fine-tuning (``PASS_cluster_contrast_reid/clustercontrast/models/vision_transformer.py``,
    single neck): the CLS token fused with the mean of the three part tokens, ``cat`` -> 768-d (their Market-1501
    script ``market_usl_cat_singleneck.sh``: ``vit_small_pass``) or ``mean`` -> (cls + parts) / 2, 384-d (their
    MSMT17 script ``msmt_usl_mean_singleneck.sh``: ``vit_small_pass_mean``), then one BatchNorm neck
    (``ReidModel.neck``) and L2 normalisation.
``vit_small_ics``  TransReID-SSL (Luo et al. 2021; damo-cv/TransReID-SSL) "ViT-S/16+ICS": the patch embedding is a
    convolution stem ``patch_embed.conv`` (7x7 stride 2, IBN; 3x3, IBN; 3x3, BatchNorm; ReLU after each; IBN =
    InstanceNorm on the first half of the channels, BatchNorm on the rest) then ``patch_embed.proj`` (8x8 stride
    8): one token per 16x16 pixels. Position embedding with the CLS token's in front, as timm's. Feature: the CLS
    token, BatchNorm neck, L2 normalisation (their ``cluster-contrast-reid`` ``TransReID.forward``).

Both as their fine-tuning code builds them: 12 blocks of width 384, 6 heads, MLP x4, qkv bias, LayerNorm eps 1e-6,
patches 16x16 with stride 16 (the ``STRIDE_SIZE: [16, 16]`` of TransReID-SSL's ViT-S configs; the USL scripts keep
the default 16), stochastic depth rising linearly to 0.3 over the blocks (``--drop-path-rate`` default of both
``cluster_contrast_train_usl.py``; hardreid has no config key for it). The position embedding is built for the
configured input size; a checkpoint's is resampled bilinearly from its own grid (2:1 person crops, ``--hw-ratio 2``,
or square), and an input of another size resamples it on the fly. Blocks hold no BatchNorm: ``train.bn_chunk``
acts on the neck (and on the ICS stem's BatchNorm layers).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import torch
from torch import nn

from ..errors import UserError
from .vit import import_timm
from .weights import (FAMILIES, load_fitting_state, patch_grid, read_backbone_state, refuse_other_family,
                      resample_grid)

LOG = logging.getLogger("hardreid")

# name -> (family, feature fusion); the family is the key of weights.FAMILIES
PERSON_VITS = {
    "vit_small_pass": ("pass", "cat"),
    "vit_small_pass_mean": ("pass", "mean"),
    "vit_small_ics": ("ics", "cls"),
}
SOURCES = {
    "pass": "PASS's ViT-S/16 pre-trained on LUPerson (github.com/CASIA-IVA-Lab/PASS-reID, 'Pre-trained Models': "
            "pass_vit_small_full.pth)",
    "ics": "TransReID-SSL's ViT-S/16+ICS pre-trained on LUPerson (github.com/damo-cv/TransReID-SSL, 'Pre-trained "
           "Models': vit_small_ics_cfs_lup.pth)",
}
DROP_PATH = 0.3  # --drop-path-rate default of PASS's and TransReID-SSL's cluster_contrast_train_usl.py
# The image normalisation both projects pre-train and fine-tune with (--self-norm; INPUT.PIXEL_MEAN / PIXEL_STD 0.5)
MEAN_STD = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])


class IBN(nn.Module):
    """InstanceNorm (affine) on the first half of the channels, BatchNorm on the rest (IBN-Net's IBN-a)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.half = channels // 2
        self.IN = nn.InstanceNorm2d(self.half, affine=True)  # noqa: N815 - the checkpoints' key names
        self.BN = nn.BatchNorm2d(channels - self.half)  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, rest = x[:, :self.half], x[:, self.half:]
        return torch.cat([self.IN(first.contiguous()), self.BN(rest.contiguous())], dim=1)


class ConvStem(nn.Module):
    """TransReID-SSL's ICS patch embedding: three convolutions (the first stride 2) then an 8x8 stride-8 projection."""

    def __init__(self, dim: int, hidden: int = 64, patch: int = 16) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(3, hidden, 7, stride=2, padding=3, bias=False), IBN(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, bias=False), IBN(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride=1, padding=1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.proj = nn.Conv2d(hidden, dim, patch // 2, stride=patch // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(x))


class PatchStem(nn.Module):
    """One 16x16 convolution (stride ``stride``), as ViT's and PASS's patch embedding."""

    def __init__(self, dim: int, patch: int = 16, stride: int = 16) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class PersonViT(nn.Module):
    """A ViT of one of ``PERSON_VITS``; ``forward`` returns the pre-neck feature (B x ``feat_dim``)."""

    def __init__(self, name: str, img_size: tuple[int, int], depth: int = 12, dim: int = 384, heads: int = 6,
                 patch: int = 16, stride: int = 16, drop_path: float = DROP_PATH) -> None:
        super().__init__()
        import_timm()  # a clear error without timm
        from timm.models.vision_transformer import Block

        self.name = name
        self.family, self.fusion = PERSON_VITS[name]
        self.patch, self.stride = patch, (stride if self.family == "pass" else patch)
        self.patch_embed = ConvStem(dim, patch=patch) if self.family == "ics" else PatchStem(dim, patch, stride)
        self.grid = self.grid_of(*img_size)
        patches = self.grid[0] * self.grid[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        if self.family == "pass":
            for i in (1, 2, 3):
                setattr(self, f"part_token{i}", nn.Parameter(torch.zeros(1, 1, dim)))
            self.cls_pos = nn.Parameter(torch.zeros(1, 1, dim))
            for i in (1, 2, 3):
                setattr(self, f"part{i}_pos", nn.Parameter(torch.zeros(1, 1, dim)))
            self.pos_embed = nn.Parameter(torch.zeros(1, patches, dim))
        else:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, drop_path=r, norm_layer=norm,
                                          act_layer=nn.GELU) for r in rates)
        self.norm = norm(dim)
        self.feat_dim = 2 * dim if self.fusion == "cat" else dim
        self._init_weights()

    def _init_weights(self) -> None:
        for p in self.parameters(recurse=False):  # the tokens and position embeddings
            nn.init.trunc_normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def grid_of(self, height: int, width: int) -> tuple[int, int]:
        if self.family == "ics":
            return height // self.patch, width // self.patch
        return (height - self.patch) // self.stride + 1, (width - self.patch) // self.stride + 1

    def prefix_tokens(self) -> list[torch.Tensor]:
        if self.family == "pass":
            return [self.cls_token, self.part_token1, self.part_token2, self.part_token3]
        return [self.cls_token]

    def position(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position embeddings of the prefix tokens and a ``grid`` of patches (1 x tokens x dim)."""
        if self.family == "pass":
            return torch.cat([self.cls_pos, self.part1_pos, self.part2_pos, self.part3_pos,
                              resample_grid(self.pos_embed, self.grid, grid)], dim=1)
        return torch.cat([self.pos_embed[:, :1], resample_grid(self.pos_embed[:, 1:], self.grid, grid)], dim=1)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """All tokens after the final LayerNorm: prefix tokens (CLS[, parts 1-3]) then patches."""
        patches = self.patch_embed(x)
        grid = (patches.shape[2], patches.shape[3])
        patches = patches.flatten(2).transpose(1, 2)
        prefix = [t.expand(x.shape[0], -1, -1) for t in self.prefix_tokens()]
        tokens = torch.cat([*prefix, patches], dim=1) + self.position(grid)
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.forward_tokens(x)
        if self.fusion == "cls":
            return tokens[:, 0]
        parts = (tokens[:, 1] + tokens[:, 2] + tokens[:, 3]) / 3
        if self.fusion == "cat":
            return torch.cat([tokens[:, 0], parts], dim=1)
        return (tokens[:, 0] + parts) / 2


def person_vit_backbone(name: str, img_size: tuple[int, int], **sizes: int) -> tuple[nn.Module, int]:
    backbone = PersonViT(name, tuple(img_size), **sizes)
    return backbone, backbone.feat_dim


def load_person_vit_weights(backbone: PersonViT, path: str | Path, neck: nn.BatchNorm1d | None = None) -> None:
    """Load a PASS / TransReID-SSL ICS checkpoint as published (DINO training checkpoint or converted backbone).
    ``neck``: the re-ID model's BatchNorm neck, which takes a fine-tuned model's ``bottleneck.*`` when it fits (their
    unsupervised models then give the features their evaluation gives).

    Every tensor of the backbone must be in the file with its shape (the position embedding resampled to the
    configured grid); every tensor of the file is loaded or named as dropped in one log line (the DINO head, the
    student, the optimiser); a key the architecture does not have, or a file of another family, is refused.
    """
    path = Path(path).expanduser()
    what, _ = FAMILIES[backbone.family]
    hint = f"Pass {SOURCES[backbone.family]}."
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist. {hint}")
    state = read_backbone_state(path)
    tensors = dict(state.tensors)
    refuse_other_family(tensors, backbone.family, backbone.name, path)
    own = backbone.state_dict()
    if "pos_embed" in tensors and tensors["pos_embed"].ndim == 3 and tensors["pos_embed"].shape != own["pos_embed"].shape:
        pos = tensors["pos_embed"]
        prefix = 0 if backbone.family == "pass" else 1
        old = patch_grid(pos.shape[1] - prefix)
        tensors["pos_embed"] = torch.cat([pos[:, :prefix], resample_grid(pos[:, prefix:], old, backbone.grid)], dim=1)
        state.notes.append(f"pos_embed resampled from a {old[0]}x{old[1]} grid to {backbone.grid[0]}x{backbone.grid[1]}")
    unexpected = sorted(k for k in tensors if k not in own)
    if unexpected:
        raise UserError(f"weights file {path} has {len(unexpected)} tensors that backbone '{backbone.name}' does not "
                        f"have (e.g. {unexpected[:3]}): not {what} as published, or a damaged one. {hint}")
    load_fitting_state(backbone, tensors, path, backbone.name, hint)
    if neck is not None:
        state.use_neck(neck)
    LOG.info(state.summary(path, backbone.name, len(own)))


def no_person_vit_download(backbone: PersonViT) -> None:
    raise UserError(f"{backbone.name} has no download: pass {SOURCES[backbone.family]} with --weights PATH (or "
                    "model.weights=PATH), or train from random init with model.pretrained=false")
