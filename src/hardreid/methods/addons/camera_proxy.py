"""Add-on ``camera_proxy``: ICE's camera-aware proxy loss on any base (ACFL-C: ``L_a + mu L_cross``, mu 0.5).

Proxies (``memory.CameraProxies``) are built each epoch from the clustered features and the DBSCAN
labels (``EpochData``), one per (pseudo identity, camera); a batch image takes its DBSCAN label
through ``batch.indices``, so the add-on works whatever labels the base samples with (SpCL's
un-clustered instances, DBSCAN outliers there, have no proxy and are left out of this term).
Weights and temperature: ``ice.camera_weight`` (mu, 0.5), ``ice.intra_camera_weight`` (0),
``ice.camera_temperature`` (0.07), ``ice.hard_negatives`` (50), scores ``ice.proxy_scoring`` (the
official per-dimension normalisation by default, see ``memory/camera_proxies.py``). The ICE base uses
this class for its L_cam.
"""

from __future__ import annotations

import torch
from torch import nn

from ... import distributed
from ...errors import UserError
from ...memory import CameraProxies
from ..contract import BaseMethod, Component, EpochData, StepContext
from ..registry import register_hard_samples


@register_hard_samples("camera_proxy")
class CameraProxyLoss(Component):
    """Inter-camera (and optionally intra-camera) proxy contrastive loss over camera-aware proxies."""

    name = "camera_proxy"

    def __init__(self, cfg, device: torch.device, prefix: str = "camera_proxy") -> None:
        super().__init__(cfg, device)
        self.prefix = prefix  # ice.proxy_scoring: checked with the config
        self.proxies: CameraProxies | None = None
        self.labels: torch.Tensor | None = None

    def attach(self, base: BaseMethod) -> None:
        if base.name == "ice":
            raise UserError("method.hard_samples: camera_proxy is already part of the ICE base (ice.camera_weight)")

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        self.labels = data.labels.to(self.device)
        self.proxies = CameraProxies.from_clusters(data.features.to(self.device), self.labels, data.camids.to(self.device))

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        assert self.proxies is not None and self.labels is not None, "start_epoch first"
        ice = self.cfg.ice
        labels = self.labels[ctx.batch.indices]
        clustered = labels >= 0
        features, labels, camids = ctx.features[clustered], labels[clustered], ctx.batch.camids[clustered]
        everyone = distributed.all_gather_cat(camids)  # the whole batch's cameras: per-camera means over all processes
        if features.shape[0] == 0:
            return {self.prefix: ctx.features.sum() * 0.0}
        terms = {}
        if ice.camera_weight:
            terms[self.prefix] = ice.camera_weight * self.proxies.cross_camera_loss(
                features, labels, camids, ice.camera_temperature, ice.hard_negatives, ice.proxy_scoring, everyone)
        if ice.intra_camera_weight:
            terms[f"{self.prefix}_intra"] = ice.intra_camera_weight * self.proxies.intra_camera_loss(
                features, labels, camids, ice.camera_temperature, everyone)
        return terms

    def shared_state(self) -> dict:
        return {} if self.proxies is None else self.proxies.state_dict()
