"""ACFL hard person features (HPF): Eq. 1-2, Algorithm 2, registered as ``hpf``.

For each query q = s(Q(x_i)), V steps of gradient *ascent* of L_class(q, C) (Eq. 6) on a copy of the
person features, rate eta1 for the query's own person feature c_{y_i} and eta2 for the others (Eq. 2).
For InfoNCE the gradient is dL/dc_a = (p_a - [a = y_i]) q / tau with p = softmax(q.C / tau): every
step moves c_a along q only, so after any number of steps c*_a = c_a + alpha_a q with one scalar
alpha_a per (query, person) (docs/architecture.md, "ACFL"). We iterate on alpha (B x Nc):

    q.c_a^(v) = q.c_a + alpha_a^(v) |q|^2
    alpha_a^(v) = alpha_a^(v-1) + eta_a (p_a^(v-1) - [a = y_i]) / tau       (Alg. 2 lines 4 and 7)

O(B x Nc) per step and no B x Nc x D tensor. The person features are not re-normalised between steps
(neither Eq. 2 nor Alg. 2 does; the closed form relies on it). The loss then uses C* as constants:
Q(x_i).c*_a / tau = (Q(x_i).c_a + alpha_a Q(x_i).s(Q(x_i))) / tau; the gradient reaches Q(x_i) only
through its own side (Eq. 1's stop-gradient: the ascent never reaches the network).

Because it only adjusts the base's cluster logits (``BaseMethod.logit_adjusters``), HPF works on any base.
Per epoch it reports how hard the person features became (``end_epoch``): ``hpf_pos_shift``, the mean change
of s(q).c_y (the own person feature, pushed away: < 0), and ``hpf_neg_shift``, the mean over queries of the
largest change of s(q).c_a over the other person features (pulled closer: > 0); both in cosine units
(multiply by 1/tau for logits).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import Config
from ...precision import float32
from ..contract import BaseMethod, Component
from ..registry import register_hard_samples


@float32
def hard_person_feature_coefficients(query_logits: torch.Tensor, labels: torch.Tensor, query_sqnorm: torch.Tensor,
                                     temperature: float, steps: int, lr_positive: float,
                                     lr_negative: float) -> torch.Tensor:
    """alpha (B x Nc) with c*_a = c_a + alpha_a q after V = ``steps`` ascent steps (ACFL Eq. 2, Alg. 2).

    ``query_logits`` = q.c_a / tau of the plain person features (B x Nc), ``query_sqnorm`` = |q|^2 (B).
    ``lr_positive`` = eta1 (a = y_i), ``lr_negative`` = eta2 (a != y_i); ``labels`` -1: no positive person
    feature (SpCL's un-clustered instances), every person feature is treated as a negative.
    """
    query_logits = query_logits.detach().float()
    # label -1 (SpCL's un-clustered instances: the positive is not a person feature): every c_a is a negative
    positive = F.one_hot(labels.clamp(min=0), query_logits.shape[1]).to(query_logits.dtype)
    positive = positive * (labels >= 0).unsqueeze(1).to(query_logits.dtype)
    rates = lr_negative + (lr_positive - lr_negative) * positive  # eta per (query, person)
    sqnorm = query_sqnorm.detach().float().unsqueeze(1)
    alpha = torch.zeros_like(query_logits)
    for _ in range(steps):  # v = 1..V
        p = torch.softmax(query_logits + alpha * sqnorm / temperature, dim=1)
        alpha = alpha + rates * (p - positive) / temperature  # c_a <- c_a + eta dL/dc_a, dL/dc_a = (p_a - [a=y]) q / tau
    return alpha


def hard_person_features(query: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, temperature: float,
                         steps: int, lr_positive: float, lr_negative: float) -> torch.Tensor:
    """C* of every query (B x Nc x D): for inspection and small sizes only; training uses the closed form."""
    q = query.detach().float()
    logits = q @ prototypes.float().t() / temperature
    alpha = hard_person_feature_coefficients(logits, labels, (q * q).sum(1), temperature, steps, lr_positive,
                                             lr_negative)
    return prototypes.float().unsqueeze(0) + alpha.unsqueeze(2) * q.unsqueeze(1)


@register_hard_samples("hpf")
class HardPersonFeatures(Component):
    """Replaces the base's person features by hard ones in L_class (ACFL Eq. 6), per query."""

    name = "hpf"

    def __init__(self, cfg: Config, device: torch.device) -> None:
        super().__init__(cfg, device)
        a = cfg.acfl  # hpf_mode, hpf_steps: checked with the config
        self.steps = a.hpf_steps
        # Table 3: "positive" = (c*_y, {c_a}): only c_y moves (eta2 = 0); "negative" = (c_y, {c*_a}) (eta1 = 0).
        self.lr_positive = a.hpf_lr_positive if a.hpf_mode in ("both", "positive") else 0.0
        self.lr_negative = a.hpf_lr_negative if a.hpf_mode in ("both", "negative") else 0.0
        self.temperature = cfg.memory.temperature

    @torch.no_grad()
    def record(self, alpha: torch.Tensor, query: torch.Tensor, labels: torch.Tensor) -> None:
        """Accumulate the cosine changes alpha_a |s(q)|^2 of the own and of the most-raised other person feature."""
        shift = alpha * (query * query).sum(1, keepdim=True)
        has_positive = labels >= 0
        own = F.one_hot(labels.clamp(min=0), alpha.shape[1]).bool() & has_positive.unsqueeze(1)
        self.stats.add("hpf_pos_shift", shift[own].sum(), has_positive.sum())
        if alpha.shape[1] > 1:
            others = shift.masked_fill(own, float("-inf")).max(dim=1).values
            self.stats.add("hpf_neg_shift", others.sum(), others.numel())

    def attach(self, base: BaseMethod) -> None:
        self.temperature = base.temperature
        base.logit_adjusters.append(self.adjust_logits)

    @float32
    def adjust_logits(self, features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor,
                      logits: torch.Tensor) -> torch.Tensor:
        """Q(x_i).c*_a / tau = logits + alpha_a Q(x_i).s(Q(x_i)) / tau (B x Nc)."""
        tau = self.temperature
        query = features.detach().float()  # s(Q(x_i)), Eq. 1
        alpha = hard_person_feature_coefficients(logits, labels, (query * query).sum(1), tau, self.steps,
                                                 self.lr_positive, self.lr_negative)
        self.record(alpha, query, labels)
        return logits.float() + alpha * (features.float() * query).sum(1, keepdim=True) / tau
