"""Feature extraction for clustering and evaluation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import distributed
from ..data.loaders import eval_loader
from ..data.types import Sample
from ..models.compiled import eager
from ..models.reid import whole_batch_batchnorm


@torch.no_grad()
def extract_features(model: nn.Module, samples: Sequence[Sample], transform, batch_size: int = 128, workers: int = 2,
                     device: torch.device | str = "cpu", flip: bool = False, desc: str = "features") -> torch.Tensor:
    """L2-normalised features (N x D, float32, on CPU) in the order of ``samples``.

    With ``flip`` the features of the image and its horizontal mirror are
    summed before normalising. The model is put in eval mode and restored.
    """
    was_training = model.training
    model.eval()
    chunks = []
    loader = eval_loader(samples, transform, batch_size, workers)
    for images, *_ in tqdm(loader, desc=desc, leave=False, disable=distributed.progress_disabled(), unit="batch"):
        images = images.to(device, non_blocking=True)
        feats = model(images)
        if flip:
            feats = feats + model(images.flip(3))
        chunks.append(torch.nn.functional.normalize(feats.float(), dim=1).cpu())
    model.train(was_training)
    if not chunks:
        return torch.zeros(0, getattr(model, "feat_dim", 0))
    return torch.cat(chunks)


def extract_features_sharded(model: nn.Module, samples: Sequence[Sample], transform, batch_size: int = 128,
                             workers: int = 2, device: torch.device | str = "cpu", flip: bool = False,
                             desc: str = "features") -> torch.Tensor:
    """``extract_features`` of every sample, the work shared by the processes: each extracts a contiguous share
    (whole batches, so every batch is the one a single process would make) and every process gets all rows in
    the order of ``samples``. Call it on every process; in one process it is ``extract_features``."""
    start, stop = distributed.shard_bounds(len(samples), batch_size)
    mine = extract_features(model, samples[start:stop], transform, batch_size, workers, device, flip, desc)
    return distributed.all_gather_cat(mine)


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, samples: Sequence[Sample], transform, batch_size: int = 128, workers: int = 2,
                        device: torch.device | str = "cpu", max_images: int = 4096) -> None:
    """Set every BatchNorm's running statistics to the exact average over (up to ``max_images``) images.

    A randomly initialised network has running statistics (0, 1) that match
    nothing, so its eval-mode features (used for clustering) differ wildly from
    its train-mode behaviour, and the first few training steps swing them.
    Calibrating once before training removes that mismatch; pretrained
    weights do not need it. Weights are not changed. Each loader batch is one
    BatchNorm group whatever ``train.bn_chunk`` says (``whole_batch_batchnorm``):
    chunked, only each batch's first chunk would reach the running statistics.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    was_training = model.training
    step = max(1, len(samples) // max_images)
    subset = list(samples)[::step][:max_images]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batches
    model.train()
    with eager(model), whole_batch_batchnorm(model):  # train.compile: not for one pass (models/compiled.py, eager)
        for images, *_ in tqdm(eval_loader(subset, transform, batch_size, workers), desc="BatchNorm calibration",
                               leave=False, disable=distributed.progress_disabled(), unit="batch"):
            if images.shape[0] > 1:  # BatchNorm1d needs two values per channel in train mode
                model(images.to(device, non_blocking=True))
    for m, momentum in saved:
        m.momentum = momentum
    model.train(was_training)
