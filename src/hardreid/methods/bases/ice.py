"""ICE (Chen, Lagadec, Bremond, "Inter-instance contrastive encoding", ICCV 2021) as a base method.

As in the official code (``examples/unsupervised_train.py``, ``ice/trainers.py``):

- an EMA teacher (alpha 0.999, updated after each optimiser step) extracts the features that
  are clustered (plain k-reciprocal Jaccard, eps 0.55) and that build the cluster centres and
  the camera-aware proxies; both stay fixed during the epoch;
- L_agnostic: cross-entropy with label smoothing 0.1 on ``<f, c_k> / tau_a`` (tau_a 0.5), f the
  student's *unnormalised* feature of view 1 (the official model returns the raw BN-neck output in
  train mode), c_k the mean teacher feature of cluster k (not renormalised): ``prototypes()``;
- L_cam: the inter-camera proxy contrastive loss with the 50 hardest negative proxies,
  beta 0.07, weight 0.5 (``CameraProxies.cross_camera_loss``), scored as the official code
  does (each feature dimension normalised across the proxies, ``ice.proxy_scoring``); the
  intra-camera term is available with weight 0 (commented out in the official code);
- L_h_ins, hard instance contrastive loss (``hard_instance_loss``): student view 1 against the
  teacher's features of view 2; the positive is the hardest (least similar) same-label teacher
  feature, the negatives every other-label teacher feature, tau_h 0.1;
- L_s_ins, soft instance consistency (``soft_instance_consistency``): KL between the teacher's
  similarity distribution of the un-augmented images (target, no gradient) and the student-teacher
  similarity distribution of the augmented views, tau_s 0.4, weight 10.

The teacher runs in train mode for its step features (batch statistics, as the official code;
its BatchNorm running statistics come from those passes; only its weights follow the student).
As officially it runs on view 1 too (``f_out_t1_ema``, unused by any loss; ``ice.teacher_on_view1``),
so its running statistics see view 1, view 2 and the un-augmented images, three updates per step.
ShuffleBN (``ice.shuffle_bn``): the teacher's inputs are permuted before its forward and its
features put back in order, so that its per-GPU BatchNorm chunks (``train.bn_chunk``) mix
identities; it changes nothing without chunks. Several processes (torchrun) shuffle the global
batch across them, and both instance losses compare each process's images with the whole batch's
teacher features, as the official loss does on the outputs of every GPU. The evaluated and saved network is the teacher
(``ice.evaluate_teacher``, as the official ``evaluator_1_ema``). The sampler is ICE's
MoreCameraSampler (``data.sampler: auto``). With ``model.camera_bn`` the teacher's train-mode passes normalise
each camera apart as the student's do, without ShuffleBN (``teacher_features``).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from ... import distributed
from ...models.camera_bn import per_camera_pool_and_embed
from ...models.ema import LazyTeacher, TeacherHooks
from ...precision import float32
from ..addons.camera_proxy import CameraProxyLoss
from ..contract import BaseMethod, EpochData, StepContext
from ..registry import register_base


def hard_instance_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1,
                       teacher_labels: torch.Tensor | None = None) -> torch.Tensor:
    """ICE's L_h_ins: ``-log exp(s_i . t_p / tau) / (exp(s_i . t_p / tau) + sum_{j: y_j != y_i} exp(s_i . t_j / tau))``

    with ``t_p`` the least similar teacher feature of the same label (the image's own other view included).
    ``teacher``, ``teacher_labels``: the columns, by default the same images as the student's rows; several
    processes pass the whole batch's teacher features (each process's rows against every column).
    """
    teacher_labels = labels if teacher_labels is None else teacher_labels
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    sims = s @ t.t()  # B x B (this process's rows x the whole batch's columns)
    same = labels[:, None] == teacher_labels[None, :]
    hardest_positive = sims.masked_fill(~same, float("inf")).min(dim=1).values
    negatives = sims.masked_fill(same, float("-inf"))
    logits = torch.cat([hardest_positive[:, None], negatives], dim=1) / temperature
    return -logits.log_softmax(dim=1)[:, 0].mean()


@float32
def soft_instance_consistency(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor,
                              temperature: float = 0.4, target_columns: torch.Tensor | None = None) -> torch.Tensor:
    """ICE's L_s_ins: KL(softmax(w w^T / tau) || softmax(s t^T / tau)), batch mean.

    ``target``: features of the un-augmented images (w); the target side is detached (stop-gradient).
    ``teacher``, ``target_columns``: the columns, by default the student's own images; several processes pass
    the whole batch's (each process's rows against every column).
    """
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    w = F.normalize(target.detach(), dim=1)
    w_columns = w if target_columns is None else F.normalize(target_columns.detach(), dim=1)
    log_p = (s @ t.t() / temperature).log_softmax(dim=1)
    q = (w @ w_columns.t() / temperature).softmax(dim=1)
    return F.kl_div(log_p, q, reduction="batchmean")


def label_smoothed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """CrossEntropyLabelSmooth: targets (1 - eps) one-hot + eps / Nc."""
    return F.cross_entropy(logits, labels, label_smoothing=epsilon)


@register_base("ice")
class ICE(TeacherHooks, BaseMethod):
    """Camera-agnostic and camera-aware proxies, hard and soft instance losses, EMA teacher."""

    name = "ice"
    sampler = "more_camera"  # ice/utils/data/sampler.py MoreCameraSampler
    num_views = 2  # batch.images (view 1) and batch.views[0] (view 2)
    weak_view = True  # batch.weak: the un-augmented image, the soft consistency target

    def __init__(self, cfg, device: torch.device) -> None:
        super().__init__(cfg, device)
        self.temperature = cfg.ice.agnostic_temperature
        self.teacher = LazyTeacher(cfg.ice.ema_momentum, ema_buffers=False)
        self.centres: torch.Tensor | None = None
        self.camera = CameraProxyLoss(cfg, device, prefix="ice_camera")  # L_cam, shared with the camera_proxy add-on

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        self.teacher.get(model)
        features, labels = data.features.to(self.device), data.labels.to(self.device)
        keep = labels >= 0
        sums = torch.zeros(data.num_clusters, features.shape[1], device=self.device)
        sums.index_add_(0, labels[keep], features[keep].float())
        counts = torch.bincount(labels[keep], minlength=data.num_clusters).clamp(min=1)
        self.centres = sums / counts[:, None]  # mean teacher feature per cluster, not renormalised (official)
        self.camera.start_epoch(data, model)

    def prototypes(self) -> torch.Tensor:
        """Cluster centres c_k: the mean teacher feature of each cluster (what the official loss uses)."""
        assert self.centres is not None, "start_epoch first"
        return self.centres

    @torch.no_grad()
    def teacher_features(self, model: nn.Module, images: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's features in train mode (batch statistics, as the official teacher), with ShuffleBN, of the
        whole batch: several processes each run the teacher on their share and gather every process's features (in
        global batch order), as the official loss sees every GPU's outputs.

        ``model.camera_bn`` (``camids`` given): the teacher normalises each camera's images of the share (and of
        each bn_chunk chunk) apart, as the student, and ShuffleBN is not applied: the camera groups decide what
        each BatchNorm sees, and shuffling would break the sampler's same-camera pairs. Its running statistics stay
        global (updated by each camera's group in turn); extraction recalibrates them per camera anyway."""
        teacher = self.teacher.get(model).module
        teacher.train()
        if camids is not None:
            return distributed.all_gather_rows(F.normalize(per_camera_pool_and_embed(teacher, images, camids)[1], dim=1))
        if not self.cfg.ice.shuffle_bn:
            return distributed.all_gather_rows(teacher(images))
        everyone = distributed.all_gather_rows(images)  # ShuffleBN shuffles the global batch across the GPUs
        order = torch.randperm(everyone.shape[0], device=images.device)  # get_shuffle_ids of ice/trainers.py
        out = distributed.all_gather_rows(teacher(distributed.rank_rows(everyone[order])))
        features = torch.empty_like(out)
        features[order] = out
        return features

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        cfg, batch = self.cfg.ice, ctx.batch
        if not batch.views or batch.weak is None:
            raise RuntimeError("ICE needs two augmented views and the un-augmented image of each batch image")
        raw = ctx.embeddings if ctx.embeddings is not None else ctx.features
        terms = {"ice_agnostic": label_smoothed_cross_entropy(self.cluster_logits(raw, batch.labels), batch.labels,
                                                              cfg.label_smoothing)}
        terms.update(self.camera.losses(ctx))
        camids = batch.camids if self.cfg.model.camera_bn else None  # camera-based BatchNorm in the teacher too
        if cfg.teacher_on_view1:  # official f_out_t1_ema: no loss uses it, but it moves the teacher's BN statistics
            self.teacher_features(ctx.model, batch.images, camids)
        teacher_view2 = self.teacher_features(ctx.model, batch.views[0], camids)  # the whole batch's
        teacher_weak = self.teacher_features(ctx.model, batch.weak, camids)
        terms["ice_hard_instance"] = cfg.instance_weight * hard_instance_loss(
            ctx.features, teacher_view2, batch.labels, cfg.instance_temperature, distributed.all_gather_rows(batch.labels))
        terms["ice_soft_instance"] = cfg.consistency_weight * soft_instance_consistency(
            ctx.features, teacher_view2, distributed.rank_rows(teacher_weak), cfg.consistency_temperature, teacher_weak)
        return terms

    def shared_state(self) -> dict:
        return {**self.state_dict(), "centres": self.centres, "camera": self.camera.shared_state()}
