"""Loading weight files into a module: every key present with its shape, or one clear error.

Backbone weights come in the layouts their authors publish (``read_backbone_state``): a plain state dict, one
wrapped in ``{"state_dict": ...}`` / ``{"model": ...}`` (with ``module.`` / ``base.`` / ``backbone.`` prefixes), or
a DINO-style training checkpoint ``{"student", "teacher", "optimizer", "epoch", "args", ...}`` whose teacher
backbone is the pre-trained network (PASS's and TransReID-SSL's loaders read the teacher, as DINO's
``convert_model_dino.py`` does). What is not loaded is named, never silently skipped: ``BackboneState.dropped``.
``weights_family`` tells which architecture a state dict belongs to, so that a file given to the wrong backbone
is refused with the backbone it needs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError
from ..serialization import WEIGHTS_FILE_GLOBALS, load_pth


def load_fitting_state(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, name: str, hint: str,
                       refuse_extra: bool = False) -> None:
    """Load ``state`` into ``module`` only if every key is there with its shape (and, with ``refuse_extra``, no key
    is left over: a deeper network of the same family would otherwise load its first layers silently); else a
    UserError naming examples."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    extra = [k for k in state if k not in own] if refuse_extra else []
    if extra and not (missing or wrong):
        raise UserError(f"weights file {path} does not fit backbone '{name}': it holds {len(extra)} backbone keys that "
                        f"'{name}' does not have (e.g. {extra[:3]}), as a deeper network would. {hint}")
    if missing or wrong:
        raise UserError(
            f"weights file {path} does not fit backbone '{name}': {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(wrong)} with other shapes (e.g. {[(k, tuple(state[k].shape), tuple(own[k].shape)) for k in wrong[:2]]}). "
            f"{hint}")
    module.load_state_dict({k: state[k] for k in own}, strict=True)


# Keys the official fine-tuning loaders skip (TransReID-SSL / PASS ``load_param``): classifier heads, DeiT's
# distillation token, and the re-ID necks of fine-tuned models. Named in the log line when a file has them; the
# single neck of a fine-tuned model (``bottleneck.*``) is kept aside (``BackboneState.neck``): ``ReidModel``'s neck
# may take it, so that a published fine-tuned model evaluates as its own code does.
HEAD_PREFIXES = ("head.", "head_dist.", "fc.", "classifier.", "bottleneck", "pre_logits.", "dist_token")
NECK_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


@dataclass
class BackboneState:
    """The backbone tensors of a weights file, where they came from, and what was left out (one phrase each)."""

    tensors: dict[str, torch.Tensor]
    source: str
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # e.g. a resampled position embedding
    neck: dict[str, torch.Tensor] = field(default_factory=dict)  # a fine-tuned model's single BatchNorm neck

    def use_neck(self, neck: nn.BatchNorm1d) -> None:
        """Load ``neck`` (the re-ID model's BatchNorm neck) from the file's ``bottleneck.*`` when it fits, else name
        it as dropped."""
        if not self.neck:
            return
        own = neck.state_dict()
        if set(self.neck) == set(own) and all(self.neck[k].shape == own[k].shape for k in own):
            neck.load_state_dict(self.neck)
            self.notes.append(f"bottleneck.* ({_count(list(self.neck))}) loaded into the BatchNorm neck")
        else:
            self.dropped.append(f"bottleneck.* ({_count(list(self.neck))}, a neck of another width than this "
                                f"backbone's {own['weight'].shape[0]}-d feature)")
        self.neck = {}

    def summary(self, path: Path, name: str, used: int) -> str:
        dropped = "; ".join(self.dropped) if self.dropped else "nothing"
        notes = "".join(f"; {note}" for note in self.notes)
        return f"weights file {path}: {used} tensors of {self.source} loaded into {name}{notes}; dropped: {dropped}"


def _count(keys: list[str]) -> str:
    return f"{len(keys)} tensor{'s' if len(keys) != 1 else ''}"


def _strip(key: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in prefixes:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def unwrap_backbone_state(obj: Any) -> BackboneState:
    """The backbone tensors of a loaded weights file in any of the published layouts (module doc)."""
    if not isinstance(obj, dict):
        raise UserError(f"expected a state dict (a dict of tensors), found a {type(obj).__name__}")
    dropped: list[str] = []
    source = "the file"
    for key in ("model", "state_dict"):  # the order of TransReID-SSL's / PASS's load_param
        if isinstance(obj.get(key), dict):
            others = [k for k in obj if k != key]
            if others:
                dropped.append(f"the entries {', '.join(map(str, others))} beside '{key}'")
            obj, source = obj[key], f"'{key}'"
    dino = isinstance(obj.get("teacher"), dict)
    if dino:
        others = [str(k) for k in obj if k != "teacher"]
        if others:
            dropped.append(f"{', '.join(others)} (DINO training state; the teacher is the pre-trained network)")
        obj, source = obj["teacher"], "the DINO teacher's backbone"
    plain = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    other = [str(k) for k in obj if not isinstance(obj[k], torch.Tensor)]
    if other:
        dropped.append(f"{len(other)} non-tensor entries ({', '.join(other[:4])}{', ...' if len(other) > 4 else ''})")
    plain = {_strip(k, ("module.",)): v for k, v in plain.items()}
    if dino or any(k.startswith("backbone.") for k in plain):
        heads = [k for k in plain if not k.startswith("backbone.")]
        if heads:
            what = "DINO projection head" if all(k.startswith("head.") for k in heads) else "not under backbone."
            dropped.append(f"{', '.join(sorted({k.split('.')[0] + '.*' for k in heads}))} ({_count(heads)}, {what})")
        plain = {k[len("backbone."):]: v for k, v in plain.items() if k.startswith("backbone.")}
    plain = {_strip(k, ("base.", "vit.")): v for k, v in plain.items()}
    neck = {k[len("bottleneck."):]: v for k, v in plain.items()
            if k.startswith("bottleneck.") and k[len("bottleneck."):] in NECK_KEYS}
    if any(k.startswith("bottleneck_") for k in plain):
        neck = {}  # PASS's multi-neck model: four necks whose outputs are fused after normalisation, not ours
    heads = [k for k in plain if k.startswith(HEAD_PREFIXES)
             and not (k.startswith("bottleneck.") and k[len("bottleneck."):] in neck)]
    if heads:
        dropped.append(f"{', '.join(sorted({k.split('.')[0] + '.*' for k in heads}))} ({_count(heads)}, classifier / "
                       "neck of a fine-tuned model, skipped as the official loaders do)")
        plain = {k: v for k, v in plain.items() if k not in heads}
    plain = {k: v for k, v in plain.items() if not k.startswith("bottleneck.")}
    return BackboneState(plain, source, dropped, neck=neck)


def read_backbone_state(path: Path) -> BackboneState:
    """``unwrap_backbone_state`` of a ``.pth`` weights file (read safely; DINO's pickled ``args`` allowed)."""
    obj = load_pth(path, "weights file", allowed=WEIGHTS_FILE_GLOBALS)
    try:
        return unwrap_backbone_state(obj)
    except UserError as exc:
        raise UserError(f"weights file {path}: {exc}") from None


# Families of backbone weights: what a state dict looks like, and the backbone that reads it.
FAMILIES = {
    "pass": ("a PASS checkpoint (part tokens, patch-only position embedding)", "vit_small_pass"),
    "ics": ("a TransReID-SSL ICS checkpoint (conv stem with IBN)", "vit_small_ics"),
    "vit": ("a plain ViT checkpoint (timm, DINO, TransReID-SSL ViT-S without ICS)", "vit_small"),
    "resnet": ("a ResNet checkpoint (torchvision layout, basic blocks)", "resnet18 or resnet34"),
    "resnet50": ("a ResNet-50 checkpoint (torchvision layout)", "resnet50"),
    "mobilenet_v2": ("a MobileNetV2 checkpoint (torchvision layout)", "mobilenet_v2"),
}


def weights_family(keys: Any) -> str | None:
    """The key of ``FAMILIES`` that an unwrapped state dict's keys belong to, or None."""
    keys = set(keys)
    if {"part_token1", "cls_pos"} & keys:
        return "pass"
    if any(k.startswith("patch_embed.conv.") for k in keys):
        return "ics"
    if "cls_token" in keys or any(k.startswith("blocks.") for k in keys):
        return "vit"
    if "conv1.weight" in keys or any(k.startswith("layer4.") for k in keys):
        return "resnet50" if any(k.endswith(".conv3.weight") for k in keys) else "resnet"
    if any(k.startswith("features.18.") for k in keys):
        return "mobilenet_v2"
    return None


def refuse_other_family(keys: Any, family: str, name: str, path: Path) -> None:
    """A UserError when the keys look like another family than ``family`` (the one backbone ``name`` reads)."""
    found = weights_family(keys)
    if found is not None and found != family:
        looks, use = FAMILIES[found]
        raise UserError(f"weights file {path} looks like {looks}; use model.backbone={use} "
                        f"(backbone '{name}' reads {FAMILIES[family][0]})")


def patch_grid(tokens: int) -> tuple[int, int]:
    """The (rows, columns) of a stored grid of position embeddings: person crops 2:1 (256x128: 16x8, the
    official ``--hw-ratio 2``), else square (224x224 ImageNet: 14x14)."""
    for ratio in (2, 1):
        side = math.isqrt(tokens // ratio)
        if side > 0 and side * side * ratio == tokens:
            return side * ratio, side
    raise UserError(f"cannot tell the grid of a position embedding of {tokens} patches (neither 2:1 nor square)")


def resample_grid(grid: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Position embeddings of a (1, rows x cols, dim) patch grid at another grid, bilinear (as the official
    ``resize_pos_embed`` of TransReID-SSL and PASS; align_corners False)."""
    if old == new:
        return grid
    dim = grid.shape[-1]
    image = grid.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    image = F.interpolate(image.float(), size=new, mode="bilinear", align_corners=False).to(grid.dtype)
    return image.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim)
