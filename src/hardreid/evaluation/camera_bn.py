"""Camera-based BatchNorm, test-time step (Zhuang et al., ECCV 2020): features extracted camera by camera, each
camera's with BatchNorm statistics recalibrated from that camera's own images.

The official evaluator (automan000/Camera-based-Person-ReID, ``frameworks/evaluating/frame_evaluator.py``,
``collect_sim_bn_info``; read, not copied) resets every BatchNorm's running statistics, runs that camera's images
through the network in train mode, then extracts the camera's features in eval mode. Here the statistics are the
exact average over up to ``max_images`` images of the camera (``calibrate_batchnorm``: cumulative average, our
reading of "the camera's statistics"; the official code keeps its layers' momentum), and the model's own
statistics are restored afterwards. Images without a camera (camera id < 0) are extracted with the model's own
(global) statistics, and a log line says so once per call.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ..data.types import Sample
from .features import calibrate_batchnorm, extract_features

__all__ = ["extract_features_camera_bn"]

_LOG = logging.getLogger("hardreid")


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: b.detach().clone() for name, b in model.named_buffers()}


def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for name, b in model.named_buffers():
        b.copy_(saved[name])


@torch.no_grad()
def extract_features_camera_bn(model: nn.Module, samples: Sequence[Sample], transform, batch_size: int = 128,
                               workers: int = 2, device: torch.device | str = "cpu", flip: bool = False,
                               max_images: int = 4096, desc: str = "features") -> torch.Tensor:
    """L2-normalised features (N x D, CPU) of ``samples`` in their order, camera-based BatchNorm's test-time step.

    For each camera (``Sample.camid >= 0``): every BatchNorm's statistics are set to the average over (up to
    ``max_images``) of that camera's images, then that camera's features are extracted (``extract_features``,
    ``flip`` as there). Images with ``camid < 0`` use the model's statistics as they were. The model's buffers
    and mode are restored afterwards. A camera with a single image cannot give BatchNorm statistics: its image is
    extracted with the model's statistics too (said in the same log line).
    """
    samples = list(samples)
    saved = _buffers(model)
    was_training = model.training
    by_camera: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        by_camera.setdefault(s.camid, []).append(i)
    global_rows = [i for cam, rows in by_camera.items() if cam < 0 or len(rows) < 2 for i in rows]
    out: torch.Tensor | None = None
    try:
        for cam, rows in sorted(by_camera.items()):
            if cam < 0 or len(rows) < 2:
                continue
            part = [samples[i] for i in rows]
            calibrate_batchnorm(model, part, transform, batch_size, workers, device, max_images)
            feats = extract_features(model, part, transform, batch_size, workers, device, flip,
                                     f"{desc} (camera {cam})")
            if out is None:
                out = torch.empty((len(samples), feats.shape[1]), dtype=feats.dtype)
            out[rows] = feats
            _restore(model, saved)  # the model's own statistics again
        if global_rows:
            _LOG.info("camera-based BatchNorm: %d of %d images have no camera (or are their camera's only image): "
                      "extracted with the model's global statistics", len(global_rows), len(samples))
            feats = extract_features(model, [samples[i] for i in global_rows], transform, batch_size, workers, device,
                                     flip, f"{desc} (no camera)")
            if out is None:
                out = torch.empty((len(samples), feats.shape[1]), dtype=feats.dtype)
            out[global_rows] = feats
    finally:
        _restore(model, saved)
        model.train(was_training)
    if out is None:
        return torch.zeros(0, getattr(model, "feat_dim", 0))
    return out
