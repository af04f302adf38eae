"""The model that turns images into features, and its identity.

Either a checkpoint's **evaluated** model (``eval_model`` when the checkpoint
has one, e.g. ICE's or the mean teacher's EMA teacher, else the trained model:
``load_model_state(for_evaluation=True)``), or an untrained backbone with
optional ImageNet weights. The identity (backbone, input size, normalisation,
flip, and the SHA-256 of the checkpoint or weights file) is written next to
extracted features, so that a search can check that its query features come
from the same model as the gallery's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config
from ..errors import UserError
from ..models import ReidModel
from ..models.vit_person import MEAN_STD, PERSON_VITS

# Identity entries that must agree for two feature sets to be comparable.
IDENTITY_KEYS = ("backbone", "feat_dim", "sha256", "weights_used", "height", "width", "mean", "std", "flip", "camera_bn")


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class FeatureModel:
    """A model in eval mode and the settings it extracts features with.

    ``cfg.data`` gives the input size and normalisation, ``cfg.eval.flip``
    whether features are averaged with the mirrored image.
    """

    model: ReidModel
    cfg: Config
    source: str  # "checkpoint" or "backbone"
    file: str | None  # the checkpoint or weights file (absolute), None for random init
    sha256: str | None
    weights_used: str  # "eval_model" (e.g. an EMA teacher), "model", "imagenet" or "random (seed 0)"

    def identity(self) -> dict[str, Any]:
        """What a feature set records about the model that made it (JSON-friendly)."""
        d = self.cfg.data
        return {"source": self.source, "file": self.file, "sha256": self.sha256, "weights_used": self.weights_used,
                "backbone": self.model.backbone_name, "feat_dim": int(self.model.feat_dim), "height": d.height,
                "width": d.width, "mean": list(d.mean), "std": list(d.std), "flip": bool(self.cfg.eval.flip),
                "camera_bn": self.model.camera_bn_images}  # camera-based BatchNorm's test-time images (None: off)


def identity_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """``key: a vs b`` for every identity entry on which two feature sets disagree."""
    return [f"{k}: {a.get(k)} vs {b.get(k)}" for k in IDENTITY_KEYS if a.get(k) != b.get(k)]


def load_feature_model(checkpoint: str | Path | None = None, backbone: str | None = None,
                       weights: str | Path | None = None, pretrained: bool = False, height: int | None = None,
                       width: int | None = None, flip: bool | None = None,
                       compile: bool | str | None = None) -> FeatureModel:
    """The evaluated model of ``checkpoint``, or ``backbone`` (random init, ``weights`` or ``pretrained``).

    ``height`` / ``width`` / ``flip`` override the checkpoint's settings (defaults for a plain
    backbone: the config defaults, 256x128, no flip). ``compile``: None = as the checkpoint was trained
    (``train.compile``; a plain backbone eager), False = eager, True or a torch.compile mode = extraction compiled
    (``models.compiled.compile_model``, the checkpoint's ``train.compile_cache``).
    """
    from ..config import config_from_dict
    from ..models import model_from_config
    from ..models.compiled import compile_model
    from ..training.checkpoint import load_checkpoint, load_model_state

    if checkpoint:
        state = load_checkpoint(checkpoint)
        cfg = config_from_dict(state["config"])
        if backbone and backbone != cfg.model.backbone:
            raise UserError(f"checkpoint {checkpoint} holds a '{cfg.model.backbone}' model, not '{backbone}'; drop --backbone")
        if weights:
            raise UserError(f"--weights is for a plain --backbone; checkpoint {checkpoint} holds every weight: drop --weights")
        cfg.model.weights, cfg.model.pretrained = "", False
        model = model_from_config(cfg)
        load_model_state(model, state, checkpoint, for_evaluation=True)
        # a run trained with train.compile extracts compiled too, unless asked otherwise
        compile_model(model, cfg.train.compile if compile is None else compile, cfg.train.compile_cache)
        _set_input(cfg, height, width)  # after building: a ViT keeps the position grid it was trained with
        path = str(Path(checkpoint).resolve())
        source, used = "checkpoint", "eval_model" if "eval_model" in state else "model"
    else:
        if not backbone:
            raise UserError("needs --checkpoint FILE, or --backbone NAME [--weights FILE] for an untrained model")
        cfg = Config()
        _set_input(cfg, height, width)  # a ViT's position grid follows the input size
        cfg.model.backbone = backbone
        if backbone in PERSON_VITS:  # their own normalisation (the configs' data.mean / data.std)
            cfg.data.mean, cfg.data.std = (list(v) for v in MEAN_STD)
        cfg.model.weights = str(weights or "")
        cfg.model.pretrained = pretrained
        with torch.random.fork_rng():
            torch.manual_seed(0)  # random init is seeded, so that its features can be made again (e.g. for search)
            model = model_from_config(cfg)
        compile_model(model, compile or False)
        path = str(Path(weights).expanduser().resolve()) if weights else None
        source, used = "backbone", "imagenet" if (weights or pretrained) else "random (seed 0)"
    if flip is not None:
        cfg.eval.flip = flip
    return FeatureModel(model.eval(), cfg, source, path, file_sha256(path) if path else None, used)


def _set_input(cfg: Config, height: int | None, width: int | None) -> None:
    for name, value in (("height", height), ("width", width)):
        if value is not None:
            if value < 16:
                raise UserError(f"input {name} {value} is too small; use at least 16 pixels (e.g. 256x128 or 128x64)")
            setattr(cfg.data, name, value)
