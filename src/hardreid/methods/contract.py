"""What a method is: the hooks every part of a method implements, and what they are given.

The trainer owns the loop (``training/trainer.py``); a method only says what one step computes
(docs/architecture.md, "One epoch" and "Adding a method"). A method is a composition
(``compose.ComposedMethod``): one **base** (memory + loss: Cluster Contrast, SpCL, ICE, the strong baseline;
``bases/``) and any number of **components** listed in ``method.hard_samples``: hard-sample generators (ACFL's hard
person features and hard positive instances, self-guided hard negative generation; ``generators/``) and add-ons
that are not generators (ICE's camera proxies, a mean teacher; ``addons/``). All are ``Component`` objects with the
same hooks; the ``ComposedMethod`` calls them in order (base first, then ``method.hard_samples`` in its order):

``start_epoch(data, model)``
    once per epoch, after clustering: build memories from the epoch's features and pseudo labels (``EpochData``).
``before_step(model, batch)``
    before the re-ID forward: a component may update its *own* networks here
    (e.g. a generator and a discriminator with their own optimisers), never the
    re-ID model's parameters.
``losses(ctx)``
    named loss terms (already weighted) of the step (``StepContext``); the re-ID loss is their sum.
``after_step(ctx)``
    after the optimiser step: explicit memory / teacher updates. Nothing is
    ever updated inside backward. Under several processes ``ctx`` holds the
    whole (global) batch: every process's features, labels, cameras and
    indices in global batch order (``compose.gather_step``), so that memories update
    identically everywhere; its images are not gathered (empty).
``end_epoch(epoch, run_dir)``
    after the epoch's steps: pictures and statistics for the metrics row.

The base decides which images are sampled (``sampling_labels``) and by which of
``data/sampler.py``'s samplers (``sampler``: its official one, unless ``data.sampler``
names another); a component may ask the loader to bring a companion image with each
batch image (``companions``: ACFL's mined hardest positives), may own parameters trained
by its own optimiser stepped with the re-ID one (``optimizers``: OpenUnReID's classifier),
and may name the network whose features are clustered
(``clustering_model``, e.g. an EMA teacher) and the one that is evaluated and
saved for evaluation (``evaluation_model``).

A base also exposes its cluster-level features (``prototypes``) and computes
its cluster logits through ``cluster_logits``, where generators may replace
the prototypes by harder ones (``logit_adjusters``: ACFL's hard person features).

A new base or component registers its name in ``registry.py`` (``register_base``, ``register_hard_samples``);
the name is then a valid ``method.base`` / ``method.hard_samples`` value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .. import distributed
from ..config import Config
from ..precision import float32


@dataclass
class Batch:
    images: torch.Tensor  # B x C x H x W (the first augmented view)
    labels: torch.Tensor  # pseudo labels 0..Nc-1
    camids: torch.Tensor
    indices: torch.Tensor  # positions in the full training list (EpochData rows)
    views: list[torch.Tensor] = field(default_factory=list)  # further independent augmentations, if asked for
    weak: torch.Tensor | None = None  # the un-augmented image (eval transform), if a component asked for it (ICE)
    companion: torch.Tensor | None = None  # each image's companion (augmented), if a component asked for them (Mining)

    @classmethod
    def from_loader(cls, images: torch.Tensor, labels: torch.Tensor, camids: torch.Tensor, indices: torch.Tensor,
                    device: torch.device, weak: bool = False, companion: bool = False) -> "Batch":
        """Split B x V x C x H x W loader output into ``images`` and ``views``; ``companion``: the last view,
        ``weak``: the last one before it (the order ``ImageDataset`` stacks them in)."""
        images = images.to(device, non_blocking=True)
        views: list[torch.Tensor] = []
        if images.dim() == 5:
            views = [images[:, v] for v in range(1, images.shape[1])]
            images = images[:, 0]
        companion_view = views.pop() if companion else None
        weak_view = views.pop() if weak else None
        return cls(images, labels.to(device), camids.to(device), indices.to(device), views, weak_view, companion_view)


@dataclass
class EpochData:
    """Everything known before an epoch's steps: features of all training images and their pseudo labels."""

    epoch: int
    features: torch.Tensor  # N x D, L2-normalised, in the order of dataset.train
    labels: torch.Tensor  # N, -1 = outlier
    camids: torch.Tensor  # N
    num_clusters: int
    distance: Any = None  # the sparse Jaccard distance (scipy CSR, N x N) the labels came from
    eps: float | None = None  # the DBSCAN radius of the labels (cluster.eps or its auto value); None: HDBSCAN


@dataclass
class StepContext:
    """What one training step knows. Components read it; ``cache`` passes values between them within the step."""

    model: nn.Module
    batch: Batch
    features: torch.Tensor  # model(batch.images), L2-normalised, carries gradient
    base: "BaseMethod"
    epoch: int = 0
    step: int = 0
    cache: dict[str, Any] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None  # the same features before L2 normalisation (model.embed), if the model has it
    pooled: torch.Tensor | None = None  # the backbone's pooled features before the BatchNorm neck, if the model has them


@dataclass
class StepOutput:
    loss: torch.Tensor
    logs: dict[str, float] = field(default_factory=dict)
    context: StepContext | None = None

    @property
    def features(self) -> torch.Tensor | None:
        return None if self.context is None else self.context.features

    @property
    def batch(self) -> Batch | None:
        return None if self.context is None else self.context.batch


class EpochMeans:
    """Per-key running means over an epoch's steps, kept as tensors on their device (no sync per step)."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, torch.Tensor | int] = {}

    def add(self, key: str, total: torch.Tensor | float, count: torch.Tensor | int = 1) -> None:
        """Add ``total`` (a sum over ``count`` items) to ``key``; tensors are detached."""
        if isinstance(total, torch.Tensor):
            total = total.detach().float()
        self.sums[key] = self.sums.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    def means(self) -> dict[str, float]:
        """The means of the keys that counted anything (one device sync per key), over every process's steps
        (call on every process)."""
        sums = distributed.sum_over_ranks({key: float(total) for key, total in self.sums.items()})
        counts = distributed.sum_over_ranks({key: float(count) for key, count in self.counts.items()})
        return {key: total / counts[key] for key, total in sums.items() if counts[key] > 0}


class Component:
    """A part of a method: a base (memory + loss) or a hard-sample generator. Every hook is optional."""

    name = "component"
    num_views = 1  # augmented views of each batch image this component needs (Batch.views has num_views - 1)
    weak_view = False  # also load each batch image without augmentation (Batch.weak; ICE's soft instance targets)
    singletons_once = False  # pk sampler: a label with one image gives it once per pass, not K times (SpCL)

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.stats = EpochMeans()  # per-epoch diagnostics; the default end_epoch reports their means

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        """Build per-epoch state (memories) from the epoch's features and pseudo labels; resets ``stats``."""
        self.stats = EpochMeans()

    def before_step(self, model: nn.Module, batch: Batch, epoch: int, step: int) -> dict[str, float]:
        """Update the component's own networks before the re-ID step; returns values to log."""
        return {}

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        """Named, weighted loss terms for the re-ID network."""
        return {}

    def after_step(self, ctx: StepContext) -> None:
        """State changes after the optimiser step (memory updates, teacher EMA)."""

    def end_epoch(self, epoch: int, run_dir: Path | None) -> dict[str, float]:
        """After the epoch's steps: pictures, statistics; returns values for the metrics row (``stats`` means)."""
        return self.stats.means()

    def clustering_model(self, model: nn.Module) -> nn.Module | None:
        """The network whose features are clustered each epoch (e.g. an EMA teacher); None = no opinion."""
        return None

    def evaluation_model(self, model: nn.Module) -> nn.Module | None:
        """The network that is evaluated and exported (e.g. an EMA teacher); None = no opinion."""
        return None

    def clustering_features(self) -> torch.Tensor | None:
        """Features to cluster instead of extracting them (N x D, SpCL clusters its instance memory); None = extract."""
        return None

    def companions(self) -> torch.Tensor | None:
        """After ``start_epoch``: for every training image the position of an image the loader brings along with it
        (``Batch.companion``; ACFL's mined hardest positive); None = no companions."""
        return None

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Optimisers of the component's own trainable tensors that the trainer steps with the re-ID optimiser
        (same backward, gradient scaler and lr: their lr is set to the re-ID lr every epoch)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def shared_state(self) -> dict[str, Any]:
        """What every process must hold identically (memories, teachers, own networks), compared across processes
        by ``train.check_ranks``; default ``state_dict()``."""
        return self.state_dict()


class LogitAdjuster(Protocol):
    def __call__(self, features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                 logits: torch.Tensor) -> torch.Tensor: ...


class BaseMethod(Component):
    """A base method: a memory and its loss. Hard-sample generators work on ``prototypes``."""

    name = "base"
    sampler = "multi_camera"  # the official P x K sampler (data.sampler: auto); RandomMultipleGallerySampler by default
    reset_optimizer = False  # the trainer clears the re-ID optimiser's state after each start_epoch (OpenUnReID)

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.logit_adjusters: list[LogitAdjuster] = []
        self.temperature = cfg.memory.temperature

    def prototypes(self) -> torch.Tensor:
        """Cluster-level features C (Nc x D) of the current epoch, constants for the loss."""
        raise NotImplementedError

    def sampling_labels(self, data: EpochData) -> torch.Tensor:
        """Label of each training image for the P x K sampler; -1 = not sampled this epoch.

        Default: the pseudo labels (outliers left out). SpCL gives un-clustered instances their own labels.
        """
        return data.labels

    @float32  # the prototypes are float32 memories; HPF's ascent steps are small changes of these logits
    def cluster_logits(self, features: torch.Tensor, labels: torch.Tensor,
                       prototypes: torch.Tensor | None = None) -> torch.Tensor:
        """q . c_a / tau for every cluster prototype (B x Nc), after every registered adjuster (float32).

        ``labels``: the index of each row's own prototype, or -1 when its positive is not a prototype
        (SpCL's un-clustered instances); adjusters must treat -1 as "every prototype is a negative".
        ``prototypes``: default ``self.prototypes()``; a base with trained prototypes (a classifier) passes them.
        """
        if prototypes is None:
            prototypes = self.prototypes()
        logits = features @ prototypes.t() / self.temperature
        for adjust in self.logit_adjusters:
            logits = adjust(features, labels, prototypes, logits)
        return logits
