"""Re-ID feature extractors: a backbone, global pooling and a BatchNorm neck."""

from .reid import BACKBONES, ReidModel, build_model, load_backbone_weights

build = build_model

__all__ = ["build", "BACKBONES", "ReidModel", "build_model", "load_backbone_weights"]
