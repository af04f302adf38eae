"""P x K identity samplers over (pseudo) labels, one class per official sampler (``data.sampler``).

Every sampler visits each identity once per pass, in random order, and yields its images
together (a contiguous group); a loader with ``batch_size = P * K`` and ``drop_last=True``
cuts the stream into batches. Labels < 0 (outliers) are never sampled. With few
identities several passes are chained to reach ``min_length``.

``pk``            K images of the identity (without replacement when it has K).
``multi_camera``  ``RandomMultipleGallerySampler`` of SpCL, Cluster Contrast and OpenUnReID
                  (``spcl/utils/data/sampler.py``, ``clustercontrast/utils/data/sampler.py``):
                  a random anchor, then K - 1 images from the identity's *other* cameras when
                  it has any, else K - 1 of its other images; an identity of one image gives
                  that image alone.
``more_camera``   ICE's ``MoreCameraSampler`` (``ice/utils/data/sampler.py``): one random
                  image per camera of the identity; with K cameras or more, K of those; with
                  fewer, filled up with the identity's other images; always K images.

The draws follow the official code's rules (including when it samples with replacement), with
their own seeded generator instead of the global random streams.

``camera_pairs`` (``model.camera_bn``, camera-based BatchNorm): every sampler's group is turned into
same-camera pairs: its images at even positions are kept (the sampler's choice of cameras) and each is
followed by another image of the same identity and camera (drawn at random; the image itself again
when it is the only one), an odd group getting one more. Every group then has an even length, so
in any batch, process share or ``train.bn_chunk`` chunk of even size each camera has an even
number of images, at least 2: what a per-camera BatchNorm needs.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from ..errors import UserError


class IdentitySampler(Sampler[int]):
    """``pk``: K images per identity, drawn without replacement when it has at least K, with replacement otherwise.

    ``len`` is the number of indices in a pass (a multiple of the group sizes; several passes chained to
    reach ``min_length``). ``singletons_once``: a label with a single image yields it once, not K times
    (SpCL's un-clustered instances under the plain P x K sampler). ``camids``: one camera per label
    entry (used by the camera-aware subclasses and ``camera_pairs``; may be omitted here). ``camera_pairs``:
    groups of same-camera pairs (module docstring).
    """

    def __init__(self, labels: Sequence[int], num_instances: int, seed: int = 0, min_length: int = 0,
                 singletons_once: bool = False, camids: Sequence[int] | None = None,
                 camera_pairs: bool = False) -> None:
        self.num_instances = num_instances
        self.camera_pairs = camera_pairs
        self.min_length = min_length
        self.singletons_once = singletons_once
        self.camids = list(camids) if camids is not None else [0] * len(labels)
        if len(self.camids) != len(labels):
            raise ValueError(f"{len(labels)} labels but {len(self.camids)} camera ids")
        self.index_by_label: dict[int, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            if label >= 0:
                self.index_by_label[int(label)].append(index)
        self.labels = sorted(self.index_by_label)
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return self._passes() * self._per_pass()

    def _draws(self, label: int) -> int:
        """How many indices ``label`` gives per pass (fixed for every sampler, so ``len`` is exact)."""
        return 1 if self.singletons_once and len(self.index_by_label[label]) == 1 else self.num_instances

    def _group_size(self, label: int) -> int:
        """The length of ``label``'s group in a pass (its draws, made even under ``camera_pairs``)."""
        draws = self._draws(label)
        return draws + draws % 2 if self.camera_pairs else draws

    def _per_pass(self) -> int:
        return sum(self._group_size(label) for label in self.labels)

    def _passes(self) -> int:
        """Whole shuffled passes needed to give at least ``min_length`` indices (few clusters)."""
        return max(1, -(-self.min_length // max(self._per_pass(), 1)))

    def group(self, label: int) -> list[int]:
        """The indices one identity contributes to a pass."""
        members = self.index_by_label[label]
        draws = self._draws(label)
        return [int(i) for i in self.rng.choice(members, draws, replace=len(members) < draws)]

    def __iter__(self) -> Iterator[int]:
        order = np.concatenate([self.rng.permutation(len(self.labels)) for _ in range(self._passes())])
        for position in order:
            label = self.labels[position]
            group = self.group(label)
            yield from self.paired(label, group) if self.camera_pairs else group

    def paired(self, label: int, group: list[int]) -> list[int]:
        """``group`` as same-camera pairs: each image at an even position, then a random other image of the same
        identity and camera (itself when it is the only one)."""
        out: list[int] = []
        for first in group[::2]:
            mates = [m for m in self.index_by_label[label] if m != first and self.camids[m] == self.camids[first]]
            out += [first, int(self.rng.choice(mates)) if mates else first]
        return out

    def _choose(self, pool: list[int], size: int, enough: int) -> list[int]:
        """``size`` of ``pool``, without replacement when ``len(pool) >= enough`` (the official threshold)."""
        return [int(i) for i in self.rng.choice(pool, size, replace=len(pool) < enough)]


class MultiCameraSampler(IdentitySampler):
    """``multi_camera``: RandomMultipleGallerySampler (SpCL, Cluster Contrast, OpenUnReID's strong baseline).

    Per identity: a random anchor, then K - 1 partners from the cameras other than the anchor's (drawn with
    replacement unless there are at least K such images, as the official ``len(select_cams) >= num_instances``);
    without other cameras, K - 1 of the identity's other images; a single image is given once.
    """

    def _draws(self, label: int) -> int:
        return 1 if len(self.index_by_label[label]) == 1 else self.num_instances

    def group(self, label: int) -> list[int]:
        members = self.index_by_label[label]
        anchor = members[int(self.rng.integers(len(members)))]
        if len(members) == 1:
            return [anchor]
        other_cameras = [m for m in members if self.camids[m] != self.camids[anchor]]
        pool = other_cameras or [m for m in members if m != anchor]
        return [anchor, *self._choose(pool, self.num_instances - 1, self.num_instances)]


class MoreCameraSampler(IdentitySampler):
    """``more_camera``: ICE's MoreCameraSampler, K images per identity covering as many cameras as possible.

    One random image per camera (cameras in increasing order); at least K cameras: K of those picks without
    replacement; fewer: the picks plus K - picks of the identity's other images (without replacement when
    there are enough), or, with no other image, K draws with replacement from the picks.
    """

    def _draws(self, label: int) -> int:
        return self.num_instances

    def group(self, label: int) -> list[int]:
        k = self.num_instances
        members = self.index_by_label[label]
        by_camera: dict[int, list[int]] = defaultdict(list)
        for m in members:
            by_camera[self.camids[m]].append(m)
        picks = [int(self.rng.choice(by_camera[c])) for c in sorted(by_camera)]
        if len(picks) >= k:
            return self._choose(picks, k, k)
        rest = [m for m in members if m not in picks]
        if not rest:  # every image is a pick: K draws with replacement, as the official code
            return [int(i) for i in self.rng.choice(picks, k, replace=True)]
        return picks + self._choose(rest, k - len(picks), k - len(picks))


SAMPLERS: dict[str, type[IdentitySampler]] = {
    "pk": IdentitySampler,
    "multi_camera": MultiCameraSampler,
    "more_camera": MoreCameraSampler,
}


def sampler_class(name: str) -> type[IdentitySampler]:
    """The sampler registered as ``name`` (``data.sampler``); a clear error for unknown names."""
    if name not in SAMPLERS:
        raise UserError(f"unknown data.sampler '{name}'; choose auto or one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


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
