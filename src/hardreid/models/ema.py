"""Exponential moving average ("mean teacher") of a network, updated explicitly after each optimiser step.

``theta_t <- alpha theta_t + (1 - alpha) theta_s`` for every parameter (ICE's
``_update_ema_variables``, alpha 0.999). BatchNorm running statistics either
follow their own forward passes (``ema_buffers=False``: ICE runs its teacher in
train mode, so its statistics come from the teacher's batches) or are averaged
the same way (``ema_buffers=True``: a teacher that is never run in train mode).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from .. import distributed
from ..precision import float32


class ModelEMA:
    """A frozen copy of ``model`` whose weights follow it by exponential moving average."""

    def __init__(self, model: nn.Module, momentum: float = 0.999, ema_buffers: bool = True) -> None:
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"EMA momentum must be in [0, 1], got {momentum}")
        self.module = copy.deepcopy(model)
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.momentum = momentum
        self.ema_buffers = ema_buffers

    @torch.no_grad()
    @float32
    def update(self, model: nn.Module) -> None:
        """theta_t <- alpha theta_t + (1 - alpha) theta_s (call after the optimiser step)."""
        a = self.momentum
        for t, s in zip(self.module.parameters(), model.parameters()):
            t.mul_(a).add_(s.detach(), alpha=1.0 - a)
        if self.ema_buffers:
            for t, s in zip(self.module.buffers(), model.buffers()):
                if t.is_floating_point():
                    t.mul_(a).add_(s.detach(), alpha=1.0 - a)
                else:
                    t.copy_(s)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "momentum": self.momentum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])


class LazyTeacher:
    """An EMA teacher made from the student at its first use (a method meets the model only at its hooks).

    A state loaded before that (resume) is applied when the teacher is made.
    """

    def __init__(self, momentum: float = 0.999, ema_buffers: bool = True) -> None:
        self.momentum, self.ema_buffers = momentum, ema_buffers
        self.ema: ModelEMA | None = None
        self._pending: dict[str, Any] | None = None

    def get(self, model: nn.Module) -> ModelEMA:
        if self.ema is None:
            self.ema = ModelEMA(model, self.momentum, self.ema_buffers)
            if self._pending is not None:
                self.ema.load_state_dict(self._pending)
                self._pending = None
        return self.ema

    def state_dict(self) -> dict[str, Any] | None:
        return self.ema.state_dict() if self.ema is not None else self._pending

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        if self.ema is None:
            self._pending = state
        else:
            self.ema.load_state_dict(state)


class TeacherHooks:
    """Method-component hooks shared by everything that owns an EMA teacher (ICE, the mean_teacher add-on).

    The class using it sets ``self.teacher`` (a ``LazyTeacher``) and ``self.cfg``. The teacher extracts the
    features that are clustered, is evaluated when ``ice.evaluate_teacher``, follows the student after each
    optimiser step and is saved with the checkpoint.
    """

    teacher: LazyTeacher
    cfg: Any

    def clustering_model(self, model: nn.Module) -> nn.Module:
        return self.teacher.get(model).module

    def evaluation_model(self, model: nn.Module) -> nn.Module | None:
        return self.teacher.get(model).module if self.cfg.ice.evaluate_teacher else None

    def after_step(self, ctx: Any) -> None:
        teacher = self.teacher.get(ctx.model)
        teacher.update(ctx.model)
        # a teacher run in train mode (ICE) updates its BatchNorm statistics from each process's own share of the
        # batch: every process keeps rank 0's, as the student's (one process: the first bn_chunk's)
        distributed.broadcast_buffers(teacher.module)

    def state_dict(self) -> dict[str, Any]:
        return {"teacher": self.teacher.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.teacher.load_state_dict(state.get("teacher"))
