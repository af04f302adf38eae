"""Add-on ``mean_teacher``: an EMA teacher extracts the features that are clustered and initialise
the memory (``clustering_model``), as ICE does and ACFL's student-teacher variant.

``theta_t <- alpha theta_t + (1 - alpha) theta_s`` after each optimiser step (``ice.ema_momentum``,
0.999 as ICE), BatchNorm running statistics averaged the same way (the teacher never runs in train
mode here); saved and restored with the checkpoint.
"""

from __future__ import annotations


import torch

from ...errors import UserError
from ...models.ema import LazyTeacher, TeacherHooks
from ..contract import BaseMethod, Component
from ..registry import register_hard_samples


@register_hard_samples("mean_teacher")
class MeanTeacher(TeacherHooks, Component):
    """EMA teacher as the clustering network."""

    name = "mean_teacher"

    def __init__(self, cfg, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.teacher = LazyTeacher(cfg.ice.ema_momentum, ema_buffers=True)

    def attach(self, base: BaseMethod) -> None:
        if base.name == "ice":
            raise UserError("method.hard_samples: mean_teacher is already part of the ICE base")
        if base.name == "spcl":
            raise UserError("method.hard_samples: mean_teacher has no effect on SpCL, which clusters its instance memory")
