"""Parameters and FLOPs of a model at its input size (``hardreid info``; ``model_info.json`` in each run).

FLOPs are counted by PyTorch's own ``torch.utils.flop_counter.FlopCounterMode``
on one forward pass of one image in eval mode: convolutions and matrix
products, 2 FLOPs per multiply-add (papers often quote multiply-adds, "MACs",
as FLOPs: half of these). Normalisation, activations and pooling are not
counted.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..config import Config
from ..errors import UserError
from ..models import BACKBONES, ReidModel, model_from_config
from ..models.compiled import eager
from ..files import atomic_write_json


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@torch.no_grad()
def count_flops(model: torch.nn.Module, height: int, width: int) -> int:
    """FLOPs of one forward pass of one image (eval mode; the mode is restored; eager: a compiled model's kernels
    would hide their operations from the counter)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    try:
        with counter, eager(model):
            model(torch.zeros(1, 3, height, width, device=device))
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def model_info(model: ReidModel, height: int, width: int) -> dict[str, Any]:
    """Backbone, input size, feature dim, parameters and FLOPs per image."""
    total, trainable = count_parameters(model)
    flops = count_flops(model, height, width)
    return {"backbone": getattr(model, "backbone_name", type(model).__name__), "input": [height, width],
            "feat_dim": int(getattr(model, "feat_dim", 0)), "parameters": total, "trainable_parameters": trainable,
            "flops": flops, "gflops": round(flops / 1e9, 3), "gmacs": round(flops / 2e9, 3),
            "flops_counter": "torch.utils.flop_counter.FlopCounterMode, 2 FLOPs per multiply-add, batch 1"}


def info_text(info: dict[str, Any]) -> str:
    h, w = info["input"]
    return (f"{info['backbone']:<13} {h}x{w}: {info['parameters'] / 1e6:6.2f} M parameters "
            f"({info['trainable_parameters'] / 1e6:.2f} M trainable), {info['gflops']:7.3f} GFLOPs per image "
            f"({info['gmacs']:.3f} G multiply-adds), feature dim {info['feat_dim']}")


def write_model_info(model: ReidModel, cfg: Config, path: str | Path) -> dict[str, Any]:
    """``model_info(...)`` at the config's input size, written as JSON to ``path``."""
    info = model_info(model, cfg.data.height, cfg.data.width)
    atomic_write_json(path, info)
    return info


def backbone_table(cfg: Config) -> list[dict[str, Any]]:
    """``model_info`` of every backbone with the config's other model settings and input size.

    A backbone that cannot be built here (the ViTs without timm) gets ``{"backbone", "error"}``.
    """
    rows = []
    for name in BACKBONES:
        trial = copy.deepcopy(cfg)
        trial.model.backbone, trial.model.weights, trial.model.pretrained = name, "", False
        if name.startswith("vit"):
            trial.model.pooling = "avg"  # a ViT's feature is a token (CLS, and PASS's part tokens)
        try:
            model = model_from_config(trial)
        except UserError as exc:
            rows.append({"backbone": name, "error": str(exc)})
            continue
        rows.append(model_info(model, cfg.data.height, cfg.data.width))
    return rows
