"""ViT-S/16 backbone through timm (ACFL section 4.4 "ACFL-VIT", Table 7).

The feature is the CLS token after the final LayerNorm, then the BatchNorm neck
of ``ReidModel``, as in the transformer re-ID baselines ACFL compares with
(TransReID, TransReID-SSL: CLS token -> BN neck). Inputs keep the re-ID aspect
ratio: the position embedding is built for ``img_size`` (256 x 128 -> a 16 x 8
grid of 16-pixel patches) and timm interpolates it for other input sizes
(``dynamic_img_size``). timm is an optional dependency: ``pip install hardreid[vit]``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError, one_line
from .weights import (BackboneState, load_fitting_state, patch_grid, read_backbone_state, refuse_other_family,
                      resample_grid, unwrap_backbone_state)

LOG = logging.getLogger("hardreid")

# Our name -> timm architecture name.
TIMM_NAMES = {"vit_small": "vit_small_patch16_224"}


def import_timm() -> Any:
    """timm, or a UserError naming the optional extra."""
    try:
        import timm
    except ImportError:
        raise UserError("the ViT backbones need timm, which is not installed: pip install hardreid[vit] "
                        "(or pip install timm)") from None
    return timm


class ViTBackbone(nn.Module):
    """A timm VisionTransformer without its classifier; ``forward`` returns the CLS token (B x dim)."""

    def __init__(self, name: str, img_size: tuple[int, int]) -> None:
        super().__init__()
        timm = import_timm()
        self.name, self.timm_name = name, TIMM_NAMES[name]
        self.vit = timm.create_model(self.timm_name, pretrained=False, num_classes=0, global_pool="token",
                                     img_size=tuple(img_size), dynamic_img_size=True)
        self.feat_dim = int(self.vit.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)  # B x (1 + patches) x dim, after the final LayerNorm
        return self.vit.forward_head(tokens, pre_logits=True)  # global_pool="token": the CLS token


def vit_backbone(name: str, img_size: tuple[int, int]) -> tuple[nn.Module, int]:
    backbone = ViTBackbone(name, img_size)
    return backbone, backbone.feat_dim


def _read_state(path: Path) -> BackboneState:
    if path.suffix != ".safetensors":
        return read_backbone_state(path)
    try:
        from safetensors.torch import load_file

        return unwrap_backbone_state(load_file(str(path)))
    except Exception as exc:  # noqa: BLE001 - any parsing failure is a bad file
        raise UserError(f"cannot read weights file {path}: {exc}") from None


def _person_grid(state: BackboneState, backbone: ViTBackbone) -> None:
    """A 2:1 person-crop grid (DINO on LUPerson at 256x128: TransReID-SSL's plain ViT-S) resampled here, bilinear as
    their loader; square ImageNet grids are left to timm's filter."""
    pos = state.tensors.get("pos_embed")
    own = backbone.vit.pos_embed
    if pos is None or pos.ndim != 3 or pos.shape == own.shape:
        return
    prefix = backbone.vit.num_prefix_tokens
    try:
        old = patch_grid(pos.shape[1] - prefix)
    except UserError:
        return
    if old[0] == old[1]:
        return
    new = backbone.vit.patch_embed.grid_size
    state.tensors["pos_embed"] = torch.cat([pos[:, :prefix], resample_grid(pos[:, prefix:], old, tuple(new))], dim=1)
    state.notes.append(f"pos_embed resampled from a {old[0]}x{old[1]} grid to {new[0]}x{new[1]}")


def load_vit_weights(backbone: ViTBackbone, path: str | Path, neck: nn.BatchNorm1d | None = None) -> None:
    """Load a timm-layout ViT checkpoint (.pth / .safetensors state dict, or a big_vision .npz), also as a DINO
    training checkpoint (its teacher backbone; TransReID-SSL's plain ViT-S on LUPerson). ``neck``: the re-ID
    model's BatchNorm neck, which takes a fine-tuned model's ``bottleneck.*`` when it fits.

    The position embedding is resampled to the model's grid (timm's
    ``checkpoint_filter_fn``); the classifier head is dropped. Every key of the
    backbone must be present with the right shape, else a UserError.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist; pass a timm {backbone.timm_name} checkpoint "
                        "(.pth, .safetensors or .npz), e.g. --weights vit_small_patch16_224.pth")
    hint = f"Pass a timm {backbone.timm_name} checkpoint (ViT-S/16: 12 blocks, width 384)."
    if path.suffix == ".npz":
        try:
            backbone.vit.load_pretrained(str(path))
        except Exception as exc:  # noqa: BLE001 - missing arrays / shape errors come as many types
            raise UserError(f"weights file {path} does not fit backbone '{backbone.name}' ({type(exc).__name__}: {one_line(exc)}). {hint}") from None
        return
    from timm.models.vision_transformer import checkpoint_filter_fn

    read = _read_state(path)
    refuse_other_family(read.tensors, "vit", backbone.name, path)
    _person_grid(read, backbone)
    try:
        state = checkpoint_filter_fn(read.tensors, backbone.vit)
    except Exception as exc:  # noqa: BLE001 - timm raises on layouts it cannot resample
        raise UserError(f"weights file {path} does not fit backbone '{backbone.name}' ({type(exc).__name__}: {one_line(exc)}). {hint}") from None
    load_fitting_state(backbone.vit, state, path, backbone.name, hint)
    if neck is not None:
        read.use_neck(neck)
    LOG.info(read.summary(path, backbone.name, len(backbone.vit.state_dict())))


def download_vit_weights(backbone: ViTBackbone) -> None:
    """timm's pretrained weights (Hugging Face hub); a clear error when offline."""
    timm = import_timm()
    try:
        source = timm.create_model(backbone.timm_name, pretrained=True, num_classes=0)
    except Exception as exc:  # noqa: BLE001 - network errors come in many types
        raise UserError(
            f"cannot download pretrained weights for {backbone.name} (timm '{backbone.timm_name}', "
            f"{type(exc).__name__}: {exc}). This machine may be offline: download the checkpoint elsewhere "
            f"(e.g. timm.create_model('{backbone.timm_name}', pretrained=True) then torch.save(model.state_dict(), "
            "'vit_small.pth')) and pass it with --weights PATH (or model.weights=PATH), or train from random init "
            "with model.pretrained=false.") from None
    from timm.models.vision_transformer import checkpoint_filter_fn

    backbone.vit.load_state_dict(checkpoint_filter_fn(source.state_dict(), backbone.vit), strict=True)
