"""Feature extraction for clustering and evaluation."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..data.loaders import test_loader
from ..data.types import Sample


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
    loader = test_loader(samples, transform, batch_size, workers)
    for images, *_ in tqdm(loader, desc=desc, leave=False, disable=None, unit="batch"):
        images = images.to(device, non_blocking=True)
        feats = model(images)
        if flip:
            feats = feats + model(images.flip(3))
        chunks.append(torch.nn.functional.normalize(feats.float(), dim=1).cpu())
    model.train(was_training)
    if not chunks:
        return torch.zeros(0, getattr(model, "feat_dim", 0))
    return torch.cat(chunks)
