"""Loss functions shared by the methods (docs/architecture.md, "What a method is"), each a pure function of tensors.

ACFL: the class-level contrastive loss (Eq. 6), the relative-entropy instance loss (Eq. 7), the
distance loss of Table 2 and their sum, the full objective (Eq. 5).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .config import choices_of
from .precision import float32

ALIGNMENTS = choices_of("acfl.alignment")
RE_DIRECTIONS = choices_of("acfl.re_direction")


def contrastive_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """InfoNCE over person features (ACFL Eq. 6, Cluster Contrast Eq. 2): cross-entropy of q.c_a / tau."""
    return F.cross_entropy(logits.float(), labels)


def similarity_distribution(features: torch.Tensor, prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """log v(f): v(f)_a = exp(f.c_a / tau) / sum_b exp(f.c_b / tau) (ACFL Section 3.3), as log-probabilities."""
    return F.log_softmax(features.float() @ prototypes.float().t() / temperature, dim=1)


@float32
def relative_entropy_loss(anchor: torch.Tensor, positive: torch.Tensor, prototypes: torch.Tensor,
                          temperature: float, detach_target: bool = False, direction: str = "forward") -> torch.Tensor:
    """L_ins = KL(v(Q(x_i)) || v(Q(x_j))), mean over the batch (ACFL Eq. 7).

    ``anchor`` = Q(x_i), ``positive`` = Q(x_j) or Q(x_j*); ``prototypes`` = the plain person features C.
    ``direction`` (``acfl.re_direction``): ``forward`` = KL(v_i || v_j) as Eq. 7 reads; ``reverse`` =
    KL(v_j || v_i), what ``F.kl_div(log v_i, v_j)`` (input = the anchor, target = the positive) computes.
    Eq. 5 puts no stop-gradient on either side; ``detach_target`` makes the KL target (the distribution the
    expectation is taken under: v_i forward, v_j reverse; as ICE's KL term) a constant.
    """
    if direction not in RE_DIRECTIONS:
        raise ValueError(f"unknown relative-entropy direction '{direction}'; choose one of {', '.join(RE_DIRECTIONS)}")
    log_p = similarity_distribution(anchor, prototypes, temperature)
    log_q = similarity_distribution(positive, prototypes, temperature)
    if direction == "reverse":
        log_p, log_q = log_q, log_p
    if detach_target:
        log_p = log_p.detach()
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)  # KL(p || q)


@float32
def distance_loss(anchor: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """L_d = 2 (1 - Q(x_i).Q(x_j)), mean over the batch (ACFL Table 2, "Base.+distance")."""
    return (2.0 * (1.0 - (anchor.float() * positive.float()).sum(dim=1))).mean()


def instance_loss(kind: str, anchor: torch.Tensor, positive: torch.Tensor, prototypes: torch.Tensor,
                  temperature: float, detach_target: bool = False, direction: str = "forward") -> torch.Tensor:
    """L_ins by name: ``re`` (Eq. 7, in ``direction``) or ``distance`` (L_d of Table 2)."""
    if kind == "re":
        return relative_entropy_loss(anchor, positive, prototypes, temperature, detach_target, direction)
    if kind == "distance":
        return distance_loss(anchor, positive)
    raise ValueError(f"unknown instance loss '{kind}'; choose one of {', '.join(ALIGNMENTS)}")


def acfl_loss(class_logits: torch.Tensor, labels: torch.Tensor, anchor: torch.Tensor, positive: torch.Tensor,
              prototypes: torch.Tensor, temperature: float, alignment: str = "re",
              detach_target: bool = False) -> torch.Tensor:
    """L_a = L_class(Q(x_i), C*) + L_ins(Q(x_i), Q(x_j*)) (ACFL Eq. 5).

    ``class_logits`` = Q(x_i).c*_a / tau (with the hard person features), ``positive`` = Q(x_j*).
    """
    return contrastive_loss(class_logits, labels) + instance_loss(alignment, anchor, positive, prototypes,
                                                                 temperature, detach_target)
