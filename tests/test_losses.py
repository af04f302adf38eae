"""Losses: relative entropy (ACFL Eq. 7) against a hand-written KL, distance loss, the full objective (Eq. 5)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hardreid.losses import (acfl_loss, contrastive_loss, distance_loss, instance_loss, relative_entropy_loss,
                             similarity_distribution)


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relative_entropy_matches_hand_written_kl(seed):
    g = torch.Generator().manual_seed(seed)
    b, nc, d = 3 + seed, 4 + 2 * seed, 5
    anchor = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    positive = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=1)
    prototypes = 0.6 * torch.randn(nc, d, generator=g, dtype=torch.float64)  # plain means: not unit rows
    tau = 0.5
    got = relative_entropy_loss(anchor, positive, prototypes, tau)
    assert got.item() == pytest.approx(_hand_kl(anchor, positive, prototypes, tau).item(), rel=1e-5)
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
    assert total.item() == pytest.approx(ce.item() + kl.item(), rel=1e-4)
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
    assert got.item() == pytest.approx(hand.item(), rel=1e-6)
    assert got.item() == pytest.approx(torch_reading.item(), rel=1e-6)
    other = relative_entropy_loss(anchor, positive, prototypes, 0.3,
                                  direction="reverse" if direction == "forward" else "forward")
    assert abs(other.item() - got.item()) > 1e-3  # the two readings differ
    # detach_target holds the KL's target (v_i forward, v_j reverse) constant
    a, p = anchor.clone().requires_grad_(), positive.clone().requires_grad_()
    relative_entropy_loss(a, p, prototypes, 0.3, detach_target=True, direction=direction).backward()
    assert (a.grad is None) == (direction == "forward") and (p.grad is None) == (direction == "reverse")
    with pytest.raises(ValueError, match="direction"):
        relative_entropy_loss(anchor, positive, prototypes, 0.3, direction="both")
