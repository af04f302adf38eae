"""The epoch loop (DESIGN.md section 1, ACFL Algorithm 1), readable top to bottom:

extract features -> pseudo labels (k-reciprocal Jaccard -> DBSCAN, pseudo_labels.cluster_epoch) -> method memory
-> P x K steps (loss, optimiser step, memory update) -> evaluate -> log -> checkpoint.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from ..config import Config, OptimConfig, config_from_dict, dump_config
from ..data.loaders import InfiniteIdentityLoader
from ..data.transforms import eval_transform, train_transform
from ..data.types import ReidDataset
from ..errors import UserError
from ..evaluation.features import calibrate_batchnorm, extract_features
from ..evaluation.pipeline import evaluate_model
from ..models import ReidModel, build_model
from ..precision import training_precision
from ..pseudo_labels import check_cluster_config, cluster_epoch
from .checkpoint import load_checkpoint, load_model_state, save_checkpoint
from .methods import Batch, EpochData, Method, StepOutput, build_method
from ..viz.curves import plot_training_curves
from .run_files import LOG, setup_logging, write_metrics


@dataclass
class TrainResult:
    model: ReidModel
    history: list[dict[str, Any]]
    run_dir: Path

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"train.device={name} but no CUDA device is available; use train.device=cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def model_from_config(cfg: Config) -> ReidModel:
    m = cfg.model
    model = build_model(m.backbone, weights=m.weights or None, pretrained=m.pretrained, last_stride=m.last_stride,
                        pooling=m.pooling, gem_p=m.gem_p, bn_chunk=cfg.train.bn_chunk,
                        img_size=(cfg.data.height, cfg.data.width))
    return model.use_channels_last(cfg.train.channels_last)


def build_optimizer(cfg: Config, model: torch.nn.Module) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in model.parameters() if p.requires_grad]
    o = cfg.optim
    if o.name == "adam":
        optimizer = torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)
    elif o.name == "sgd":
        optimizer = torch.optim.SGD(params, lr=o.lr, weight_decay=o.weight_decay, momentum=0.9)
    else:
        raise UserError(f"unknown optim.name '{o.name}'; choose adam or sgd")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(o, epoch))


def lr_factor(o: OptimConfig, epoch: int) -> float:
    """Multiplier of optim.lr in epoch ``epoch`` (0-based): decay times linear warm-up.

    Decay: the piecewise ``lr_schedule`` when given, else gamma ** (milestones passed), else
    gamma ** (epoch // step_size). Warm-up as ICE's WarmupMultiStepLR: warmup_factor * (1 - a) + a
    with a = epoch / warmup_epochs.
    """
    if any(m <= 0 for m in o.milestones) or sorted(o.milestones) != list(o.milestones):
        raise UserError(f"optim.milestones must be increasing positive epochs, not {o.milestones}")
    if o.lr_schedule:
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


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """One run: holds model, optimiser, method and history; ``fit`` runs the remaining epochs."""

    def __init__(self, cfg: Config, dataset: ReidDataset, run_dir: Path, model: ReidModel | None = None) -> None:
        if not dataset.train:
            raise UserError(f"data set at {dataset.root} has no training images")
        self.cfg, self.dataset, self.run_dir = cfg, dataset, run_dir
        check_cluster_config(cfg.cluster)  # before any work, not after the first feature extraction
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        self.model = (model or model_from_config(cfg)).to(self.device)
        self.optimizer, self.scheduler = build_optimizer(cfg, self.model)
        self.method: Method = build_method(cfg, self.device)
        t = cfg.train
        self.precision = training_precision(t.amp, t.amp_dtype, t.amp_cpu, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.scaler)
        self.history: list[dict[str, Any]] = []
        self.previous_labels: np.ndarray | None = None  # last epoch's pseudo labels (diagnostics: partition change)
        self.start_epoch = 0
        self.best_map = -1.0

    @property
    def use_amp(self) -> bool:
        return self.precision.enabled

    # -- checkpoints ---------------------------------------------------------------------------
    def state(self, epoch: int) -> dict[str, Any]:
        evaluated = self.method.evaluation_model(self.model)
        extra = {} if evaluated is self.model else {"eval_model": evaluated.state_dict()}
        return {"epoch": epoch, "config": self.cfg.to_dict(), "model": self.model.state_dict(), **extra,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "method": self.method.state_dict(), "history": self.history, "best_map": self.best_map,
                "rng": _rng_state(), "backbone": self.cfg.model.backbone, "feat_dim": self.model.feat_dim,
                "pseudo_labels": self.previous_labels}

    def resume(self, path: Path) -> None:
        state = load_checkpoint(path)
        load_model_state(self.model, state, path)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.method.load_state_dict(state.get("method", {}))
        self.history, self.best_map = state["history"], state["best_map"]
        self.start_epoch = state["epoch"]
        self.previous_labels = state.get("pseudo_labels")
        _set_rng_state(state["rng"])
        LOG.info("resumed from %s after epoch %d", path, self.start_epoch)

    # -- the loop -------------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.cfg
        LOG.info("training %s on %s: %d images, %d cameras, device %s", cfg.method.base, self.dataset.name,
                 len(self.dataset.train), self.dataset.num_train_cams, self.device)
        if self.start_epoch == 0 and self.wants_bn_calibration():
            LOG.info("calibrating BatchNorm statistics on the training images (train.calibrate_bn=%s)", cfg.train.calibrate_bn)
            calibrate_batchnorm(self.model, self.dataset.train, eval_transform(cfg.data), cfg.eval.batch_size,
                                cfg.data.workers, self.device)
        for epoch in range(self.start_epoch, cfg.train.epochs):
            row = self.run_epoch(epoch)
            self.history.append(row)
            write_metrics(self.history, self.run_dir)
            self.save(epoch + 1, row)
        if self.history:
            plot_training_curves(self.run_dir)
        return TrainResult(self.method.evaluation_model(self.model), self.history, self.run_dir)

    def run_epoch(self, epoch: int) -> dict[str, Any]:
        cfg, start = self.cfg, time.time()
        features = self.method.clustering_features()  # SpCL clusters its instance memory
        if features is None:
            features = extract_features(self.method.clustering_model(self.model), self.dataset.train,
                                        eval_transform(cfg.data), cfg.eval.batch_size, cfg.data.workers, self.device,
                                        desc=f"epoch {epoch + 1} features")
        features = features.cpu()
        if not torch.isfinite(features).all():
            raise UserError(f"epoch {epoch + 1}: the model produced NaN/inf features; lower optim.lr or check the weights")
        camids = torch.tensor([s.camid for s in self.dataset.train])
        clusters = cluster_epoch(features, camids, cfg.cluster, self.previous_labels)
        self.previous_labels, stats = clusters.labels, clusters.stats
        labels = torch.as_tensor(clusters.labels, dtype=torch.long)
        agreement = label_agreement(labels, self.dataset)
        LOG.info("epoch %d/%d pseudo labels: %s%s", epoch + 1, cfg.train.epochs, clusters.text(),
                 "".join(f", {k} {v:.3f}" for k, v in agreement.items()))
        if clusters.warning:
            LOG.warning("epoch %d/%d: %s", epoch + 1, cfg.train.epochs, clusters.warning)
        data = EpochData(epoch, features, labels, camids, stats.num_clusters, clusters.distance, clusters.eps)
        self.method.start_epoch(data, self.model)
        losses = self.train_steps(epoch, self.method.sampling_labels(data))
        self.scheduler.step()
        row: dict[str, Any] = {"epoch": epoch + 1, "clusters": stats.num_clusters, "outliers": stats.num_outliers,
                               **losses, **agreement, "lr": self.optimizer.param_groups[0]["lr"],
                               "cluster_sizes": stats.to_dict(), **clusters.metrics(),
                               **self.method.end_epoch(epoch, self.run_dir)}
        if self.should_evaluate(epoch):
            # evaluation must not move the random streams: a run that evaluates at other epochs (eval_every)
            # or is resumed trains exactly as one that does not (the loaders draw their seeds from torch's RNG)
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                result = evaluate_model(self.method.evaluation_model(self.model), self.dataset, cfg.data, cfg.eval,
                                        self.device)
            row.update({"mAP": 100 * result.mAP, "top1": 100 * result.cmc[0], "top5": 100 * result.cmc[4],
                        "top10": 100 * result.cmc[9]})
        row["seconds"] = time.time() - start
        LOG.info("epoch %d/%d done in %.0fs: %s", epoch + 1, cfg.train.epochs, row["seconds"],
                 ", ".join(f"{k} {row[k]:.4g}" for k in ("loss", "mAP", "top1", "top5") if k in row))
        return row

    def wants_bn_calibration(self) -> bool:
        mode = self.cfg.train.calibrate_bn
        if mode not in ("auto", "always", "never"):
            raise UserError(f"train.calibrate_bn must be auto, always or never, not '{mode}'")
        random_init = not (self.cfg.model.weights or self.cfg.model.pretrained)
        return mode == "always" or (mode == "auto" and random_init)

    def should_evaluate(self, epoch: int) -> bool:
        if not (self.dataset.query and self.dataset.gallery):
            return False
        every = self.cfg.train.eval_every
        return epoch + 1 == self.cfg.train.epochs or (every > 0 and (epoch + 1) % every == 0)

    def train_steps(self, epoch: int, labels: torch.Tensor) -> dict[str, float]:
        cfg = self.cfg
        keep = (labels >= 0).nonzero().flatten().tolist()
        samples = [self.dataset.train[i] for i in keep]
        loader = InfiniteIdentityLoader(samples, labels[keep].tolist(), train_transform(cfg.data), cfg.data.batch_size,
                                        cfg.data.num_instances, cfg.data.workers, seed=cfg.train.seed * 1000 + epoch,
                                        num_views=self.method.num_views,
                                        weak_transform=eval_transform(cfg.data) if self.method.weak_view else None,
                                        singletons_once=self.method.singletons_once)
        iters = cfg.train.iters or max(1, math.ceil(len(samples) / cfg.data.batch_size))
        keep_index = torch.as_tensor(keep)  # loader position -> row of the training list (moves with the batch)
        totals: dict[str, float] = {}
        self.model.train()
        bar = tqdm(range(iters), desc=f"epoch {epoch + 1} train", leave=False, disable=None, unit="step")
        self._synchronize()
        start = time.perf_counter()  # training steps only: batch loading, forward, backward, update
        for step in bar:
            images, batch_labels, camids, positions = loader.next()
            index = keep_index[positions]
            batch = Batch.from_loader(images, batch_labels, camids, index, self.device, weak=self.method.weak_view)
            out = self.train_step(batch, epoch, step)
            for key, value in {"loss": out.loss.item(), **out.logs}.items():
                totals[key] = totals.get(key, 0.0) + value
            if self.scaler.is_enabled():
                totals.setdefault("amp_skipped_steps", 0.0)
            bar.set_postfix(loss=f"{out.loss.item():.3f}")
        self._synchronize()
        seconds = time.perf_counter() - start
        means = {k: v / iters for k, v in totals.items() if k != "amp_skipped_steps"}
        if "amp_skipped_steps" in totals:  # a count, not a mean
            means["amp_skipped_steps"] = totals["amp_skipped_steps"]
        return {**means, "train_seconds": seconds, "seconds_per_step": seconds / iters}

    def train_step(self, batch: Batch, epoch: int, step: int) -> StepOutput:
        """One optimiser step on a batch already on the device: the method's losses under the run's autocast
        (``train.amp*``), backward (loss scaled for float16), optimiser step, then the method's state updates."""
        with self.precision.autocast():
            out = self.method.training_step(self.model, batch, epoch, step)
        if not torch.isfinite(out.loss):
            raise UserError(f"epoch {epoch + 1} step {step + 1}: the loss is {out.loss.item()}; "
                            f"lower optim.lr (now {self.cfg.optim.lr}) or check the data")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(out.loss).backward()
        self.scaler.step(self.optimizer)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.update()
            if self.scaler.get_scale() < scale:  # float16 gradients overflowed: the scaler skipped this step
                out.logs["amp_skipped_steps"] = 1.0
        self.method.after_step(out)
        return out

    def _synchronize(self) -> None:
        """Wait for queued GPU work, so that step timings are real."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def save(self, epoch: int, row: dict[str, Any]) -> None:
        ckpt_dir = self.run_dir / "checkpoints"
        improved = "mAP" in row and row["mAP"] > self.best_map
        if improved:
            self.best_map = row["mAP"]
        state = self.state(epoch)
        if epoch % max(self.cfg.train.save_every, 1) == 0 or epoch == self.cfg.train.epochs:
            save_checkpoint(state, ckpt_dir / "last.pth")
        if improved:
            save_checkpoint(state, ckpt_dir / "best.pth")


def train(cfg: Config, dataset: ReidDataset, output: str | Path, model: ReidModel | None = None,
          resume: bool = False, log_to_stderr: bool = True) -> TrainResult:
    """Train ``cfg``'s method on ``dataset``, writing everything into ``output``.

    With ``resume`` the run continues from ``output/checkpoints/last.pth``.
    """
    run_dir = Path(output)
    last = run_dir / "checkpoints" / "last.pth"
    if resume and not last.is_file():
        raise UserError(f"cannot resume: {last} does not exist (was the run started with --output {run_dir}?)")
    if not resume and last.is_file():
        raise UserError(f"{run_dir} already holds a run ({last}); pass --resume to continue it or choose another --output")
    run_dir.mkdir(parents=True, exist_ok=True)
    setup_logging(run_dir / "train.log", verbose=log_to_stderr)
    dump_config(cfg, run_dir / "config.yaml")
    trainer = Trainer(cfg, dataset, run_dir, model)
    if resume:
        trainer.resume(last)
    return trainer.fit()


__all__ = ["Trainer", "TrainResult", "train", "model_from_config", "config_from_dict", "resolve_device"]
