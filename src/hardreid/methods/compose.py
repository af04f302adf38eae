"""A method as the trainer runs it: one base and its components (``method.hard_samples``), called in that order at
every hook of ``contract.py``; ``build_method`` builds it from the config's names through the registry."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..config import Config
from ..errors import UserError
from . import registry
from .contract import BaseMethod, Batch, Component, EpochData, StepContext, StepOutput


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


def build_method(cfg: Config, device: torch.device) -> ComposedMethod:
    """The configured base and hard-sample generators (``method.base``, ``method.hard_samples``)."""
    base_builder = registry.base(cfg.method.base)
    builders = registry.hard_samples(cfg.method.hard_samples)
    return ComposedMethod(base_builder(cfg, device), [build(cfg, device) for build in builders])


Method = ComposedMethod  # the trainer's view of a method

__all__ = ["ComposedMethod", "Method", "build_method", "gather_step"]
