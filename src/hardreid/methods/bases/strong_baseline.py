"""OpenUnReID's strong clustering baseline (``tools/strong_baseline``) as a base method, ``strong_baseline``.

SHNG's Table 1 "baseline" (Market 70.5 / 87.9, Duke 54.7 / 72.9) is this baseline "provided by [Ge et al.,
2020]" (SHNG Sec. 4.3). As its official config (``tools/strong_baseline/config.yaml``) and code
(``openunreid/apis/runner.py``, ``models/builder.py``, ``models/losses/{classification,triplet}.py``):

- pseudo labels every epoch from the network's normalised features (k-reciprocal Jaccard k1 30 / k2 6,
  DBSCAN eps 0.6 / min_samples 4), outliers left out (``use_outliers: False``), cluster centres = the
  normalised means (``norm_center``);
- a classifier without bias on the BatchNorm-neck output (unnormalised, no temperature): logits
  ``f . w_k``. Officially it has one row per training image, and at each label update the first Nc rows
  are set to the centres (``initialize_centers``) and the logits are cut to the epoch's Nc classes
  (``results["prob"][:, :num_pids]``); the other rows never reach a loss. Here the classifier is one
  fresh Nc x D parameter per epoch initialised with the centres: the same computation. Its optimiser
  (Adam, the re-ID lr and weight decay) is new every epoch, and the re-ID optimiser's state is cleared
  (``reset_optim=True``, ``strong_baseline.reset_optimizer``);
- L = CE + softmax triplet (``TRAIN.LOSS.losses``, weights 1 / 1): ``CrossEntropyLoss`` with label
  smoothing 0.1 over the Nc classes, and ``SoftmaxTripletLoss`` with margin 0 on the *pooled* features
  before the neck (``triplet_key="pooling"``): Euclidean distances, hardest positive and negative in the
  batch, ``-log softmax(d_ap, d_an)[an]``. As officially (single process: ``all_emb = emb.detach()``) the
  distances run from each feature to the *detached* batch, so the gradient reaches the anchor side only;
- sampler: ``multi_camera`` (its ``DistributedJointIdentitySampler`` follows RandomMultipleGallerySampler),
  16 images per GPU x 4 GPUs, BatchNorm per GPU (``samples_per_bn`` 16 = ``samples_per_gpu``: sync BN off),
  constant lr 3.5e-4 (``lr_scheduler: null``), 50 x 400: see ``configs/strong_baseline/``.

Generators compose as on the other bases: ``prototypes()`` are the classifier rows (constants), and the
cluster logits (where ``hpf`` makes them harder) are those of the classifier with temperature 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...memory import cluster_centroids
from ..contract import BaseMethod, EpochData, StepContext
from ..registry import register_base


def softmax_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """OpenUnReID's ``SoftmaxTripletLoss`` (batch hard): mean of ``-m log s_ap - (1 - m) log s_an``,
    ``s = softmax(d_ap, d_an)``, d Euclidean from each feature to the detached batch (the official
    single-process ``all_emb = emb.detach()``); the masks add -/+9999 as the official ``_batch_hard``."""
    emb = features.float()
    ref = emb.detach()
    squared = (emb * emb).sum(1, keepdim=True) + (ref * ref).sum(1)[None, :] - 2 * emb @ ref.t()
    dist = squared.clamp(min=1e-12).sqrt()
    same = (labels[:, None] == labels[None, :]).to(dist.dtype)
    hardest_positive = (dist - 9999.0 * (1 - same)).max(dim=1).values
    hardest_negative = (dist + 9999.0 * same).min(dim=1).values
    log_p = torch.stack([hardest_positive, hardest_negative], dim=1).log_softmax(dim=1)
    return (-margin * log_p[:, 0] - (1 - margin) * log_p[:, 1]).mean()


@register_base("strong_baseline")
class StrongBaseline(BaseMethod):
    """Classifier initialised from the cluster centres + label-smoothed CE + softmax triplet (OpenUnReID)."""

    name = "strong_baseline"
    sampler = "multi_camera"

    def __init__(self, cfg, device: torch.device) -> None:
        super().__init__(cfg, device)
        # strong_baseline.label_smoothing and triplet_margin: checked with the config
        self.temperature = 1.0  # logits f . w_k of the unnormalised neck output, no temperature
        self.reset_optimizer = cfg.strong_baseline.reset_optimizer
        self.classifier: nn.Parameter | None = None
        self.optimizer: torch.optim.Optimizer | None = None

    def start_epoch(self, data: EpochData, model: nn.Module) -> None:
        super().start_epoch(data, model)
        features, labels = data.features.to(self.device).float(), data.labels.to(self.device)
        centres = cluster_centroids(F.normalize(features, dim=1), labels, data.num_clusters)  # norm_feat, norm_center
        self.classifier = nn.Parameter(centres)
        o = self.cfg.optim
        if o.name == "sgd":
            self.optimizer = torch.optim.SGD([self.classifier], lr=o.lr, weight_decay=o.weight_decay, momentum=0.9)
        else:
            self.optimizer = torch.optim.Adam([self.classifier], lr=o.lr, weight_decay=o.weight_decay)

    def prototypes(self) -> torch.Tensor:
        """The classifier rows w_k (Nc x D) as constants (initialised with the normalised cluster centres)."""
        assert self.classifier is not None, "start_epoch first"
        return self.classifier.detach()

    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [] if self.optimizer is None else [self.optimizer]

    def losses(self, ctx: StepContext) -> dict[str, torch.Tensor]:
        assert self.classifier is not None, "start_epoch first"
        s = self.cfg.strong_baseline
        raw = ctx.embeddings if ctx.embeddings is not None else ctx.features
        pooled = ctx.pooled if ctx.pooled is not None else raw
        labels = ctx.batch.labels
        logits = self.cluster_logits(raw, labels, self.classifier)
        return {"ce": s.ce_weight * F.cross_entropy(logits.float(), labels, label_smoothing=s.label_smoothing),
                "softmax_triplet": s.triplet_weight * softmax_triplet_loss(pooled, labels, s.triplet_margin)}
