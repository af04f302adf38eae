"""P x K identity sampler over (pseudo) labels."""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class IdentitySampler(Sampler[int]):
    """Yields dataset indices in batches of P identities x K instances.

    Each pass visits every identity once: K of its images (drawn without
    replacement when it has at least K, with replacement otherwise), the
    identities in random order. ``len`` is the number of indices in a pass,
    always a multiple of K (with few identities, several passes are chained
    to reach ``min_length``); a loader with ``batch_size = P * K`` and
    ``drop_last=True`` then gives P x K batches. Labels < 0 (outliers) are
    never sampled.

    ``singletons_once``: a label with a single image yields it once, not K
    times (SpCL's ``RandomMultipleGallerySampler`` skips the K - 1 partners of
    an un-clustered instance); batches then hold a varying number of labels.
    """

    def __init__(self, labels: Sequence[int], num_instances: int, seed: int = 0, min_length: int = 0,
                 singletons_once: bool = False) -> None:
        self.num_instances = num_instances
        self.min_length = min_length
        self.singletons_once = singletons_once
        self.index_by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            if label >= 0:
                self.index_by_label[int(label)].append(index)
        self.labels = sorted(self.index_by_label)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._passes() * self._per_pass()

    def _draws(self, label: int) -> int:
        return 1 if self.singletons_once and len(self.index_by_label[label]) == 1 else self.num_instances

    def _per_pass(self) -> int:
        return sum(self._draws(label) for label in self.labels)

    def _passes(self) -> int:
        """Whole shuffled passes needed to give at least ``min_length`` indices (few clusters)."""
        return max(1, -(-self.min_length // max(self._per_pass(), 1)))

    def __iter__(self) -> Iterator[int]:
        order = np.concatenate([self.rng.permutation(len(self.labels)) for _ in range(self._passes())])
        for position in order:
            members = self.index_by_label[self.labels[position]]
            draws = self._draws(self.labels[position])
            replace = len(members) < draws
            yield from (int(i) for i in self.rng.choice(members, draws, replace=replace))


class GlobalBatches(Sampler[list]):
    """Global batches of a sampler's index stream, and this process's contiguous share of each.

    The stream is cut into batches of ``batch_size`` (a last, shorter batch is dropped). Every process
    iterates the same stream (same sampler seed) and yields only its share: positions
    ``[part * batch_size / parts, (part + 1) * batch_size / parts)`` of each global batch, so ``parts``
    processes together load exactly the batches one process would. Each index comes with the seed of its
    augmentation, ``(index, seed)``, drawn per position of the global batch from a generator seeded with
    ``seed``: an image's augmentation depends neither on the number of processes nor on the loader's workers.
    """

    def __init__(self, sampler: Sampler[int], batch_size: int, seed: int, part: int = 0, parts: int = 1) -> None:
        if parts < 1 or not 0 <= part < parts or batch_size % parts:
            raise ValueError(f"cannot share batches of {batch_size} as part {part} of {parts}")
        self.sampler = sampler
        self.batch_size = batch_size
        self.share = batch_size // parts
        self.start = part * self.share
        self.rng = np.random.default_rng([seed, 0xA6])  # augmentation seeds, apart from the sampler's own draws

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[int] = []
        for index in self.sampler:
            batch.append(int(index))
            if len(batch) == self.batch_size:
                seeds = self.rng.integers(0, 2**63 - 1, size=self.batch_size)
                yield [(batch[i], int(seeds[i])) for i in range(self.start, self.start + self.share)]
                batch = []
