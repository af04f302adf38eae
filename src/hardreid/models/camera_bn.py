"""Camera-based BatchNorm, training path (Zhuang et al., "Rethinking the distribution gap of person
re-identification with camera-based batch normalization", ECCV 2020).

During training each camera's images of a batch are normalised with that camera's batch statistics: the official
trainer (repository automan000/Camera-based-Person-ReID, ``frameworks/training/trainer.py``, read, not copied)
re-organises every batch into one sub-batch per camera and runs each as its own BatchNorm group. Here that is
``per_camera_pool_and_embed``: one ``embed_chunk`` per camera (every BatchNorm layer of the backbone and the neck
sees that camera's images only), the outputs put back in the batch's order. The affine parameters are shared.

Our readings: the running statistics are updated by every camera's group in turn (they serve the images without
a camera; the paper's test-time step replaces them per camera anyway, ``evaluation/camera_bn.py``); a camera with
a single image in the batch is refused in one line (the official trainer silently drops such images; BatchNorm
has no variance of one image).

Not wired into the trainer yet (no ``model.camera_bn`` key): the forwards of the methods and generators would have
to carry the batch's camera ids.
"""

from __future__ import annotations

import torch

from hardreid.errors import UserError

__all__ = ["per_camera_pool_and_embed"]


def per_camera_pool_and_embed(model: torch.nn.Module, x: torch.Tensor,
                              camids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``model.pool_and_embed(x)`` with camera-based BatchNorm: pooled features and neck outputs (B x dim, the
    order of ``x``), each camera's images normalised by that camera's batch statistics (train mode).

    ``model``: a ``ReidModel`` (its ``embed_chunk``); ``camids``: one camera id per image. In eval mode this is
    the plain forward (running statistics). Raises UserError when a camera has a single image in the batch.
    """
    camids = torch.as_tensor(camids).to(x.device).reshape(-1)
    if camids.numel() != x.shape[0]:
        raise UserError(f"camera-based BatchNorm needs one camera id per image: got {camids.numel()} for a batch "
                        f"of {x.shape[0]}")
    if not model.training:
        return model.pool_and_embed(x)
    if getattr(model, "channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    cams, counts = torch.unique(camids, return_counts=True)
    if bool((counts < 2).any()):
        lone = [int(c) for c in cams[counts < 2]]
        raise UserError(f"camera-based BatchNorm needs at least 2 images of each camera in a batch; camera(s) "
                        f"{lone} have 1 (use a camera-balanced sampler, e.g. data.sampler: more_camera, or a larger "
                        "data.num_instances)")
    order = torch.argsort(camids, stable=True)  # the images grouped by camera, each group in batch order
    parts = [model.embed_chunk(x[idx]) for idx in order.split(counts.tolist())]
    back = torch.argsort(order)  # position of each image in the grouped order
    return torch.cat([p for p, _ in parts])[back], torch.cat([e for _, e in parts])[back]
