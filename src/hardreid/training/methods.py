"""Methods: what a training step computes. The trainer owns the loop (STYLE.md).

A method is a composition (DESIGN.md section 2): one **base** (memory + loss:
Cluster Contrast, SpCL, ICE) and any number of **hard-sample generators**
(ACFL's hard person features and hard positive instances, self-guided hard
negative generation). Both are ``Component`` objects with the same hooks; the
``ComposedMethod`` calls them in order:

``start_epoch(data, model)``
    once per epoch, after clustering: build memories from the epoch's features
    and pseudo labels.
``before_step(model, batch)``
    before the re-ID forward: a component may update its *own* networks here
    (e.g. a generator and a discriminator with their own optimisers), never the
    re-ID model's parameters.
``losses(ctx)``
    named loss terms (already weighted) of the step; the re-ID loss is their sum.
``after_step(ctx)``
    after the optimiser step: explicit memory / teacher updates. Nothing is
    ever updated inside backward. Under several processes ``ctx`` holds the
    whole (global) batch: every process's features, labels, cameras and
    indices in global batch order (``gather_step``), so that memories update
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
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..config import Config, register_choices
from ..errors import UserError
from ..memory import ClusterMemory, InstanceMemory, QueueMemory
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


MEMORY_KINDS = ("momentum", "instance", "queue")


def build_cluster_memory(cfg: Config, data: EpochData, device: torch.device) -> ClusterMemory | InstanceMemory | QueueMemory:
    """The memory named by ``memory.kind``: Cluster Contrast's momentum prototypes, ACFL's instance memory
    (person features = means of M, ACFL Section 3.1) or ACFL's limited queue memory (Table 10)."""
    m = cfg.memory
    features, labels = data.features.to(device), data.labels.to(device)
    if m.kind == "momentum":
        return ClusterMemory.from_clusters(features, labels, data.num_clusters, m.temperature, m.momentum)
    if m.kind == "instance":
        return InstanceMemory(features, labels, data.num_clusters, normalize=m.normalize_person_features)
    if m.kind == "queue":
        generator = torch.Generator().manual_seed(cfg.train.seed * 1000 + data.epoch)
        return QueueMemory(features, labels, data.num_clusters, m.queue_ratio,
                           normalize=m.normalize_person_features, generator=generator)
    raise UserError(f"unknown memory.kind '{m.kind}'; choose one of {', '.join(MEMORY_KINDS)}")


class ClusterContrast(BaseMethod):
    """Cluster Contrast (Dai et al. 2022): InfoNCE against cluster prototypes.

    ``memory.kind`` picks the prototypes: momentum-updated (Cluster Contrast, default), the means of an
    instance memory (ACFL) or of a limited queue (ACFL Table 10).
    """

    name = "cluster_contrast"
    memory: ClusterMemory | InstanceMemory | QueueMemory

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        if cfg.memory.kind not in MEMORY_KINDS:
            raise UserError(f"unknown memory.kind '{cfg.memory.kind}'; choose one of {', '.join(MEMORY_KINDS)}")

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        self.memory = build_cluster_memory(self.cfg, data, self.device)

    def prototypes(self) -> torch.Tensor:
        return self.memory.prototypes

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        logits = self.cluster_logits(ctx.features, ctx.batch.labels)
        return {"contrast": torch.nn.functional.cross_entropy(logits, ctx.batch.labels)}

    def after_step(self, ctx: StepContext) -> None:
        if isinstance(self.memory, ClusterMemory):
            self.memory.update(ctx.features, ctx.batch.labels)
        else:
            self.memory.update(ctx.features, ctx.batch.labels, ctx.batch.indices)

    def shared_state(self) -> dict[str, Any]:
        return {"memory": {k: v for k, v in vars(self.memory).items() if isinstance(v, torch.Tensor)}}


class ComposedMethod:
    """A method: a base and its hard-sample generators, called in that order at every hook (what the trainer runs)."""

    def __init__(self, base: BaseMethod, generators: list[Component] | None = None) -> None:
        self.base = base
        self.generators = list(generators or [])
        self.components: list[Component] = [base, *self.generators]
        names = [c.name for c in self.components]
        if len(set(names)) != len(names):
            raise UserError(f"method components must be distinct, got {names}")
        for generator in self.generators:
            attach = getattr(generator, "attach", None)
            if attach is not None:
                attach(base)

    @property
    def num_views(self) -> int:
        return max(c.num_views for c in self.components)

    @property
    def weak_view(self) -> bool:
        return any(c.weak_view for c in self.components)

    @property
    def singletons_once(self) -> bool:
        return self.base.singletons_once

    @property
    def reset_optimizer(self) -> bool:
        return self.base.reset_optimizer

    def sampler(self, cfg: Config) -> str:
        """``data.sampler``, or the base's official sampler for ``auto``."""
        return self.base.sampler if cfg.data.sampler == "auto" else cfg.data.sampler

    def _first_answer(self, ask: Callable[[Component], Any], default: Any = None) -> Any:
        """The first component's answer that is not None ("no opinion"), in component order; else ``default``."""
        return next((answer for answer in map(ask, self.components) if answer is not None), default)

    def companions(self) -> torch.Tensor | None:
        return self._first_answer(lambda c: c.companions())

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for c in self.components for o in c.optimizers()]

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        for c in self.components:
            c.start_epoch(data, model)

    def training_step(self, model: nn.Module, batch: Batch, epoch: int = 0, step: int = 0,
                      pool_and_embed: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
                      ) -> StepOutput:
        """The step's losses. ``pool_and_embed``: ``model.pool_and_embed`` as the trainer wraps it so that gradients are
        averaged over processes (``distributed.data_parallel``); the batch's features are computed through it."""
        logs: dict[str, float] = {}
        for c in self.components:
            logs.update(c.before_step(model, batch, epoch, step))
        pool_and_embed = pool_and_embed or getattr(model, "pool_and_embed", None)
        if callable(pool_and_embed):  # ReidModel: forward = normalize(embed); keep the unnormalised features (ICE) and
            pooled, embeddings = pool_and_embed(batch.images)  # the pooled ones before the neck (strong_baseline)
            ctx = StepContext(model, batch, F.normalize(embeddings, dim=1), self.base, epoch, step, embeddings=embeddings,
                              pooled=pooled)
        else:
            ctx = StepContext(model, batch, model(batch.images), self.base, epoch, step)
        terms: dict[str, torch.Tensor] = {}
        for c in self.components:
            for key, value in c.losses(ctx).items():
                if key in terms:
                    raise RuntimeError(f"loss term '{key}' given twice (by {c.name})")
                terms[key] = value
        if not terms:
            raise UserError("the method has no loss term; check method.base and method.hard_samples")
        loss = torch.stack([v.float() for v in terms.values()]).sum()
        logs.update({f"loss_{k}": float(v.detach()) for k, v in terms.items()})
        return StepOutput(loss=loss, logs=logs, context=ctx)

    def after_step(self, out: StepOutput) -> None:
        assert out.context is not None
        ctx = gather_step(out.context)  # the global batch, in the same order on every process
        for c in self.components:
            c.after_step(ctx)

    def sampling_labels(self, data: EpochData) -> torch.Tensor:
        return self.base.sampling_labels(data)

    def end_epoch(self, epoch: int, run_dir: Path | None) -> dict[str, float]:
        row: dict[str, float] = {}
        for c in self.components:
            row.update(c.end_epoch(epoch, run_dir))
        return row

    def clustering_model(self, model: nn.Module) -> nn.Module:
        return self._first_answer(lambda c: c.clustering_model(model), model)

    def evaluation_model(self, model: nn.Module) -> nn.Module:
        return self._first_answer(lambda c: c.evaluation_model(model), model)

    def clustering_features(self) -> torch.Tensor | None:
        return self._first_answer(lambda c: c.clustering_features())

    def state_dict(self) -> dict[str, Any]:
        return {c.name: c.state_dict() for c in self.components}

    def shared_state(self) -> dict[str, Any]:
        return {c.name: c.shared_state() for c in self.components}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for c in self.components:
            if c.name in state:
                c.load_state_dict(state[c.name])


def gather_step(ctx: StepContext) -> StepContext:
    """The step of the global batch: every process's features (detached; and embeddings), labels, cameras and
    indices, concatenated in process order, which is the global batch's order. Images and pooled features are not
    gathered (empty / None). One process: ``ctx`` itself."""
    if distributed.world_size() == 1:
        return ctx
    b = ctx.batch
    ids = distributed.all_gather_rows(torch.stack([b.labels, b.camids.to(b.labels), b.indices.to(b.labels)], dim=1))
    empty = b.images[:0]
    batch = Batch(empty, ids[:, 0], ids[:, 1].to(b.camids.dtype), ids[:, 2].to(b.indices.dtype))
    embeddings = None if ctx.embeddings is None else distributed.all_gather_rows(ctx.embeddings)
    return dataclasses.replace(ctx, batch=batch, features=distributed.all_gather_rows(ctx.features),
                               embeddings=embeddings, pooled=None, cache={})


# Registries: a new base or generator is one module that adds itself here (no trainer change).
BASES: dict[str, Callable[[Config, torch.device], BaseMethod]] = {
    "cluster_contrast": ClusterContrast,
}
HARD_SAMPLES: dict[str, Callable[[Config, torch.device], Component]] = {}


def _register_builtin() -> None:
    """Import the modules that fill the registries (kept lazy to avoid import cycles)."""
    import importlib

    for module in ("hardreid.training.bases", "hardreid.hard_samples"):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise


def _names(registry: dict[str, Any]) -> Callable[[], list[str]]:
    def names() -> list[str]:
        _register_builtin()
        return sorted(registry)
    return names


register_choices("method.base", _names(BASES))  # config validation asks the registry for the valid names
register_choices("method.hard_samples", _names(HARD_SAMPLES))


def build_method(cfg: Config, device: torch.device) -> ComposedMethod:
    """The configured base and hard-sample generators (``method.base``, ``method.hard_samples``)."""
    _register_builtin()
    if cfg.method.base not in BASES:
        raise UserError(f"unknown method.base '{cfg.method.base}'; choose one of {', '.join(sorted(BASES))}")
    unknown = [name for name in cfg.method.hard_samples if name not in HARD_SAMPLES]
    if unknown:
        choices = ", ".join(sorted(HARD_SAMPLES)) or "none available yet"
        raise UserError(f"unknown method.hard_samples {unknown}; choose from: {choices}")
    if len(set(cfg.method.hard_samples)) != len(cfg.method.hard_samples):
        raise UserError(f"method.hard_samples lists a generator twice: {cfg.method.hard_samples}")
    base = BASES[cfg.method.base](cfg, device)
    return ComposedMethod(base, [HARD_SAMPLES[name](cfg, device) for name in cfg.method.hard_samples])


Method = ComposedMethod  # the trainer's view of a method
