"""The epoch loop (docs/architecture.md, "One epoch"; ACFL Algorithm 1), readable top to bottom:

extract features -> pseudo labels (k-reciprocal Jaccard -> DBSCAN, pseudo_labels.cluster_epoch) -> method memory
-> P x K steps (loss, optimiser step, memory update) -> evaluate -> log -> checkpoint.

Several processes (``torchrun``, ``distributed.py``) run the same loop: each extracts a share of the
features and gets all of them, rank 0 clusters and every process gets the labels, each trains on its
share of the global batch (gradients averaged), rank 0 scores and writes. One process is a world of size 1.
"""

from __future__ import annotations

import functools
import json
import math
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import distributed
from ..config import Config, OptimConfig, dump_config, validate_config
from ..config.camera_keys import resolve_camera_keys
from ..data.loaders import InfiniteIdentityLoader, check_batch_split
from ..data.sampler import sampler_class
from ..data.transforms import eval_transform, train_transform
from ..data.types import ReidDataset
from ..errors import UserError
from ..files import atomic_write_text
from ..evaluation.camera_bn import camera_statistics, extract_model_features
from ..evaluation.features import calibrate_batchnorm
from ..evaluation.pipeline import evaluate_model
from ..methods import Batch, EpochData, Method, StepOutput, build_method
from ..models import ReidModel, model_from_config
from ..models.camera_bn import CameraStatistics, per_camera_pool_and_embed
from ..models.compiled import compile_from_config, compiled_embed
from ..precision import training_precision
from ..pseudo_labels import check_cluster_config, cluster_epoch
from ..pseudo_labels.diagnostics import score_decline_warning
from ..runtime import batchnorm_group
from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .preflight import check_before_training, require_cameras, require_training_images
from .resume import Continuation, checkpoint_to_continue, trained_on
from .rng import rng_state, set_rng_state
from .run_files import LOG, TensorBoardLog, open_run_dir, setup_logging, write_metrics


@dataclass
class TrainResult:
    model: ReidModel
    history: list[dict[str, Any]]
    run_dir: Path

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


@dataclass
class RunHooks:
    """Work around a run that is not training, handed to the trainer by its caller: the run's reports and pictures
    (``hardreid.runs`` hands in model_info.json and curves.png for the command line, the demo and ``hr.train``), so
    that the trainer imports neither ``export/`` nor ``viz/`` (docs/architecture.md, "Layers"). Run on rank 0 only."""

    model_built: Sequence[Callable[[ReidModel, Config, Path], Any]] = field(default_factory=tuple)
    """``hook(model, cfg, run_dir)`` once the model is built, before a checkpoint is resumed (``train``)."""
    trained: Sequence[Callable[[Path], Any]] = field(default_factory=tuple)
    """``hook(run_dir)`` after the last epoch, when the run trained an epoch (``Trainer.fit``)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    if o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    else:
        assert o.name == "sgd", o.name  # the config allows nothing else (OptimConfig.name)
        optimizer = torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=0.9)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(o, epoch))


def lr_factor(o: OptimConfig, epoch: int) -> float:
    """Multiplier of optim.lr in epoch ``epoch`` (0-based): decay times linear warm-up.

    Decay: the piecewise ``lr_schedule`` when given, else gamma ** (milestones passed), else
    gamma ** (epoch // step_size). Warm-up as ICE's WarmupMultiStepLR: warmup_factor * (1 - a) + a
    with a = epoch / warmup_epochs.
    """
    if o.lr_schedule:  # milestones (increasing, >= 1) and lr_schedule: checked with the config
        decay = piecewise_lr_factor(o.lr_schedule)(epoch)
    elif o.milestones:
        decay = o.gamma ** sum(epoch >= m for m in o.milestones)
    else:
        decay = o.gamma ** (epoch // max(o.step_size, 1))
    if epoch < o.warmup_epochs:
        alpha = epoch / o.warmup_epochs
        return decay * (o.warmup_factor * (1 - alpha) + alpha)
    return decay


def piecewise_lr_factor(schedule: list[list[float]]) -> Callable[[int], float]:
    """``optim.lr_schedule`` [[epoch, factor], ...] -> epoch -> factor (the last entry whose epoch <= this one)."""
    points = []
    for entry in schedule:
        if len(entry) != 2 or entry[0] < 0 or entry[1] < 0:
            raise UserError(f"optim.lr_schedule entries must be [epoch >= 0, factor >= 0], got {entry}")
        points.append((int(entry[0]), float(entry[1])))
    points.sort()
    if points[0][0] != 0:
        raise UserError(f"optim.lr_schedule must start at epoch 0, got {schedule}")

    def factor(epoch: int) -> float:
        return [f for start, f in points if start <= epoch][-1]

    return factor


def label_agreement(labels: torch.Tensor, dataset: ReidDataset) -> dict[str, float]:
    """Pseudo labels vs the true training identities (diagnostics only; never used for training)."""
    if not dataset.has_train_labels:
        return {}
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    truth = np.array([s.pid for s in dataset.train])
    pred = labels.numpy().copy()
    outliers = pred < 0
    pred[outliers] = pred.max() + 1 + np.arange(outliers.sum())  # each outlier its own cluster
    return {"label_ari": float(adjusted_rand_score(truth, pred)), "label_nmi": float(normalized_mutual_info_score(truth, pred))}


class Trainer:
    """One run: holds model, optimiser, method and history; ``fit`` runs the remaining epochs."""

    def __init__(self, cfg: Config, dataset: ReidDataset, run_dir: Path, model: ReidModel | None = None,
                 initial_weights: bool = True, hooks: RunHooks | None = None) -> None:
        require_training_images(dataset)
        cfg = resolve_camera_keys(cfg, (s.camid for s in dataset.train))[0]  # auto keys (train() logs the decision)
        require_cameras(cfg, dataset)
        self.cfg, self.dataset, self.run_dir = cfg, dataset, run_dir
        self.hooks = hooks or RunHooks()  # reports and pictures of the caller's choice (rank 0)
        check_cluster_config(cfg.cluster)  # before any work, not after the first feature extraction
        self.device = distributed.setup(cfg.train.device, cfg.train.dist_timeout)  # joins torchrun's processes
        check_batch_split(cfg.data.batch_size, cfg.data.num_instances, distributed.world_size())  # equal shares
        seed_everything(cfg.train.seed)
        model = (model or model_from_config(cfg, initial_weights)).to(self.device)
        model = distributed.sync_batchnorm(model) if cfg.train.sync_bn else model
        self.model = compile_from_config(model, cfg)  # train.compile: the model's own forward, so DDP wraps it as is
        # model.camera_bn: per-camera running statistics, and a step forward that normalises each camera apart
        self.camera_stats = CameraStatistics(self.model, camera_shares(dataset)) if cfg.model.camera_bn else None
        if cfg.model.camera_bn:  # a model handed in (hr.train) extracts with the test-time step too
            self.model.camera_bn_images = cfg.model.camera_bn_images
        forward = "pool_and_embed" if self.camera_stats is None else \
            functools.partial(per_camera_pool_and_embed, statistics=self.camera_stats)
        # the step's forward, through which DDP averages the gradients over the processes (one process: the method)
        self.pool_and_embed = distributed.data_parallel(self.model, forward)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model)
        self.method: Method = build_method(cfg, self.device)
        sampler_class(self.method.sampler(cfg))  # unknown data.sampler / bad erasing settings: fail before epoch 1
        train_transform(cfg.data)
        t = cfg.train
        self.precision = training_precision(t.amp, t.amp_dtype, t.amp_cpu, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        self.history: list[dict[str, Any]] = []
        self.previous_labels: np.ndarray | None = None  # last epoch's pseudo labels (diagnostics: partition change)
        self.start_epoch = 0
        self.best_map = -1.0
        self.start_scores: dict[str, float] | None = None  # train.eval_at_start: the model before epoch 1
        self.tensorboard = TensorBoardLog(run_dir / "tensorboard") if cfg.train.tensorboard else None

    @property
    def use_amp(self) -> bool:
        return self.precision.enabled

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        evaluated = self.method.evaluation_model(self.model)
        extra = {} if evaluated is self.model else {"eval_model": evaluated.state_dict()}
        if self.camera_stats is not None:  # per-camera running statistics; "model" holds their mixture
            extra["camera_bn"] = self.camera_stats.state_dict()
        return {"epoch": epoch, "config": self.cfg.to_dict(), "model": self.model.state_dict(), **extra,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "method": self.method.state_dict(), "history": self.history, "best_map": self.best_map,
                "rng": rng_state(), "backbone": self.cfg.model.backbone, "feat_dim": self.model.feat_dim,
                "trained_on": trained_on(self.cfg, self.dataset), "world_size": distributed.world_size(),
                "start_scores": self.start_scores,
                "pseudo_labels": None if self.previous_labels is None else torch.as_tensor(self.previous_labels)}

    def resume(self, path: Path, state: dict[str, Any] | None = None) -> None:
        """Continue from the checkpoint at ``path`` (``state``: its contents, when already read; else rank 0 reads it
        and sends it to the other processes)."""
        state = distributed.main_then_broadcast(lambda: load_checkpoint(path)) if state is None else state
        load_model_state(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state.get("method", {}))
        if self.camera_stats is not None:  # a checkpoint without them (camera_bn was off): the model's own per camera
            if state.get("camera_bn"):
                self.camera_stats.load_state_dict(state["camera_bn"])
            else:
                self.camera_stats.reset_from(self.model)
        self.history, self.best_map = state["history"], state["best_map"]
        self.start_scores = state.get("start_scores")
        self.start_epoch = state["epoch"]
        labels = state.get("pseudo_labels")
        self.previous_labels = None if labels is None else np.asarray(labels)
        set_rng_state(state["rng"])
        LOG.info("resumed from %s after epoch %d", path, self.start_epoch)
        self.check_world_change(state.get("world_size", 1))

    def check_world_change(self, saved_world: int) -> None:
        """Resuming with another number of processes: the global batch, its images, their augmentation and the
        random streams are the same; BatchNorm groups may not be (a warning says how to keep them)."""
        world = distributed.world_size()
        if saved_world == world:
            return
        before, now = batchnorm_group(self.cfg, saved_world), batchnorm_group(self.cfg, world)
        LOG.info("the run was trained with %d processes, it continues with %d (global batch %d unchanged)",
                 saved_world, world, self.cfg.data.batch_size)
        if before != now:
            LOG.warning("BatchNorm normalised groups of %d images with %d processes and now groups of %d: the run "
                        "continues, but not as it would have; to keep groups of %d set train.bn_chunk=%d (or use %d "
                        "processes)", before, saved_world, now, before, before, saved_world)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.cfg
        self.log_world()
        LOG.info("training %s on %s: %d images, %d cameras, device %s", cfg.method.base, self.dataset.name,
                 len(self.dataset.train), self.dataset.num_train_cams, self.device)
        if self.start_epoch == 0 and self.camera_stats is not None:
            self.start_camera_statistics()
        elif self.start_epoch == 0 and self.wants_bn_calibration():
            LOG.info("calibrating BatchNorm statistics on the training images (train.calibrate_bn=%s)", cfg.train.calibrate_bn)
            distributed.main_then_broadcast(lambda: calibrate_batchnorm(  # on rank 0, then its statistics everywhere
                self.model, self.dataset.train, eval_transform(cfg.data), cfg.eval.batch_size, cfg.data.workers,
                self.device))
            distributed.broadcast_buffers(self.model)
        if self.start_epoch == 0 and cfg.train.eval_at_start and self.can_evaluate():
            self.score_start()
        for epoch in range(self.start_epoch, cfg.train.epochs):
            row = self.run_epoch(epoch)
            self.history.append(row)
            self.write(epoch, row)
        if self.history and distributed.is_main():
            decline = score_decline_warning(self.history, start=self.start_scores)
            if decline:
                LOG.warning(decline)
            for hook in self.hooks.trained:  # e.g. curves.png (hardreid.runs)
                hook(self.run_dir)
        return TrainResult(self.method.evaluation_model(self.model), self.history, self.run_dir)

    def start_camera_statistics(self) -> None:
        """``model.camera_bn``, first epoch: each camera's running statistics start from the model's, or, when
        BatchNorm is calibrated (``train.calibrate_bn``), from that camera's training images (the model's own are
        then their mixture)."""
        if not self.wants_bn_calibration():
            self.camera_stats.reset_from(self.model)
            return
        cfg = self.cfg
        LOG.info("calibrating BatchNorm statistics per camera on the training images (train.calibrate_bn=%s, "
                 "model.camera_bn)", cfg.train.calibrate_bn)
        per_camera = distributed.main_then_broadcast(lambda: camera_statistics(  # rank 0's, then everywhere
            self.model, self.dataset.train, eval_transform(cfg.data), cfg.eval.batch_size, cfg.data.workers,
            self.device, max_images=4096))
        self.camera_stats.reset_from(self.model, per_camera)
        self.camera_stats.write_global(self.model)

    def log_world(self) -> None:
        """The log's first line: processes, how the batch is shared, what BatchNorm normalises."""
        cfg, world = self.cfg, distributed.world_size()
        group, share = batchnorm_group(cfg, world), cfg.data.batch_size // world
        norm = "SyncBatchNorm over the global batch" if group == cfg.data.batch_size and world > 1 else \
            f"BatchNorm over groups of {group} images"
        if world == 1:
            LOG.info("world size 1: one process, batch %d, %s", cfg.data.batch_size, norm)
        else:
            LOG.info("world size %d: %d processes (%s), global batch %d = %d x %d, %s", world, world,
                     "nccl" if self.device.type == "cuda" else "gloo", cfg.data.batch_size, world, share, norm)
        if cfg.train.bn_chunk > share and not cfg.train.sync_bn:
            LOG.warning("train.bn_chunk=%d but each process holds %d images of the batch: BatchNorm normalises groups "
                        "of %d (fewer processes, or a larger data.batch_size, keep groups of %d)", cfg.train.bn_chunk,
                        share, share, cfg.train.bn_chunk)

    @property
    def files(self) -> Path | None:
        """Where this process writes pictures: the run folder on rank 0, nowhere on the others."""
        return self.run_dir if distributed.is_main() else None

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, start = self.cfg, time.time()
        features = self.method.clustering_features()  # SpCL clusters its instance memory
        if features is None:  # each process extracts a share, every one gets all features
            features = extract_model_features(self.method.clustering_model(self.model), self.dataset.train,
                                              eval_transform(cfg.data), cfg.eval.batch_size, cfg.data.workers,
                                              self.device, desc=f"epoch {epoch + 1} features")  # camera_bn: per camera
        features = features.cpu()
        if not torch.isfinite(features).all():
            raise UserError(f"epoch {epoch + 1}: the model produced NaN/inf features; lower optim.lr or check the weights")
        camids = torch.tensor([s.camid for s in self.dataset.train])
        clusters, agreement = distributed.main_then_broadcast(lambda: self.pseudo_labels(features, camids))  # rank 0
        self.previous_labels, stats = clusters.labels, clusters.stats
        labels = torch.as_tensor(clusters.labels, dtype=torch.long)
        LOG.info("epoch %d/%d pseudo labels: %s%s", epoch + 1, cfg.train.epochs, clusters.text(),
                 "".join(f", {k} {v:.3f}" for k, v in agreement.items()))
        if clusters.warning:
            LOG.warning("epoch %d/%d: %s", epoch + 1, cfg.train.epochs, clusters.warning)
        data = EpochData(epoch, features, labels, camids, stats.num_clusters, clusters.distance, clusters.eps)
        self.method.start_epoch(data, self.model)
        if self.method.reset_optimizer:  # OpenUnReID's reset_optim: new labels, fresh Adam moments
            self.optimizer.state = defaultdict(dict)
        losses = self.train_steps(epoch, self.method.sampling_labels(data))
        self.scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1, "clusters": stats.num_clusters, "outliers": stats.num_outliers,
                               **losses, **agreement, "lr": self.optimizer.param_groups[0]["lr"],
                               "cluster_sizes": stats.to_dict(), **clusters.metrics(),
                               **self.method.end_epoch(epoch, self.files), "world_size": distributed.world_size()}
        if cfg.train.check_ranks:
            self.check_ranks(epoch)
        if self.should_evaluate(epoch):
            row.update(self.scores())
        row["seconds"] = time.time() - start
        if row.get("loss") == 0:
            LOG.warning("epoch %d/%d: the loss was 0 in every step: nothing was learned this epoch (one pseudo identity, "
                        "or every sample an outlier of the memory); see the pseudo-label line above", epoch + 1,
                        cfg.train.epochs)
        LOG.info("epoch %d/%d done in %.0fs: %s", epoch + 1, cfg.train.epochs, row["seconds"],
                 ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "mAP", "top1", "top5") if k in row))
        if compiled_embed(self.model) is not None:
            LOG.debug("epoch %d/%d: %s", epoch + 1, cfg.train.epochs, compiled_embed(self.model).summary())
        return row

    def pseudo_labels(self, features: torch.Tensor, camids: torch.Tensor) -> tuple[Any, dict[str, float]]:
        """This epoch's clusters (``cluster_epoch``) and their agreement with the true identities (diagnostics)."""
        clusters = cluster_epoch(features, camids, self.cfg.cluster, self.previous_labels)
        return clusters, label_agreement(torch.as_tensor(clusters.labels, dtype=torch.long), self.dataset)

    def check_ranks(self, epoch: int) -> None:
        """``train.check_ranks``: weights, optimiser state and the method's memories are identical on every process."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()["state"],
                 "method": self.method.shared_state(),
                 "camera_bn": self.camera_stats.state_dict() if self.camera_stats is not None else {}}
        count = distributed.check_identical(flat_tensors(state), f"epoch {epoch + 1}")
        LOG.info("epoch %d: %d tensors (weights, optimiser, memories) identical on all %d processes", epoch + 1,
                 count, distributed.world_size())

    def wants_bn_calibration(self) -> bool:
        mode = self.cfg.train.calibrate_bn
        random_init = not (self.cfg.model.weights or self.cfg.model.pretrained)
        return mode == "always" or (mode == "auto" and random_init)

    def scores(self) -> dict[str, float]:
        """mAP and top-1/5/10 of the evaluation model on the query and gallery split.

        Evaluation must not move the random streams: a run that evaluates at other epochs (eval_every, eval_at_start)
        or is resumed trains exactly as one that does not (the loaders draw their seeds from torch's RNG).
        """
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            result = evaluate_model(self.method.evaluation_model(self.model), self.dataset, self.cfg.data,
                                    self.cfg.eval, self.device)
        return {"mAP": result.mAP, "top1": result.rank(1), "top5": result.rank(5), "top10": result.rank(10)}

    def score_start(self) -> None:
        """``train.eval_at_start``: score the weights training starts from (RUN_DIR/start_scores.json)."""
        self.start_scores = {"epoch": 0, **self.scores()}
        LOG.info("before training: %s", ", ".join(f"{k} {self.start_scores[k]:.4g}" for k in ("mAP", "top1", "top5")))
        if distributed.is_main():
            atomic_write_text(self.run_dir / "start_scores.json", json.dumps(self.start_scores, indent=1))

    def can_evaluate(self) -> bool:
        return bool(self.dataset.query and self.dataset.gallery)

    def should_evaluate(self, epoch: int) -> bool:
        every = self.cfg.train.eval_every
        return self.can_evaluate() and (epoch + 1 == self.cfg.train.epochs or (every > 0 and (epoch + 1) % every == 0))

    def train_steps(self, epoch: int, labels: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        keep = (labels >= 0).nonzero().flatten().tolist()
        samples = [self.dataset.train[i] for i in keep]
        partners = self.method.companions()  # e.g. ACFL Mining: each image's hardest positive comes with it
        companions = None if partners is None else [self.dataset.train[int(partners[i])] for i in keep]
        loader = InfiniteIdentityLoader(samples, labels[keep].tolist(), train_transform(cfg.data), cfg.data.batch_size,
                                        cfg.data.num_instances, cfg.data.workers, seed=cfg.train.seed * 1000 + epoch,
                                        num_views=self.method.num_views,
                                        weak_transform=eval_transform(cfg.data) if self.method.weak_view else None,
                                        singletons_once=self.method.singletons_once, sampler=self.method.sampler(cfg),
                                        companions=companions, camera_pairs=cfg.model.camera_bn,
                                        part=distributed.rank(), parts=distributed.world_size())  # this process's share
        iters = cfg.train.iters or max(1, math.ceil(len(samples) / cfg.data.batch_size))
        keep_index = torch.as_tensor(keep)  # loader position -> row of the training list (moves with the batch)
        for optimizer in self.method.optimizers():  # a component's own trainable tensors (OpenUnReID's classifier)
            for group in optimizer.param_groups:
                group["lr"] = self.optimizer.param_groups[0]["lr"]
        totals: dict[str, float] = {}
        self.model.train()
        bar = tqdm(range(iters), desc=f"epoch {epoch + 1} train", leave=False, disable=distributed.progress_disabled(),
                   unit="step")
        self._synchronize()
        start = time.perf_counter()  # training steps only: batch loading, forward, backward, update
        for step in bar:
            images, batch_labels, camids, positions = loader.next()
            index = keep_index[positions]
            batch = Batch.from_loader(images, batch_labels, camids, index, self.device, weak=self.method.weak_view,
                                      companion=companions is not None)
            out = self.train_step(batch, epoch, step)
            for key, value in {"loss": out.loss.item(), **out.logs}.items():
                totals[key] = totals.get(key, 0.0) + value
            if self.scaler.is_enabled():
                totals.setdefault("amp_skipped_steps", 0.0)
            bar.set_postfix(loss=f"{out.loss.item():.3f}")
        self._synchronize()
        seconds = time.perf_counter() - start
        world = distributed.world_size()  # the mean of the processes' shares: the global batch's (mean-reduced) losses
        totals = {k: v / world for k, v in distributed.sum_over_ranks(totals).items()}
        means = {k: v / iters for k, v in totals.items() if k != "amp_skipped_steps"}
        if "amp_skipped_steps" in totals:  # a count, not a mean
            means["amp_skipped_steps"] = totals["amp_skipped_steps"]
        return {**means, "train_seconds": seconds, "seconds_per_step": seconds / iters}

    def train_step(self, batch: Batch, epoch: int, step: int) -> StepOutput:
        """One optimiser step on a batch already on the device: the method's losses under the run's autocast
        (``train.amp*``), backward (loss scaled for float16), optimiser step, then the method's state updates."""
        forward = self.pool_and_embed if self.camera_stats is None else \
            functools.partial(self.pool_and_embed, camids=batch.camids)  # model.camera_bn: the batch's cameras
        with self.precision.autocast():
            out = self.method.training_step(self.model, batch, epoch, step, pool_and_embed=forward)
        if not torch.isfinite(out.loss):
            raise UserError(f"epoch {epoch + 1} step {step + 1}: the loss is {out.loss.item()}; "
                            f"lower optim.lr (now {self.cfg.optim.lr}) or check the data")
        optimizers = (self.optimizer, *self.method.optimizers())  # and a component's own (OpenUnReID's classifier)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()  # several processes: DDP averages the model's gradients meanwhile
        for optimizer in optimizers[1:]:  # a component's own parameters: averaged over the processes here
            distributed.average_gradients(p for group in optimizer.param_groups for p in group["params"])
        for optimizer in optimizers:
            self.scaler.step(optimizer)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # float16 gradients overflowed: the scaler skipped this step
                out.logs["amp_skipped_steps"] = 1.0
        if self.camera_stats is not None:  # the global statistics: the cameras' mixture, whatever other forwards
            self.camera_stats.write_global(self.model)  # of the step (hard positives, generated images) moved
        distributed.broadcast_buffers(self.model)  # rank 0's BatchNorm statistics, as DataParallel keeps the first GPU's
        if self.camera_stats is not None:  # and rank 0's per-camera ones
            distributed.broadcast_tensors(self.camera_stats.tensors())
        self.method.after_step(out)  # memories and teachers, from the global batch on every process
        return out

    def _synchronize(self) -> None:
        """Wait for queued GPU work, so that step timings are real."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @distributed.main_only
    def write(self, epoch: int, row: dict[str, Any]) -> None:
        """Metrics and checkpoints of the epoch just done (rank 0)."""
        write_metrics(self.history, self.run_dir)
        if self.tensorboard:
            self.tensorboard.log_epoch(row)
        self.save(epoch + 1, row)

    def save(self, epoch: int, row: dict[str, Any]) -> None:
        """last.pth (every save_every epochs, the last epoch, and whenever the mAP improved), then best.pth.

        In this order a kill between or during the two writes leaves last.pth holding the best epoch, from
        which resume rewrites a stale best.pth (``resume.repair_best_checkpoint``).
        """
        ckpt_dir = self.run_dir / "checkpoints"
        improved = "mAP" in row and row["mAP"] > self.best_map
        if improved:
            self.best_map = row["mAP"]
        state = self.state(epoch)
        if improved or epoch % self.cfg.train.save_every == 0 or epoch == self.cfg.train.epochs:
            save_checkpoint(state, ckpt_dir / "last.pth")
        if improved:
            save_checkpoint(state, ckpt_dir / "best.pth")


def train(cfg: Config, dataset: ReidDataset, output: str | Path, model: ReidModel | None = None,
          resume: bool = False, log_to_stderr: bool = True, start_from: str | Path | None = None,
          hooks: RunHooks | None = None) -> TrainResult:
    """Train ``cfg``'s method on ``dataset``, writing everything into ``output``.

    With ``resume`` the run continues from ``output/checkpoints/last.pth``; only the config keys of
    ``resume.RESUMABLE_KEYS`` may differ from the checkpoint's. ``start_from``: a checkpoint of another run to
    continue from as a new stage (any config key may differ; the training images must be the same). Config,
    checkpoint, data and output folder are checked before anything is written or computed. ``hooks``: the run's
    reports and pictures (none by default; ``hardreid.runs.train``, which the command line, the demo and
    ``hr.train`` use, hands in model_info.json and curves.png).
    """
    validate_config(cfg)
    require_training_images(dataset)
    # model.camera_bn / cluster.jaccard "auto": decided here from the training cameras, so config.yaml, checkpoints
    # and resume hold the decision
    cfg, decided = resolve_camera_keys(cfg, (s.camid for s in dataset.train))
    run_dir = Path(output)
    distributed.setup(cfg.train.device, cfg.train.dist_timeout)  # several processes (torchrun): rank 0 reads and writes
    previous = distributed.main_then_broadcast(
        lambda: prepare_run_dir(cfg, dataset, run_dir, resume, start_from, log_to_stderr))  # every process gets it
    setup_logging(run_dir / "train.log", verbose=log_to_stderr)  # rank 0 logs; the others report errors only
    if decided:
        LOG.info("%s", decided)
    trainer = Trainer(cfg, dataset, run_dir, model, initial_weights=previous is None, hooks=hooks)
    for hook in trainer.hooks.model_built:  # e.g. model_info.json: parameters, FLOPs (hardreid.runs)
        distributed.main_only(hook)(trainer.model, cfg, run_dir)
    if previous is not None:
        trainer.resume(previous.path, previous.state)
        distributed.main_only(previous.settle)(run_dir)  # logs notes; after a kill: best.pth back in step with the metrics
    return trainer.fit()


def prepare_run_dir(cfg: Config, dataset: ReidDataset, run_dir: Path, resume: bool, start_from: str | Path | None,
                    log_to_stderr: bool) -> Continuation | None:
    """Check the checkpoint to continue from (read here), the data and ``run_dir``; open the run folder and write
    its config. Returns what to continue from (None for a new run)."""
    previous = checkpoint_to_continue(run_dir, cfg, dataset, resume, start_from)
    check_before_training(cfg, dataset, run_dir)
    open_run_dir(run_dir, verbose=log_to_stderr)
    dump_config(cfg, run_dir / "config.yaml")
    return previous


def camera_shares(dataset: ReidDataset) -> dict[int, float]:
    """Each training camera's share of the training images (the weights of camera BN's global statistics)."""
    counts: dict[int, int] = {}
    for s in dataset.train:
        counts[s.camid] = counts.get(s.camid, 0) + 1
    return {cam: n / len(dataset.train) for cam, n in sorted(counts.items())}


def flat_tensors(state: Any, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts / lists / tuples, by its dotted path."""
    if isinstance(state, torch.Tensor):
        return {prefix: state}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else []
    out: dict[str, torch.Tensor] = {}
    for key, value in items:
        out.update(flat_tensors(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


_MOVED = {"resolve_device": "hardreid.runtime", "config_from_dict": "hardreid.config"}


def __getattr__(name: str) -> Any:
    """Old import paths (``hardreid.training.trainer.resolve_device``): they work for one release, with a warning."""
    if name in _MOVED:
        from .._deprecated import moved

        return moved(__name__, name, _MOVED[name])
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RunHooks", "Trainer", "TrainResult", "train"]
