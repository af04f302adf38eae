"""Losses: relative entropy (ACFL Eq. 7) against a hand-written KL, distance loss, the full objective (Eq. 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hardreid.losses import (acfl_loss, contrastive_loss, distance_loss, instance_loss, relative_entropy_loss,
                             similarity_distribution)

from rounding import U32


def _hand_kl(anchor: torch.Tensor, positive: torch.Tensor, prototypes: torch.Tensor, tau: float) -> torch.Tensor:
    """KL(v(a) || v(p)) = sum_a v_a(a) log(v_a(a) / v_a(p)), averaged over the batch, written out in loops."""
    total = 0.0
    for a, p in zip(anchor.tolist(), positive.tolist()):
        za = [math.exp(sum(x * c for x, c in zip(a, row)) / tau) for row in prototypes.tolist()]
        zp = [math.exp(sum(x * c for x, c in zip(p, row)) / tau) for row in prototypes.tolist()]
        va = [z / sum(za) for z in za]
        vp = [z / sum(zp) for z in zp]
        total += sum(x * math.log(x / y) for x, y in zip(va, vp))
    return torch.tensor(total / len(anchor))


def _kl_tolerance(anchor: torch.Tensor, positive: torch.Tensor, prototypes: torch.Tensor, tau: float) -> float:
    """How far relative_entropy_loss (float32 inside: similarity_distribution casts) may be from a float64 value.

    Each logit f.c / tau is a d-term dot product, within d u |f| |c| / tau (Cauchy-Schwarz) plus u |z| for the
    division; a log-softmax over Nc logits moves by at most twice the largest logit error, plus (Nc + 3) u
    (|z|max + log Nc) for its own exp, sum and log. KL = sum_a p_a (log p_a - log q_a) then moves by at most its
    two log-softmax errors, plus |log p - log q|max times that error (through p = exp(log p)), plus the Nc-term sum
    (Nc u |log p - log q|max); the batch mean adds B u KL. The CPU only changes the order of these sums."""
    a, p, c = anchor.double(), positive.double(), prototypes.double()
    b, nc, d = a.shape[0], c.shape[0], c.shape[1]
    z = torch.cat([a, p]) @ c.t() / tau
    e_z = d * U32 * float(torch.cat([a, p]).norm(dim=1).max() * c.norm(dim=1).max()) / tau + U32 * float(z.abs().max())
    e_log = 2 * e_z + (nc + 3) * U32 * (float(z.abs().max()) + math.log(nc))
    gap = float((z[:b].log_softmax(1) - z[b:].log_softmax(1)).abs().max())
    kl = float(relative_entropy_loss(a, p, c, tau))
    return 2 * e_log + gap * e_log + nc * U32 * gap + b * U32 * abs(kl)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relative_entropy_matches_hand_written_kl(seed):
    g = torch.Generator().manual_seed(seed)
    b, nc, d = 3 + seed, 4 + 2 * seed, 5
    anchor = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    positive = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    prototypes = 0.6 * torch.randn(nc, d, generator=g, dtype=torch.float64)  # plain means: not unit rows
    tau = 0.5
    got = relative_entropy_loss(anchor, positive, prototypes, tau)
    hand = _hand_kl(anchor, positive, prototypes, tau).item()
    assert got.item() == pytest.approx(hand, abs=_kl_tolerance(anchor, positive, prototypes, tau), rel=0)
    # both sides the same computation: log p == log q bit for bit, KL exactly 0 on every CPU
    assert relative_entropy_loss(anchor, anchor, prototypes, tau).item() == pytest.approx(0.0, abs=1e-7)


def test_relative_entropy_gradient_reaches_both_sides_unless_target_detached():
    torch.manual_seed(0)
    prototypes = F.normalize(torch.randn(6, 8), dim=1)
    anchor = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    positive = F.normalize(torch.randn(4, 8), dim=1).requires_grad_()
    relative_entropy_loss(anchor, positive, prototypes, 0.05).backward()
    assert anchor.grad.abs().sum() > 0 and positive.grad.abs().sum() > 0
    anchor.grad = positive.grad = None
    value = relative_entropy_loss(anchor, positive, prototypes, 0.05, detach_target=True)
    value.backward()
    assert anchor.grad is None and positive.grad.abs().sum() > 0
    assert value.item() == pytest.approx(relative_entropy_loss(anchor, positive, prototypes, 0.05).item())


def test_similarity_distribution_is_a_softmax_over_person_features():
    f = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = similarity_distribution(f, c, 0.5).exp()
    e = math.exp(2.0)
    # the logits 2 and 0 are exact; log-sum-exp of two terms, the subtraction and exp: within ~4 u = 2.4e-7 relative
    assert v.tolist()[0] == pytest.approx([e / (e + 1), 1 / (e + 1)])


def test_distance_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # pair 1 orthogonal: 2 (1 - 0) = 2; pair 2 equal: 0; mean 1; and |a - b|^2 for unit rows
    assert distance_loss(a, b).item() == pytest.approx(1.0)
    assert distance_loss(a, b).item() == pytest.approx(((a - b) ** 2).sum(1).mean().item())
    assert instance_loss("distance", a, b, torch.eye(2), 0.05).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown instance loss"):
        instance_loss("cosine", a, b, torch.eye(2), 0.05)


def test_full_objective_is_class_plus_instance_term():
    torch.manual_seed(1)
    logits, labels = torch.randn(4, 5), torch.tensor([0, 1, 2, 4])
    anchor, positive = F.normalize(torch.randn(4, 3), dim=1), F.normalize(torch.randn(4, 3), dim=1)
    prototypes = torch.randn(5, 3)
    ce = -torch.log_softmax(logits, 1)[torch.arange(4), labels].mean()
    assert contrastive_loss(logits, labels).item() == pytest.approx(ce.item(), rel=1e-6)
    total = acfl_loss(logits, labels, anchor, positive, prototypes, 0.05)
    kl = _hand_kl(anchor.double(), positive.double(), prototypes.double(), 0.05)
    # the cross-entropy is the same float32 computation on both sides (F.cross_entropy = -log_softmax[label].mean)
    # up to a 4-term mean (4 u |ce|); the KL within _kl_tolerance of the float64 one
    tol = _kl_tolerance(anchor, positive, prototypes, 0.05) + 8 * U32 * abs(ce.item())
    assert total.item() == pytest.approx(ce.item() + kl.item(), abs=tol, rel=0)
    dist = acfl_loss(logits, labels, anchor, positive, prototypes, 0.05, alignment="distance")
    assert dist.item() == pytest.approx(ce.item() + distance_loss(anchor, positive).item(), rel=1e-6)


@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_relative_entropy_direction_against_kl_div_and_a_hand_written_kl(direction):
    """acfl.re_direction: forward = KL(v_i || v_j) (Eq. 7 as written); reverse = F.kl_div(log v_i, v_j) = KL(v_j || v_i)."""
    g = torch.Generator().manual_seed(4)
    anchor = F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=1)
    positive = F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=1)
    prototypes = 0.7 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    got = relative_entropy_loss(anchor, positive, prototypes, 0.3, direction=direction)
    v_i = (anchor @ prototypes.t() / 0.3).softmax(1)
    v_j = (positive @ prototypes.t() / 0.3).softmax(1)
    if direction == "forward":
        hand = _hand_kl(anchor, positive, prototypes, 0.3)
        torch_reading = F.kl_div(v_j.log(), v_i, reduction="batchmean")  # input log v_j, target v_i
    else:
        hand = _hand_kl(positive, anchor, prototypes, 0.3)
        torch_reading = F.kl_div(v_i.log(), v_j, reduction="batchmean")  # input log v_i, target v_j
    tol = _kl_tolerance(anchor, positive, prototypes, 0.3)
    assert got.item() == pytest.approx(hand.item(), abs=tol, rel=0)
    assert got.item() == pytest.approx(torch_reading.item(), abs=tol, rel=0)  # F.kl_div in float64: within 1e-15
    other = relative_entropy_loss(anchor, positive, prototypes, 0.3,
                                  direction="reverse" if direction == "forward" else "forward")
    assert abs(other.item() - got.item()) > 1e-3  # the two readings differ
    # detach_target holds the KL's target (v_i forward, v_j reverse) constant
    a, p = anchor.clone().requires_grad_(), positive.clone().requires_grad_()
    relative_entropy_loss(a, p, prototypes, 0.3, detach_target=True, direction=direction).backward()
    assert (a.grad is None) == (direction == "forward") and (p.grad is None) == (direction == "reverse")
    with pytest.raises(ValueError, match="direction"):
        relative_entropy_loss(anchor, positive, prototypes, 0.3, direction="both")


@pytest.mark.filterwarnings("ignore:reduction")
@pytest.mark.parametrize("bug", ["mean_over_person_features", "no_temperature"])
def test_kl_checks_catch_a_wrong_relative_entropy(bug, monkeypatch):
    """Negative twin of the float64 KL comparisons: KL averaged over B x Nc instead of B (kl_div's "mean"), or the
    similarities not divided by the temperature."""
    from hardreid import losses

    if bug == "mean_over_person_features":
        kl_div = F.kl_div
        monkeypatch.setattr(losses.F, "kl_div", lambda *args, **kwargs: kl_div(*args, **{**kwargs, "reduction": "mean"}))
    else:
        distribution = losses.similarity_distribution
        monkeypatch.setattr(losses, "similarity_distribution", lambda f, c, t: distribution(f, c, 1.0))
    g = torch.Generator().manual_seed(4)
    anchor = F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=1)
    positive = F.normalize(torch.randn(5, 6, generator=g, dtype=torch.float64), dim=1)
    prototypes = 0.7 * torch.randn(4, 6, generator=g, dtype=torch.float64)
    got = relative_entropy_loss(anchor, positive, prototypes, 0.3).item()
    monkeypatch.undo()
    tol = _kl_tolerance(anchor, positive, prototypes, 0.3)
    assert abs(got - _hand_kl(anchor, positive, prototypes, 0.3).item()) > 100 * tol
