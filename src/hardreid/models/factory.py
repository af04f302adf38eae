"""Building the configured model: the one place that turns ``model.*`` (and the input size, ``train.bn_chunk``,
``train.channels_last``, ``model.camera_bn``'s test-time setting) into a ``ReidModel``. Training, evaluation, retrieval, export, the figures and the demo
all build their model here."""

from __future__ import annotations

from ..config import Config
from .reid import ReidModel, build_model


def model_from_config(cfg: Config, initial_weights: bool = True) -> ReidModel:
    """The configured model; ``initial_weights=False`` skips model.weights / model.pretrained (a checkpoint
    will provide every weight)."""
    m = cfg.model
    model = build_model(m.backbone, weights=(m.weights or None) if initial_weights else None,
                        pretrained=m.pretrained and initial_weights, last_stride=m.last_stride,
                        pooling=m.pooling, gem_p=m.gem_p, bn_chunk=cfg.train.bn_chunk,
                        img_size=(cfg.data.height, cfg.data.width), gem_learnable=m.gem_learnable)
    # the test-time step (evaluation/camera_bn.py); auto is decided when training starts (config/camera_keys.py):
    # a model built before that has none
    model.camera_bn_images = m.camera_bn_images if m.camera_bn is True else None
    return model.use_channels_last(cfg.train.channels_last)
