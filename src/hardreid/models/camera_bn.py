"""Camera-based BatchNorm, training path (Zhuang et al., "Rethinking the distribution gap of person
re-identification with camera-based batch normalization", ECCV 2020; ``model.camera_bn``).

During training each camera's images of a batch are normalised with that camera's batch statistics: the official
trainer (repository automan000/Camera-based-Person-ReID, ``frameworks/training/trainer.py``, read, not copied)
re-organises every batch into one sub-batch per camera and runs each as its own BatchNorm group. Here that is
``per_camera_pool_and_embed``: one ``embed_chunk`` per camera (every BatchNorm layer of the backbone and the neck
sees that camera's images only), the outputs put back in the batch's order. The affine parameters are shared.

Our readings:

- **Groups.** The groups are per camera *within* each BatchNorm group the run already has: a process's share of
  the batch (several processes, DDP) and, inside it, each ``train.bn_chunk`` chunk (which emulates one GPU's share).
  So camera BN at N emulated GPUs means what it means on N real ones. The running statistics follow the first
  chunk only, as plain ``bn_chunk`` does. The sampler draws same-camera pairs (``data/sampler.py``,
  ``camera_pairs``) so that every camera has at least 2 images in every group; a camera with a single image in a
  group is refused in one line (the official trainer silently drops such images; BatchNorm has no variance of one
  image).
- **Running statistics.** ``CameraStatistics`` keeps running statistics per training camera (updated by the
  camera's groups with each layer's momentum, saved in checkpoints under ``camera_bn``); after each step the
  model's own buffers are set to their mixture (mean and variance of the cameras' distributions weighted by each
  camera's share of the training images): the "global" statistics that images without a camera and exported
  models use. The paper's test-time step recalibrates each camera's statistics from that camera's images anyway
  (``evaluation/camera_bn.py``).
- Without ``CameraStatistics`` (the ICE teacher's train-mode forwards) each camera's group updates the model's own
  running statistics in turn.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import UserError
from .reid import running_statistics_kept

__all__ = ["CameraStatistics", "per_camera_pool_and_embed", "batchnorm_buffer_names"]

_FIELDS = ("running_mean", "running_var", "num_batches_tracked")


def _norms(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    return [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def batchnorm_buffer_names(model: nn.Module) -> list[str]:
    """State-dict names of every BatchNorm running statistic of ``model`` (mean, variance, batches tracked)."""
    return [f"{name}.{field}" if name else field for name, _ in _norms(model) for field in _FIELDS]


class _EmbedChunk(nn.Module):
    """``model.embed_chunk`` as a forward, so that ``functional_call`` can lend it other buffers."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.embed_chunk(x)


class CameraStatistics:
    """Running statistics of every BatchNorm layer of a model, one set per training camera.

    ``shares``: camera id -> its share of the training images (the weights of the mixture written into the
    model's own buffers). Each camera starts from the model's current statistics (``reset_from``).
    """

    def __init__(self, model: nn.Module, shares: dict[int, float]) -> None:
        if not shares:
            raise ValueError("camera-based BatchNorm needs at least one camera")
        total = float(sum(shares.values()))
        self.weights = {int(c): float(w) / total for c, w in sorted(shares.items())}
        self.names = batchnorm_buffer_names(model)
        self.stats: dict[int, dict[str, torch.Tensor]] = {}
        self.reset_from(model)

    @property
    def cameras(self) -> list[int]:
        return list(self.weights)

    @torch.no_grad()
    def reset_from(self, model: nn.Module, per_camera: dict[int, dict[str, torch.Tensor]] | None = None) -> None:
        """Every camera's statistics := the model's own (or ``per_camera[c]`` where given, e.g. calibrated)."""
        buffers = dict(model.named_buffers())
        per_camera = per_camera or {}
        self.stats = {c: {k: (per_camera[c][k] if c in per_camera else buffers[k]).detach().clone().to(buffers[k])
                          for k in self.names} for c in self.weights}

    def tensors(self) -> list[torch.Tensor]:
        """Every statistic in a fixed order (the same on every process: broadcasts)."""
        return [self.stats[c][k] for c in self.cameras for k in self.names]

    def forward(self, model: nn.Module, camera: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``model.embed_chunk(x)`` in train mode with camera ``camera``'s running statistics in place of the model's:
        BatchNorm normalises with the batch statistics of ``x`` and updates that camera's running statistics."""
        if camera not in self.stats:
            raise UserError(f"camera-based BatchNorm: camera {camera} is not one of the training cameras "
                            f"{self.cameras}; the batch must come from the training images")
        lent = {f"model.{k}": v for k, v in self.stats[camera].items()}
        return functional_call(_EmbedChunk(model), lent, (x,))

    @torch.no_grad()
    def write_global(self, model: nn.Module) -> None:
        """The model's own running statistics := the mixture of the cameras' (weighted by their image shares):
        mean sum_c w_c m_c, variance sum_c w_c (v_c + m_c^2) - mean^2; batches tracked: the most of any camera."""
        buffers = dict(model.named_buffers())
        for layer in {k.rsplit(".", 1)[0] if "." in k else "" for k in self.names}:
            prefix = f"{layer}." if layer else ""
            mean_key, var_key, count_key = (prefix + f for f in _FIELDS)
            mean = sum(w * self.stats[c][mean_key].double() for c, w in self.weights.items())
            second = sum(w * (self.stats[c][var_key].double() + self.stats[c][mean_key].double() ** 2)
                         for c, w in self.weights.items())
            buffers[mean_key].copy_(mean)
            buffers[var_key].copy_((second - mean ** 2).clamp(min=0))
            buffers[count_key].copy_(torch.stack([self.stats[c][count_key] for c in self.weights]).max())

    def state_dict(self) -> dict[str, Any]:
        return {"weights": dict(self.weights), "names": list(self.names),
                "statistics": {c: {k: v.detach().cpu().clone() for k, v in s.items()} for c, s in self.stats.items()}}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["statistics"]
        if sorted(saved) != self.cameras or list(state["names"]) != self.names:
            raise UserError(f"the checkpoint's camera-based BatchNorm statistics are for cameras {sorted(saved)}, the "
                            f"training images have cameras {self.cameras}: continue on the same data")
        for c in self.cameras:
            for k in self.names:
                self.stats[c][k].copy_(saved[c][k])


def _check_pairs(camids: torch.Tensor, where: str) -> None:
    cams, counts = torch.unique(camids, return_counts=True)
    if bool((counts < 2).any()):
        lone = [int(c) for c in cams[counts < 2]]
        raise UserError(f"camera-based BatchNorm needs at least 2 images of each camera in each BatchNorm group "
                        f"({where}); camera(s) {lone} have 1 (the trainer's sampler draws same-camera pairs: keep "
                        "data.num_instances and train.bn_chunk even)")


def _by_camera(model: nn.Module, x: torch.Tensor, camids: torch.Tensor,
               statistics: CameraStatistics | None) -> tuple[torch.Tensor, torch.Tensor]:
    cams, counts = torch.unique(camids, return_counts=True)
    order = torch.argsort(camids, stable=True)  # the images grouped by camera, each group in batch order
    parts = []
    for cam, rows in zip(cams.tolist(), order.split(counts.tolist())):
        parts.append(model.embed_chunk(x[rows]) if statistics is None else statistics.forward(model, int(cam), x[rows]))
    back = torch.argsort(order)  # position of each image in the grouped order
    return torch.cat([p for p, _ in parts])[back], torch.cat([e for _, e in parts])[back]


def per_camera_pool_and_embed(model: nn.Module, x: torch.Tensor, camids: torch.Tensor,
                              statistics: CameraStatistics | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.pool_and_embed(x)`` with camera-based BatchNorm: pooled features and neck outputs (B x dim, the
    order of ``x``), each camera's images normalised by that camera's batch statistics (train mode), within each
    ``model.bn_chunk`` chunk (module docstring).

    ``model``: a ``ReidModel`` (its ``embed_chunk``, ``bn_chunk``); ``camids``: one camera id per image;
    ``statistics``: per-camera running statistics to update (the first chunk's groups), after which the model's
    own are their mixture; without it each group updates the model's own in turn. In eval mode this is the plain
    forward (running statistics). Raises UserError when a camera has a single image in a group.
    """
    camids = torch.as_tensor(camids).to(x.device).reshape(-1)
    if camids.numel() != x.shape[0]:
        raise UserError(f"camera-based BatchNorm needs one camera id per image: got {camids.numel()} for a batch "
                        f"of {x.shape[0]}")
    if not model.training:
        return model.pool_and_embed(x)
    if getattr(model, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    chunk = int(getattr(model, "bn_chunk", 0) or 0)
    size = chunk if 0 < chunk < x.shape[0] else x.shape[0]
    pieces, cameras = x.split(size), camids.split(size)
    where = f"train.bn_chunk chunks of {size}" if size < x.shape[0] else f"a batch share of {size}"
    for c in cameras:
        _check_pairs(c, where)
    parts = [_by_camera(model, pieces[0], cameras[0], statistics)]
    if statistics is not None:  # before any later chunk's forward saves the model's buffers for its backward
        statistics.write_global(model)
    if len(pieces) > 1:
        with running_statistics_kept(model):  # the running statistics follow the first chunk, as plain bn_chunk
            parts += [_by_camera(model, p, c, None) for p, c in zip(pieces[1:], cameras[1:])]
    return torch.cat([p for p, _ in parts]), torch.cat([e for _, e in parts])
