"""Camera-based BatchNorm, test-time step (Zhuang et al., ECCV 2020; ``model.camera_bn``): features extracted
camera by camera, each camera's with BatchNorm statistics recalibrated from that camera's own images.

The official evaluator (automan000/Camera-based-Person-ReID, ``frameworks/evaluating/frame_evaluator.py``,
``collect_sim_bn_info``, and ``test_model.py``; read, not copied) resets every BatchNorm's running statistics, runs
up to 50 x 64 sampled images of the camera through the network in train mode, then extracts the camera's features
in eval mode; query and gallery are recalibrated separately. Here the statistics are the exact average over up to
``model.camera_bn_images`` images of the camera (``calibrate_batchnorm``: cumulative average, our reading of "the
camera's statistics"; the official code keeps its layers' momentum and also runs the flipped images), and the
model's own statistics are restored afterwards. Images without a camera (camera id < 0), and a camera with a
single image, are extracted with the model's own (global) statistics, and a warning says so once per extraction.

``extract_model_features`` is what clustering and evaluation call: ``extract_features_sharded``, or this step when
the model was built with ``model.camera_bn`` (``ReidModel.camera_bn_images``). Several processes: rank 0
computes every camera's statistics (on the camera's images of the whole list, not of its share) and sends them to
every process, then each extracts its contiguous share camera by camera with them, so the features are those of
one process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from .. import distributed
from ..data.types import Sample
from ..models.batchnorm import buffer_snapshot
from .features import calibrate_batchnorm, extract_features, extract_features_sharded

__all__ = ["camera_statistics", "extract_features_camera_bn", "extract_model_features",
           "extract_with_camera_statistics", "without_statistics_warning"]

_LOG = logging.getLogger("hardreid")

CameraStats = dict[int, dict[str, torch.Tensor]]


def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    for name, b in model.named_buffers():
        if name in saved:
            b.copy_(saved[name].to(b))


def _by_camera(samples: Sequence[Sample]) -> dict[int, list[int]]:
    rows: dict[int, list[int]] = {}
    for i, s in enumerate(samples):
        rows.setdefault(s.camid, []).append(i)
    return rows


@torch.no_grad()
def camera_statistics(model: nn.Module, samples: Sequence[Sample], transform, batch_size: int = 128,
                      workers: int = 2, device: torch.device | str = "cpu", max_images: int = 3200) -> CameraStats:
    """Every camera's BatchNorm statistics (camera id >= 0 with at least 2 images): {camera: {buffer: tensor, on
    the CPU}}, each the average over up to ``max_images`` of that camera's images (evenly spaced in list order).
    The model's buffers and mode are restored."""
    saved = buffer_snapshot(model)
    was_training = model.training
    out: CameraStats = {}
    try:
        for cam, rows in sorted(_by_camera(samples).items()):
            if cam < 0 or len(rows) < 2:
                continue
            calibrate_batchnorm(model, [samples[i] for i in rows], transform, batch_size, workers, device, max_images)
            out[cam] = {k: v.detach().cpu().clone() for k, v in model.named_buffers()}
            _restore(model, saved)
    finally:
        _restore(model, saved)
        model.train(was_training)
    return out


def without_statistics_warning(count: int, total: int) -> None:
    """The one line that says how many images take the model's global statistics (a warning: the run asked for
    camera-based BatchNorm, and the command line shows warnings)."""
    _LOG.warning("camera-based BatchNorm: %d of %d images have no camera (or are alone in theirs): extracted with "
                 "the model's global statistics", count, total)


def _jobs(samples: Sequence[Sample], statistics: CameraStats,
          quiet: bool = False) -> list[tuple[int | None, list[int]]]:
    """(camera, its rows) for every camera of ``statistics`` in increasing order, then (None, every other row),
    with a warning saying how many rows take the model's own statistics (unless ``quiet``)."""
    groups = _by_camera(samples)
    jobs: list[tuple[int | None, list[int]]] = [(c, rows) for c, rows in sorted(groups.items()) if c in statistics]
    rest = [i for cam, rows in groups.items() if cam not in statistics for i in rows]
    if rest:
        if not quiet:
            without_statistics_warning(len(rest), len(samples))
        jobs.append((None, sorted(rest)))
    return jobs


@torch.no_grad()
def _run_jobs(model: nn.Module, samples: Sequence[Sample], statistics: CameraStats,
              jobs: list[tuple[int | None, list[int]]], transform, batch_size: int, workers: int,
              device: torch.device | str, flip: bool, desc: str) -> list[tuple[list[int], torch.Tensor]]:
    """(rows, their features) of each job: a camera's rows with its statistics in the model's buffers (restored
    afterwards), the rest with the model's own."""
    saved = buffer_snapshot(model)
    out = []
    try:
        for cam, rows in jobs:
            if cam is not None:
                _restore(model, statistics[cam])
            feats = extract_features(model, [samples[i] for i in rows], transform, batch_size, workers, device, flip,
                                     f"{desc} (camera {cam})" if cam is not None else f"{desc} (no camera)")
            _restore(model, saved)  # the model's own statistics again
            out.append((rows, feats))
    finally:
        _restore(model, saved)
    return out


def _assemble(count: int, rows: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
    out = torch.empty((count, feats.shape[1]), dtype=feats.dtype)
    out[rows] = feats
    return out


@torch.no_grad()
def extract_with_camera_statistics(model: nn.Module, samples: Sequence[Sample], statistics: CameraStats, transform,
                                   batch_size: int = 128, workers: int = 2, device: torch.device | str = "cpu",
                                   flip: bool = False, desc: str = "features", quiet: bool = False) -> torch.Tensor:
    """L2-normalised features (N x D, CPU) of ``samples`` in their order: each camera of ``statistics`` with its
    statistics in the model's buffers, the other images (no camera, or one without statistics) with the model's
    own, said in one warning (``quiet``: the caller says it). The model's buffers are restored."""
    samples = list(samples)
    done = _run_jobs(model, samples, statistics, _jobs(samples, statistics, quiet), transform, batch_size, workers,
                     device, flip, desc)
    if not done:
        return torch.zeros(0, getattr(model, "feat_dim", 0))
    return _assemble(len(samples), torch.tensor([i for rows, _ in done for i in rows], dtype=torch.long),
                     torch.cat([f for _, f in done]))


@torch.no_grad()
def extract_features_camera_bn(model: nn.Module, samples: Sequence[Sample], transform, batch_size: int = 128,
                               workers: int = 2, device: torch.device | str = "cpu", flip: bool = False,
                               max_images: int = 3200, desc: str = "features") -> torch.Tensor:
    """L2-normalised features (N x D, CPU) of ``samples`` in their order, camera-based BatchNorm's test-time step:
    ``camera_statistics`` of ``samples`` (up to ``max_images`` per camera), then
    ``extract_with_camera_statistics``. Images with ``camid < 0``, and a camera's only image, use the model's
    statistics. The model's buffers and mode are restored afterwards."""
    samples = list(samples)
    stats = camera_statistics(model, samples, transform, batch_size, workers, device, max_images)
    return extract_with_camera_statistics(model, samples, stats, transform, batch_size, workers, device, flip, desc)


def extract_model_features(model: nn.Module, samples: Sequence[Sample], transform, batch_size: int = 128,
                           workers: int = 2, device: torch.device | str = "cpu", flip: bool = False,
                           desc: str = "features") -> torch.Tensor:
    """``extract_features_sharded`` (every process gets every row), with camera-based BatchNorm's test-time step
    when the model asks for it (``model.camera_bn_images``, set from ``model.camera_bn``).

    Several processes: rank 0 computes each camera's statistics from the whole list and sends them; the
    extraction batches one process would make (each camera's rows cut into batches, camera after camera) are
    shared out contiguously, so every feature is the one a single process computes, in the same batch."""
    max_images = getattr(model, "camera_bn_images", None)
    if max_images is None:
        return extract_features_sharded(model, samples, transform, batch_size, workers, device, flip, desc)
    samples = list(samples)
    stats = distributed.main_then_broadcast(
        lambda: camera_statistics(model, samples, transform, batch_size, workers, device, max_images))
    batches = [(cam, rows[i:i + batch_size]) for cam, rows in _jobs(samples, stats)
               for i in range(0, len(rows), batch_size)]
    start, stop = distributed.shard_bounds(len(batches))
    mine: list[tuple[int | None, list[int]]] = []
    for cam, rows in batches[start:stop]:  # this process's batches, a camera's consecutive ones as one job
        if mine and mine[-1][0] == cam:
            mine[-1][1].extend(rows)
        else:
            mine.append((cam, list(rows)))
    done = _run_jobs(model, samples, stats, mine, transform, batch_size, workers, device, flip, desc)
    rows = torch.tensor([i for part, _ in done for i in part], dtype=torch.long)
    feats = torch.cat([f for _, f in done]) if done else torch.zeros(0, int(getattr(model, "feat_dim", 0)))
    feats, rows = distributed.all_gather_cat(feats), distributed.all_gather_cat(rows)
    if not len(samples):
        return feats
    return _assemble(len(samples), rows, feats)
