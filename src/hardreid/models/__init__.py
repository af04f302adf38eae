"""Re-ID feature extractors: a backbone, global pooling and a BatchNorm neck; ``model_from_config`` builds the
configured one."""

from ..config import register_choices
from .factory import model_from_config
from .reid import BACKBONES, ReidModel, build_model, load_backbone_weights

build = build_model
register_choices("model.backbone", lambda: list(BACKBONES))  # config validation asks the registry of backbones

__all__ = ["build", "BACKBONES", "ReidModel", "build_model", "load_backbone_weights", "model_from_config"]
