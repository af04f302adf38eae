"""Torch datasets and loaders over lists of ``Sample``."""

from __future__ import annotations

import contextlib
import random
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import UserError
from .images import read_image
from .sampler import GlobalBatches, sampler_class
from .types import Sample


def _worker_init(_: int) -> None:
    """One thread per loader worker: the main process already uses every core."""
    torch.set_num_threads(1)


@contextlib.contextmanager
def seeded_randomness(seed: int | None) -> Iterator[None]:
    """Inside the block torch's, Python's and numpy's global generators start from ``seed`` (the random
    transforms draw from them); their states are restored after. ``None``: the block draws as it is."""
    if seed is None:
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class ImageDataset(Dataset):
    """(image tensor, label, camera, index) for each sample; ``labels`` overrides the identities.

    With ``num_views`` > 1 the image is transformed that many times independently and the
    views are stacked: the image tensor is V x C x H x W (methods that compare augmented views).
    ``weak_transform`` appends the image under that transform; ``companions`` (one sample per
    sample) appends the companion image under ``transform``, after everything else.
    A key ``(index, seed)`` (``GlobalBatches``) draws the random transforms from ``seed``.
    """

    def __init__(self, samples: Sequence[Sample], transform: Callable, labels: Sequence[int] | None = None,
                 num_views: int = 1, weak_transform: Callable | None = None,
                 companions: Sequence[Sample] | None = None) -> None:
        self.samples = list(samples)
        self.transform = transform
        self.labels = list(labels) if labels is not None else [s.pid for s in self.samples]
        self.num_views = num_views
        self.weak_transform = weak_transform  # appended after the views (un-augmented image)
        self.companions = list(companions) if companions is not None else None  # appended last
        if self.companions is not None and len(self.companions) != len(self.samples):
            raise ValueError(f"{len(self.samples)} samples but {len(self.companions)} companions")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        sample = self.samples[index]
        picture = read_image(sample.path)
        with seeded_randomness(seed):
            views = [self.transform(picture) for _ in range(self.num_views)]
            if self.weak_transform is not None:
                views.append(self.weak_transform(picture))
            if self.companions is not None:
                views.append(self.transform(read_image(self.companions[index].path)))
        image = views[0] if len(views) == 1 else torch.stack(views)
        return image, self.labels[index], sample.camid, index


def eval_loader(samples: Sequence[Sample], transform: Callable, batch_size: int, workers: int) -> DataLoader:
    """Ordered loader for feature extraction.

    Its iterators draw their base seed from a private generator, not torch's global one: how many extraction
    loaders a run makes (per camera, per process shard) must not move the random stream that training draws from
    (ACFL's random positives): otherwise N processes would not step as one (tests/test_distributed.py)."""
    return DataLoader(ImageDataset(samples, transform), batch_size=batch_size, shuffle=False,
                      num_workers=workers, pin_memory=torch.cuda.is_available(), worker_init_fn=_worker_init,
                      generator=torch.Generator().manual_seed(0))


def check_batch_split(batch_size: int, num_instances: int, parts: int = 1) -> None:
    """A P x K batch of ``batch_size`` must split into ``parts`` equal shares of whole identities (K images each)."""
    if batch_size % num_instances:
        raise UserError(f"data.batch_size ({batch_size}) must be a multiple of data.num_instances ({num_instances})")
    if parts > 1 and batch_size % (parts * num_instances):
        raise UserError(f"data.batch_size ({batch_size}) is the global batch, shared by {parts} processes: each share "
                        f"must be a whole number of identities of data.num_instances ({num_instances}) images, so "
                        f"data.batch_size must be a multiple of {parts} x {num_instances} = {parts * num_instances}")


class InfiniteIdentityLoader:
    """Endless P x K batches over pseudo labels (restarts the sampler when a pass ends).

    ``sampler``: a name of ``data.sampler.SAMPLERS`` (the cameras come from the samples).
    ``num_views`` > 1: images come as B x V x C x H x W (independent augmentations of each image);
    ``weak_transform`` adds one more view, the image under that transform; ``companions`` one more, each
    image's companion sample under ``transform``. ``singletons_once``: see ``IdentitySampler``.
    ``batch_size`` is the global batch: with ``parts`` > 1 processes, process ``part`` loads its contiguous
    share of each one (``GlobalBatches``). Every image's augmentation is drawn from a seed of its own, the
    same at any number of processes or workers. ``camera_pairs``: images in same-camera pairs (camera-based
    BatchNorm, ``IdentitySampler``).
    """

    def __init__(self, samples: Sequence[Sample], labels: Sequence[int], transform: Callable, batch_size: int,
                 num_instances: int, workers: int, seed: int, num_views: int = 1, weak_transform: Callable | None = None,
                 singletons_once: bool = False, sampler: str = "pk", companions: Sequence[Sample] | None = None,
                 part: int = 0, parts: int = 1, camera_pairs: bool = False) -> None:
        check_batch_split(batch_size, num_instances, parts)
        self.sampler = sampler_class(sampler)(labels, num_instances, seed=seed, min_length=batch_size,
                                              singletons_once=singletons_once, camids=[s.camid for s in samples],
                                              camera_pairs=camera_pairs)
        self.batches = GlobalBatches(self.sampler, batch_size, seed, part, parts)
        self.loader = DataLoader(ImageDataset(samples, transform, labels, num_views, weak_transform, companions),
                                 batch_sampler=self.batches, num_workers=workers, worker_init_fn=_worker_init,
                                 pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0)
        self._it: Iterator | None = None

    def next(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._it = iter(self.loader)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.loader)
            return next(self._it)
