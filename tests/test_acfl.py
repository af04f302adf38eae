"""ACFL: instance / queue memory vs direct loops, hard person features vs autograd (Alg. 2), hard positive
instances (Alg. 3) leave the model untouched, every configs/acfl YAML builds and steps, training resumes exactly."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hardreid.config import Config, apply_dict, load_config
from hardreid.data.datasets import load_dataset
from hardreid.errors import UserError
from hardreid.methods.generators.hpf import hard_person_features
from hardreid.methods.generators.hpi import hard_positive_instances, select_positives
from hardreid.losses import relative_entropy_loss
from hardreid.memory import ClusterMemory, InstanceMemory, QueueMemory
from hardreid.models import build_model
import hardreid.methods as M
from hardreid.methods.bases.cluster_contrast import ClusterContrast
from hardreid.runs import train

from conftest import tiny_config
from rounding import U32, forward_error, normalize_error, sum_error

ACFL = Path(__file__).resolve().parents[1] / "configs" / "acfl"
CPU = torch.device("cpu")


class TinyNet(nn.Module):
    """Conv + BatchNorm2d + Linear + BatchNorm1d on 3 x 8 x 4 images, L2-normalised output."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.fc, self.neck = nn.Linear(4 * 4 * 2, dim), nn.BatchNorm1d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.adaptive_avg_pool2d(F.relu(self.bn(self.conv(x))), (4, 2)).flatten(1)
        return F.normalize(self.neck(self.fc(h)), dim=1)


def _clustered(n: int, clusters: int, dim: int, seed: int, outliers: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % clusters
    labels[torch.randperm(n, generator=g)[:outliers]] = -1
    labels[:clusters] = torch.arange(clusters)  # no empty cluster
    return F.normalize(torch.randn(n, dim, generator=g), dim=1), labels


def _means(features: torch.Tensor, labels: torch.Tensor, clusters: int, normalize: bool = False) -> torch.Tensor:
    means = torch.stack([features[labels == a].mean(0) for a in range(clusters)])
    return F.normalize(means, dim=1) if normalize else means


def _means_tolerance(features: torch.Tensor, labels: torch.Tensor, clusters: int, normalize: bool = False,
                     updates: int = 0) -> float:
    """Largest difference between the memory's person features and ``_means`` of the stored features, both float32.

    The memory keeps per-identity sums (index_add, then + (new - old) per update) and divides; ``_means`` sums with
    torch's reduction. A sum of n unit-vector coordinates rounds within n u n in any order (tests/rounding.py), each
    later update of a sum within u (n + 2), the division within u; normalising divides the error by |mean| and at
    most doubles it. ``updates``: how many times a sum was changed (an upper bound for every identity)."""
    worst = 0.0
    for a in range(clusters):
        x = features[labels == a]
        n = len(x)
        error = U32 * (2 * n + updates * (n + 2) / n + 2)
        worst = max(worst, error * (2 / float(x.mean(0).norm()) if normalize else 1.0))
    return worst


# -- instance memory (ACFL Section 3.1) -----------------------------------------------------------------------
def _instance_memory_gaps(normalize: bool) -> list[tuple[float, float]]:
    """(max |memory person features - _means of the stored features|, tolerance) at the start and after each update."""
    features, labels = _clustered(40, 5, 6, seed=0)
    memory = InstanceMemory(features, labels, 5, normalize=normalize)
    gaps = [(float((memory.prototypes - _means(features, labels, 5, normalize)).abs().max()),
             _means_tolerance(features, labels, 5, normalize))]
    stored = features.clone()
    clustered = (labels >= 0).nonzero().flatten()
    g = torch.Generator().manual_seed(1)
    for step in range(8):
        indices = clustered[torch.randint(len(clustered), (10,), generator=g)]  # repeats on purpose
        new = F.normalize(torch.randn(10, 6, generator=g), dim=1)
        memory.update(new, labels[indices], indices)
        for i, f in zip(indices.tolist(), new):  # M[i] = Q(x_i), one after another
            stored[i] = f
        assert torch.equal(memory.features, stored)  # copies: exact
        gaps.append((float((memory.prototypes - _means(stored, labels, 5, normalize)).abs().max()),
                     _means_tolerance(stored, labels, 5, normalize, updates=10 * (step + 1))))
    return gaps


@pytest.mark.parametrize("normalize", [False, True])
def test_instance_memory_matches_a_direct_loop(normalize):
    for gap, tol in _instance_memory_gaps(normalize):
        assert gap <= tol, (gap, tol)


# -- queue memory (ACFL Table 10) ------------------------------------------------------------------------------
class ListQueue:
    """Reference: entries [age, label, feature]; a new feature replaces the oldest entry whose identity stays covered."""

    def __init__(self, memory: QueueMemory) -> None:
        self.entries = [[int(a), int(y), f.clone()] for a, y, f in zip(memory.ages, memory.labels, memory.features)]
        self.clock = len(self.entries)

    def push(self, feature: torch.Tensor, label: int) -> None:
        counts: dict[int, int] = {}
        for _, y, _ in self.entries:
            counts[y] = counts.get(y, 0) + 1
        allowed = [e for e in self.entries if e[1] == label or counts[e[1]] > 1]
        oldest = min(allowed, key=lambda e: e[0])
        oldest[:] = [self.clock, label, feature.clone()]
        self.clock += 1


def test_queue_memory_size_coverage_and_initial_means():
    features, labels = _clustered(50, 6, 4, seed=2)
    memory = QueueMemory(features, labels, 6, ratio=0.3, generator=torch.Generator().manual_seed(0))
    assert memory.size == 15 and set(memory.labels.tolist()) == set(range(6))
    torch.testing.assert_close(memory.prototypes, _means(memory.features, memory.labels, 6),
                               atol=_means_tolerance(memory.features, memory.labels, 6), rtol=0)
    with pytest.raises(UserError, match="queue_ratio"):
        QueueMemory(features, labels, 6, ratio=0.1)  # 5 features for 6 identities
    with pytest.raises(UserError, match=r"\(0, 1\]"):
        QueueMemory(features, labels, 6, ratio=1.5)


def _queue_memory_gaps(skewed: bool) -> list[tuple[float, float]]:
    """As _instance_memory_gaps for the queue memory (checked against the list reference on the way)."""
    features, labels = _clustered(60, 6, 4, seed=3)
    memory = QueueMemory(features, labels, 6, ratio=0.2, generator=torch.Generator().manual_seed(1))
    reference = ListQueue(memory)
    g = torch.Generator().manual_seed(4)
    gaps = []
    for step in range(12):
        batch = torch.zeros(5, dtype=torch.long) if skewed else torch.randint(6, (5,), generator=g)
        new = F.normalize(torch.randn(5, 4, generator=g), dim=1)
        memory.update(new, batch)
        for f, y in zip(new, batch.tolist()):
            reference.push(f, y)
        assert [(int(a), int(y)) for a, y in zip(memory.ages, memory.labels)] == [(e[0], e[1]) for e in reference.entries]
        assert torch.equal(memory.features, torch.stack([e[2] for e in reference.entries]))  # copies: exact
        assert set(memory.labels.tolist()) == set(range(6)) and memory.size == 12
        gaps.append((float((memory.prototypes - _means(memory.features, memory.labels, 6)).abs().max()),
                     _means_tolerance(memory.features, memory.labels, 6, updates=2 * 5 * (step + 1))))  # - old, + new
    if skewed:  # all pushes were identity 0: every other identity holds exactly one feature
        assert torch.bincount(memory.labels, minlength=6)[1:].tolist() == [1] * 5
    return gaps


@pytest.mark.parametrize("skewed", [False, True])
def test_queue_memory_matches_a_direct_loop_and_keeps_every_identity(skewed):
    for gap, tol in _queue_memory_gaps(skewed):
        assert gap <= tol, (gap, tol)


@pytest.mark.parametrize("bug", ["normalize_ignored", "update_leaves_person_features_stale"])
def test_memory_checks_catch_wrong_person_features(bug, monkeypatch):
    """Negative twin of the two checks above: memory.normalize ignored, or an update that does not refresh C."""
    from types import SimpleNamespace

    from hardreid.memory import instance_memory

    if bug == "normalize_ignored":
        monkeypatch.setattr(instance_memory, "F", SimpleNamespace(normalize=lambda x, dim: x))
        worst = max(gap / tol for gap, tol in _instance_memory_gaps(normalize=True))
    else:
        for cls in (InstanceMemory, QueueMemory):
            def stale(self, *args, update=cls.update):
                with monkeypatch.context() as patch:
                    patch.setattr(self, "_refresh", lambda clusters: None)
                    return update(self, *args)
            monkeypatch.setattr(cls, "update", stale)
        worst = min(max(gap / tol for gap, tol in _instance_memory_gaps(normalize=False)),
                    max(gap / tol for gap, tol in _queue_memory_gaps(skewed=False)))
    assert worst > 100, worst


def test_base_memory_kinds():
    features, labels = _clustered(24, 3, 8, seed=5, outliers=0)
    data = M.EpochData(0, features, labels, torch.zeros(24, dtype=torch.long), 3)
    model = nn.Sequential(nn.Linear(3, 8), nn.Identity())
    for kind, cls in (("momentum", ClusterMemory), ("instance", InstanceMemory), ("queue", QueueMemory)):
        cfg = apply_dict(Config(), {"memory": {"kind": kind, "queue_ratio": 0.5}}, "test")
        method = M.build_method(cfg, CPU)
        method.start_epoch(data, model)
        assert isinstance(method.base.memory, cls)
    cfg = apply_dict(Config(), {"memory": {"kind": "instance"}}, "test")
    method = M.build_method(cfg, CPU)
    method.start_epoch(data, model)
    batch = M.Batch(torch.randn(6, 3), labels[:6], torch.zeros(6, dtype=torch.long), torch.arange(6))
    out = method.training_step(lambda x: F.normalize(model(x), dim=1), batch)
    method.after_step(out)
    torch.testing.assert_close(method.base.memory.features[:6], out.features.detach())
    with pytest.raises(UserError, match="memory.kind"):
        M.build_method(apply_dict(Config(), {"memory": {"kind": "fifo"}}, "test"), CPU)


# -- hard person features (Eq. 1-2, Alg. 2) --------------------------------------------------------------------
def _autograd_hard_prototypes(query: torch.Tensor, prototypes: torch.Tensor, label: int, tau: float, steps: int,
                              eta1: float, eta2: float) -> torch.Tensor:
    """Algorithm 2 for one query, literally: V gradient steps of L_class on a copy of C with torch.autograd."""
    c = prototypes.detach().clone()
    eta = torch.full((c.shape[0], 1), eta2, dtype=c.dtype)
    eta[label] = eta1
    for _ in range(steps):
        c.requires_grad_(True)
        loss = F.cross_entropy((query.detach() @ c.t() / tau).unsqueeze(0), torch.tensor([label]))
        (grad,) = torch.autograd.grad(loss, c)
        c = (c + eta * grad).detach()  # c_a <- c_a + eta dL/dc_a (ascent)
    return c


def _hpf_rounding_bounds(features: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor, tau: float, steps: int,
                         eta1: float, eta2: float) -> dict[str, torch.Tensor]:
    """First-order running error bounds of hpf's float32 closed form against exact arithmetic, along the exact
    (float64) trajectory; the CPU only changes the order of its sums, which these bounds allow for.

    alpha_{v+1} = alpha_v + eta (p_v - y) / tau, p_v = softmax(z0 + alpha_v s / tau), z0 = q.C / tau, s = |q|^2.
    z0 is a d-term dot, within d u |q| |c| / tau (+ u |z0| for the division), s within d u s; each step's logits
    carry the error E of alpha times s / tau; softmax moves p_a by at most p_a ((1 - p_a) e_a + sum_(b != a) p_b e_b)
    for logit errors e, plus (Nc + 3) u p_a of its own; the update rounds within 2 u (|step| + |alpha|).
    Returns the bounds of the adjusted logits ("logits", B x Nc), of C* ("hard", B x Nc x D) and of the cross-entropy
    gradient reaching the features ("grad", B x D), and the exact alpha."""
    u = U32
    q, c = features.detach().double(), prototypes.double()
    b, nc, d = q.shape[0], c.shape[0], c.shape[1]

    def softmax_error(p: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return p * ((1 - p) * e + (p * e).sum(1, keepdim=True) - p * e) + (nc + 3) * u * p

    z0 = q @ c.t() / tau
    e_z0 = d * u * q.norm(dim=1)[:, None] * c.norm(dim=1)[None, :] / tau + u * z0.abs()
    s = (q * q).sum(1, keepdim=True)
    e_s = d * u * s
    positive = F.one_hot(labels.clamp(min=0), nc).double() * (labels >= 0)[:, None].double()
    rates = eta2 + (eta1 - eta2) * positive
    alpha, e_alpha = torch.zeros_like(z0), torch.zeros_like(z0)
    for _ in range(steps):
        shift = alpha * s / tau
        e_z = e_z0 + (e_alpha * s + alpha.abs() * e_s) / tau + 3 * u * (shift.abs() + (z0 + shift).abs())
        p = torch.softmax(z0 + shift, dim=1)
        step = rates * (p - positive) / tau
        alpha = alpha + step
        e_alpha = e_alpha + rates * softmax_error(p, e_z) / tau + 2 * u * (step.abs() + alpha.abs())
    shift = alpha * s / tau
    e_logits = e_z0 + (e_alpha * s + alpha.abs() * e_s) / tau + 3 * u * (shift.abs() + (z0 + shift).abs())
    hard = c[None] + alpha[:, :, None] * q[:, None, :]
    e_hard = e_alpha[:, :, None] * q.abs()[:, None, :] + 2 * u * (alpha[:, :, None] * q[:, None, :]).abs() + u * hard.abs()
    # cross-entropy gradient: dL/dz = (softmax(z) - y) / B, off by softmax_error(e_logits) / B (+ u); dL/df = dL/dz C* / tau,
    # an Nc-term product within Nc u sum|terms| of its own
    p = torch.softmax(z0 + shift, dim=1)
    g = (p - positive) / b
    e_g = softmax_error(p, e_logits) / b + u * g.abs()
    e_grad = (torch.einsum("bk,bkd->bd", e_g, hard.abs()) + torch.einsum("bk,bkd->bd", g.abs(), e_hard)
              + nc * u * torch.einsum("bk,bkd->bd", g.abs(), hard.abs())) / tau
    return {"logits": e_logits, "hard": e_hard, "grad": e_grad, "alpha": alpha}


def _within(got: torch.Tensor, expected: torch.Tensor, bound: torch.Tensor) -> float:
    """Largest |got - expected| / bound: <= 1 when every value is within its bound."""
    return float(((got.detach().double() - expected.detach()).abs() / bound).max())


def _hpf_vs_autograd(mode: str, seed: int) -> dict[str, float]:
    """The closed form of hpf against Algorithm 2 run literally with autograd in float64: the adjusted logits, the
    gradient they send to the features, the materialised C*, each as a fraction of its rounding bound."""
    g = torch.Generator().manual_seed(seed)
    b, nc, d = torch.randint(2, 9, (3,), generator=g).tolist()
    d += 4
    tau, steps = 0.05, int(torch.randint(1, 15, (1,), generator=g))
    features = F.normalize(torch.randn(b, d, generator=g), dim=1).requires_grad_()
    prototypes = 0.8 * F.normalize(torch.randn(nc, d, generator=g), dim=1)  # person features: plain means, norm < 1
    labels = torch.randint(nc, (b,), generator=g)
    cfg = apply_dict(Config(), {"acfl": {"hpf_steps": steps, "hpf_mode": mode}}, "test")
    base = ClusterContrast(cfg, CPU)
    base.prototypes = lambda: prototypes  # type: ignore[method-assign]
    hpf = M.HARD_SAMPLES["hpf"](cfg, CPU)
    hpf.attach(base)
    logits = base.cluster_logits(features, labels)
    eta1 = cfg.acfl.hpf_lr_positive if mode != "negative" else 0.0
    eta2 = cfg.acfl.hpf_lr_negative if mode != "positive" else 0.0
    hard = torch.stack([_autograd_hard_prototypes(features[i].double(), prototypes.double(), int(labels[i]), tau, steps,
                                                  eta1, eta2) for i in range(b)])  # B x Nc x D
    f_ref = features.detach().double().requires_grad_()
    reference = torch.einsum("bd,bkd->bk", f_ref, hard) / tau  # C* constants in the loss (Eq. 6)
    # twice the first-order bounds: room for the neglected O(u^2) terms (and the float64 reference's own rounding)
    bounds = {k: 2 * v for k, v in _hpf_rounding_bounds(features, prototypes, labels, tau, steps, eta1, eta2).items()}
    out = {"logits": _within(logits, reference, bounds["logits"])}
    # the gradient reaches Q(x_i) as through constant hard prototypes
    F.cross_entropy(logits, labels).backward()
    F.cross_entropy(reference, labels).backward()
    out["grad"] = _within(features.grad, f_ref.grad, bounds["grad"])
    # the materialised C* (inspection helper) agrees too
    out["hard"] = _within(hard_person_features(features, prototypes, labels, tau, steps, eta1, eta2), hard, bounds["hard"])
    own = F.one_hot(labels, nc).bool()  # Table 3: which person features stay plain
    plain = prototypes.double().expand(b, -1, -1)
    if mode == "positive":  # eta2 = 0: c + 0 (exact in float64), the same on every CPU
        assert torch.equal(hard[~own], plain[~own])
    if mode == "negative":
        assert torch.equal(hard[own], plain[own])
    return out


@pytest.mark.parametrize("mode", ["both", "positive", "negative"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hard_person_features_match_autograd_algorithm_2(mode, seed):
    fractions = _hpf_vs_autograd(mode, seed)
    assert max(fractions.values()) <= 1, fractions


@pytest.mark.parametrize("bug", ["descent", "rates_swapped"])
def test_hpf_checks_catch_a_wrong_ascent(bug, monkeypatch):
    """Negative twin: the closed form steps down the loss (gradient sign lost), or uses eta2 for the own person
    feature and eta1 for the others."""
    from hardreid.methods.generators import hpf as hpf_module

    real = hpf_module.hard_person_feature_coefficients

    def wrong(logits, labels, sqnorm, temperature, steps, lr_positive, lr_negative):
        if bug == "descent":
            return -real(logits, labels, sqnorm, temperature, steps, lr_positive, lr_negative)
        return real(logits, labels, sqnorm, temperature, steps, lr_negative, lr_positive)

    monkeypatch.setattr(hpf_module, "hard_person_feature_coefficients", wrong)
    fractions = _hpf_vs_autograd("both", 0)
    assert min(fractions.values()) > 100, fractions


def test_hard_person_features_without_a_positive_person_feature():
    """Label -1 (SpCL's un-clustered instances): every person feature moves as a negative (eta2)."""
    g = torch.Generator().manual_seed(5)
    tau, steps, eta2 = 0.05, 10, 0.0028
    query = F.normalize(torch.randn(8, generator=g), dim=0).double()
    prototypes = 0.8 * F.normalize(torch.randn(5, 8, generator=g), dim=1).double()
    c = prototypes.clone()
    for _ in range(steps):  # ascent on L = -log sum_a exp(q.c_a / tau) + const: dL/dc_a = p_a q / tau
        c.requires_grad_(True)
        loss = -torch.logsumexp(query @ c.t() / tau, dim=0)
        (grad,) = torch.autograd.grad(loss, c)
        c = (c - eta2 * grad).detach()  # the softmax part of the InfoNCE gradient, (p_a - 0) q / tau
    hard = hard_person_features(query.float().unsqueeze(0), prototypes.float(), torch.tensor([-1]), tau, steps,
                                0.00035, eta2)
    bound = 2 * _hpf_rounding_bounds(query.float().unsqueeze(0), prototypes.float(), torch.tensor([-1]), tau, steps,
                                     0.00035, eta2)["hard"][0]  # twice the first-order bound, as above
    assert _within(hard[0], c, bound) <= 1
    assert (hard[0].double() @ query > prototypes @ query).all()  # every negative became harder


def test_hard_person_features_make_the_class_loss_harder():
    torch.manual_seed(0)
    features = F.normalize(torch.randn(16, 32), dim=1)
    prototypes = F.normalize(torch.randn(10, 32), dim=1)
    labels = torch.randint(10, (16,))
    plain = F.cross_entropy(features @ prototypes.t() / 0.05, labels)
    for eta1, eta2 in ((0.00035, 0.0028), (0.00035, 0.0), (0.0, 0.0028)):  # Table 3: both, positive, negative
        hard = hard_person_features(features, prototypes, labels, 0.05, 10, eta1, eta2)
        logits = torch.einsum("bd,bkd->bk", features, hard) / 0.05
        assert F.cross_entropy(logits, labels) > plain
    same = hard_person_features(features, prototypes, labels, 0.05, 0, 0.00035, 0.0028)
    torch.testing.assert_close(same, prototypes.expand(16, -1, -1))  # no step: c + 0 q, exact in IEEE arithmetic
    with pytest.raises(UserError, match="hpf_mode"):
        M.HARD_SAMPLES["hpf"](apply_dict(Config(), {"acfl": {"hpf_mode": "all"}}, "test"), CPU)


# -- hard positive instances (Eq. 3-4, Alg. 3) ------------------------------------------------------------------
def _snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {"params": {k: v.detach().clone() for k, v in model.named_parameters()},
            "grads": {k: v.grad.clone() for k, v in model.named_parameters() if v.grad is not None},
            "buffers": {k: v.clone() for k, v in model.named_buffers()},
            "versions": {k: v._version for k, v in model.named_buffers()},  # no in-place write at all
            "optim": copy.deepcopy(optimizer.state_dict()), "training": model.training}


@pytest.mark.parametrize("net", ["tiny", "mobilenet_v2"])
def test_hard_positive_generation_leaves_the_model_untouched(net):
    torch.manual_seed(0)
    model = TinyNet() if net == "tiny" else build_model("mobilenet_v2", last_stride=2)
    shape = (8, 3, 8, 4) if net == "tiny" else (4, 3, 32, 16)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.randn(shape)
    model(images).pow(2).sum().backward()
    optimizer.step()  # parameters have .grad and the optimiser has state
    anchors = model(images).detach()
    prototypes = F.normalize(torch.randn(4, anchors.shape[1]), dim=1)
    before = _snapshot(model, optimizer)
    assert any("num_batches_tracked" in k for k in before["buffers"])
    hard = hard_positive_instances(model, anchors, images.roll(1, 0), prototypes, 3, 1.0, 0.05)
    after = _snapshot(model, optimizer)
    for part in ("params", "grads", "buffers", "versions"):
        assert before[part].keys() == after[part].keys()
        for key in before[part]:
            a, b = before[part][key], after[part][key]
            assert (torch.equal(a, b) if torch.is_tensor(a) else a == b), (part, key)
    assert after["training"] is True
    assert before["optim"]["state"].keys() == after["optim"]["state"].keys()
    for key, state in before["optim"]["state"].items():
        for name, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(after["optim"]["state"][key][name]))
    assert hard.shape == images.shape and not hard.requires_grad


@pytest.mark.parametrize("loss", ["re", "distance"])
def test_instance_loss_rises_over_the_steps_and_the_perturbation_is_bounded(loss):
    torch.manual_seed(1)
    model = TinyNet().train()
    images = torch.randn(8, 3, 8, 4)
    anchors = model(images).detach()
    prototypes = _means(anchors, torch.arange(8) // 2, 4)
    positives = images.view(4, 2, 3, 8, 4).flip(1).reshape(8, 3, 8, 4)  # the other image of each pair
    for steps, lr in ((3, 1.0), (5, 0.5)):
        history: list[float] = []
        hard = hard_positive_instances(model, anchors, positives, prototypes, steps, lr, 0.05, loss=loss, history=history)
        assert len(history) == steps + 1
        assert all(b > a for a, b in zip(history, history[1:])), history  # each step raises L_ins by >= 3 %: no near-tie
        moved = (hard - positives).flatten(1).norm(dim=1)
        # each step has length lr up to rounding (~1e-5 over the steps); the steps are far from collinear here
        # (|moved| <= Z lr - 0.16), so no CPU's rounding decides this
        assert (moved <= steps * lr + 1e-5).all() and (moved > 0).all()
    assert torch.equal(hard_positive_instances(model, anchors, positives, prototypes, 0, 1.0, 0.05), positives)


def _ascent_tolerance(model: nn.Module, images: torch.Tensor, prototypes: torch.Tensor, steps: int, lr: float) -> float:
    """Largest difference, to first order, between two runs of the Z-step normalised ascent of
    hard_positive_instances that round differently (a batch vs one image at a time: other kernel shapes, other
    CPUs). Per step, each run's image gradient is within eps_g (relative) of the exact one: the network's forward and
    backward reductions (tests/rounding.forward_error, with train-mode BatchNorm statistics when ``model`` trains)
    and the relative entropy over the person features (4 D + 2 Nc + 8 roundings). g / |g| is then within 2 eps_g
    plus the rounding of the norm of C*H*W values, so x moves within lr (2 eps_g + normalize_error) of the exact
    step, plus u |x| for the addition (|x| grows by lr a step). Z steps, two runs."""
    eps_g = forward_error(model, images, backward=True) + U32 * (4 * prototypes.shape[1] + 2 * prototypes.shape[0] + 8)
    step = lr * (2 * eps_g + normalize_error(images[0].numel())) + U32 * (float(images.abs().max()) + steps * lr)
    return 2 * steps * step


def _batched_vs_single_gap() -> tuple[float, float]:
    """max |x* generated for 6 images in one batch - x* generated one image at a time| (eval mode), tolerance."""
    torch.manual_seed(2)
    model = TinyNet().eval()
    images = torch.randn(6, 3, 8, 4)
    anchors = F.normalize(torch.randn(6, 8), dim=1)
    prototypes = F.normalize(torch.randn(3, 8), dim=1)
    batched = hard_positive_instances(model, anchors, images, prototypes, 3, 1.0, 0.05)
    single = torch.cat([hard_positive_instances(model, anchors[i:i + 1], images[i:i + 1], prototypes, 3, 1.0, 0.05)
                        for i in range(6)])
    return float((batched - single).abs().max()), _ascent_tolerance(model, images, prototypes, 3, 1.0)


def test_hard_positives_are_generated_in_one_batched_pass_with_a_per_image_norm():
    """In eval mode images do not interact: the batched generation equals one image at a time."""
    gap, tol = _batched_vs_single_gap()
    assert gap <= tol, (gap, tol)
    torch.manual_seed(2)
    model = TinyNet().eval()
    images = torch.randn(6, 3, 8, 4)
    anchors = F.normalize(torch.randn(6, 8), dim=1)
    prototypes = F.normalize(torch.randn(3, 8), dim=1)
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    hard_positive_instances(model, anchors, images, prototypes, 3, 1.0, 0.05)
    handle.remove()
    assert calls == [6, 6, 6]  # Z forward passes over the whole batch


def test_select_positives():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert select_positives(torch.zeros(6, 2), labels, torch.arange(6)).tolist() == [1, 0, 3, 2, 5, 4]
    # an image sampled twice is not its own positive while the cluster has another image in the batch
    for _ in range(5):
        got = select_positives(torch.zeros(3, 2), torch.tensor([0, 0, 0]), torch.tensor([5, 5, 7])).tolist()
        assert got[:2] == [2, 2] and got[2] in (0, 1)
    features = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [1.0, 0.2], [1.0, 0.0], [0.9, 0.1]]), dim=1)
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    hardest = select_positives(features, labels, torch.arange(6), "hardest").tolist()
    assert hardest[:4] == [2, 2, 0, 2] and hardest[4:] == [5, 4]  # lowest cosine similarity (Table 4 "Mining")
    # a batch of images alone with their labels (SpCL's un-clustered instances only): each is its own positive
    assert select_positives(torch.zeros(2, 2), torch.tensor([0, 1]), torch.arange(2)).tolist() == [0, 1]
    with pytest.raises(UserError, match="num_instances >= 2"):
        M.build_method(apply_dict(Config(), {"method": {"hard_samples": ["align"]}, "data": {"num_instances": 1}}, "t"), CPU)


def test_composed_objective_is_equation_5():
    """[hpf, align] with the hardest positive: total = CE(Q(x_i).C*/tau) + KL(v(Q(x_i)) || v(Q(x_j)))."""
    torch.manual_seed(3)
    features, labels = _clustered(24, 3, 8, seed=6, outliers=0)
    cfg = apply_dict(Config(), {"memory": {"kind": "instance"}, "method": {"hard_samples": ["hpf", "align"]},
                                "acfl": {"positive": "hardest", "mining_scope": "batch"}}, "test")
    method = M.build_method(cfg, CPU)
    linear = nn.Linear(3, 8)

    def model(x):
        return F.normalize(linear(x), dim=1)

    method.start_epoch(M.EpochData(0, features, labels, torch.zeros(24, dtype=torch.long), 3), linear)
    batch = M.Batch(torch.randn(8, 3), torch.tensor([0, 0, 0, 0, 1, 1, 2, 2]), torch.zeros(8, dtype=torch.long),
                    torch.tensor([0, 3, 6, 9, 1, 4, 2, 5]))
    out = method.training_step(model, batch)
    f = model(batch.images)
    c = method.base.prototypes()
    hard = torch.stack([_autograd_hard_prototypes(f[i].double(), c.double(), int(batch.labels[i]), 0.05, 10,
                                                  0.00035, 0.0028) for i in range(8)])
    ce = F.cross_entropy(torch.einsum("bd,bkd->bk", f.double(), hard) / 0.05, batch.labels)
    sim = f @ f.t()  # the product select_positives("hardest") computes, on the same f: the same argmin on every CPU
    sim[batch.labels[:, None] != batch.labels[None, :]] = float("inf")
    sim.fill_diagonal_(float("inf"))
    kl = relative_entropy_loss(f, f[sim.argmin(1)], c, 0.05)
    # the same KL computation on both sides; the cross-entropy over hpf's float32 logits is within twice their rounding
    # bound (_hpf_rounding_bounds: 3.5e-5 here) of the float64 one: 7e-5 < rel 1e-5 of a loss of about 13
    assert out.loss.item() == pytest.approx(ce.item() + kl.item(), rel=1e-5)
    assert set(out.logs) == {"loss_contrast", "loss_ins"}
    # per-epoch statistics: how far C* moved along s(q), and the anchor-positive similarity L_ins saw
    stats = method.end_epoch(0, None)
    shift = torch.einsum("bd,bkd->bk", f.detach().double(), hard - c.double())  # s(q).(c*_a - c_a)
    own = F.one_hot(batch.labels, 3).bool()
    # alpha |s(q)|^2 in float32 against float64: within the alpha bound of _hpf_rounding_bounds (~1e-6), << rel 1e-4
    assert stats["hpf_pos_shift"] == pytest.approx(shift[own].mean().item(), rel=1e-4)
    assert stats["hpf_neg_shift"] == pytest.approx(shift.masked_fill(own, -1e9).max(1).values.mean().item(), rel=1e-4)
    assert stats["hpf_pos_shift"] < 0 < stats["hpf_neg_shift"]
    assert stats["ins_pos_cos"] == pytest.approx(F.cosine_similarity(f, f[sim.argmin(1)]).mean().item(), rel=1e-5)
    assert "ins_plain_cos" not in stats  # only hpi has a plain positive besides the one it aligns with
    method.start_epoch(M.EpochData(1, features, labels, torch.zeros(24, dtype=torch.long), 3), linear)
    assert method.end_epoch(1, None) == {}  # a new epoch starts from zero


def test_align_and_hpi_together_are_rejected():
    cfg = apply_dict(Config(), {"method": {"hard_samples": ["align", "hpi"]}}, "test")
    with pytest.raises(UserError, match="choose one instance term"):
        M.build_method(cfg, CPU)
    with pytest.raises(UserError, match="acfl.alignment"):
        M.build_method(apply_dict(Config(), {"method": {"hard_samples": ["hpi"]}, "acfl": {"alignment": "l2"}}, "t"), CPU)


# -- configs and training ---------------------------------------------------------------------------------------
ACFL_CONFIGS = sorted(ACFL.glob("*.yaml"))


def test_every_table_row_has_a_config():
    names = {p.stem for p in ACFL_CONFIGS}
    expected = {"base", "cpu_mobilenet", "t2_base", "t2_distance", "t2_distance_hpi", "t2_re", "t2_hpf", "t2_hpf_re",
                "t2_re_hpi", "t2_full", "t3_positive_only", "t3_negative_only", "t3_both", "t4_easy", "t4_mining",
                "t4_acfl", *(f"fig3_v{v}" for v in range(2, 15, 2)), *(f"t1_z{z}" for z in range(1, 6)),
                *(f"t10_mu{m}" for m in ("01", "03", "05", "07", "09", "10")), "t6_acfl_c", "t7_acfl_vit", "t9_acfl_st"}
    assert expected <= names
    for path in ACFL_CONFIGS:
        assert path.read_text().startswith("# ACFL"), path.name


@pytest.mark.parametrize("path", ACFL_CONFIGS, ids=lambda p: p.stem)
def test_every_acfl_config_builds_and_takes_a_step(path):
    cfg = load_config(path)
    # ACFL-VIT fine-tunes "as in PASS": PASS's SGD 3.5e-4 (configs/acfl/t7_acfl_vit.yaml); every other row Adam 5e-4
    assert cfg.optim.lr == (0.00035 if path.stem == "t7_acfl_vit" else 0.0005) and cfg.method.base == "cluster_contrast"
    # the one study config swaps in Cluster Contrast's momentum memory, so that the memory is the only difference
    expected_memory = ("momentum",) if path.stem == "cpu_momentum_memory" else ("instance", "queue")
    assert cfg.memory.kind in expected_memory
    method = M.build_method(cfg, CPU)
    torch.manual_seed(0)
    model = TinyNet().train()
    features, labels = _clustered(60, 4, 8, seed=7)
    method.start_epoch(M.EpochData(0, features, labels, torch.zeros(60, dtype=torch.long), 4), model)
    clustered = (labels >= 0).nonzero().flatten()
    indices = torch.cat([clustered[labels[clustered] == a][:4] for a in (0, 1)])
    batch = M.Batch(torch.randn(8, 3, 8, 4), labels[indices], torch.zeros(8, dtype=torch.long), indices)
    partners = method.companions()  # t4_mining: each image's hardest positive of its identity comes along
    if partners is not None:
        assert (labels[partners[indices]] == labels[indices]).all()
        batch.companion = torch.randn(8, 3, 8, 4)
    out = method.training_step(model, batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    method.after_step(out)
    expected_terms = {"loss_contrast"} | ({"loss_ins"} if {"align", "hpi"} & set(cfg.method.hard_samples) else set())
    expected_terms |= {"loss_camera_proxy"} if "camera_proxy" in cfg.method.hard_samples else set()
    assert set(out.logs) == expected_terms


def _tiny_acfl(**sections) -> Config:
    """configs/acfl/base.yaml (full ACFL) with the tiny test settings (MobileNetV2 64x32, batch 8, 2 steps)."""
    cfg = load_config(ACFL / "base.yaml")
    tiny = tiny_config(**sections).to_dict()
    return apply_dict(cfg, {k: tiny[k] for k in ("data", "model", "cluster", "train", "eval")}, "tiny settings")


def test_full_acfl_trains_one_epoch(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    cfg = _tiny_acfl(train={"epochs": 1})
    assert cfg.method.hard_samples == ["hpf", "hpi"] and cfg.memory.kind == "instance"
    result = train(cfg, data, tmp_path / "run", log_to_stderr=False)
    row = result.final
    assert row["loss_ins"] > 0 and row["loss_contrast"] > 0
    # each step's loss is its two terms added once in float32 (u |loss|), the epoch means add them in float64
    assert row["loss"] == pytest.approx(row["loss_ins"] + row["loss_contrast"], rel=1e-5)
    assert 0 <= row["mAP"] <= 100


@pytest.mark.slow  # about 2 minutes on 2 busy cores
def test_full_acfl_resumes_exactly(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    cfg = _tiny_acfl()  # 2 epochs x 2 steps, evaluation after each (as tests/test_training.py)
    straight = train(cfg, data, tmp_path / "straight", log_to_stderr=False)
    train(_tiny_acfl(train={"epochs": 1}), data, tmp_path / "split", log_to_stderr=False)
    resumed = train(cfg, data, tmp_path / "split", resume=True, log_to_stderr=False)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    # a resumed run repeats the straight run's computations (same shapes, order, thread count; saved state exact): equal by construction
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    assert resumed.history[1]["mAP"] == pytest.approx(straight.history[1]["mAP"])
    assert resumed.history[1]["loss"] == pytest.approx(straight.history[1]["loss"])


def test_an_image_alone_with_its_label_is_its_own_positive():
    labels = torch.tensor([0, 0, 7, 1, 1])  # 7: an un-clustered instance (SpCL samples it once)
    indices = torch.tensor([10, 11, 12, 13, 14])
    for mode in ("random", "hardest"):
        positions = select_positives(F.normalize(torch.randn(5, 4), dim=1), labels, indices, mode)
        assert positions.tolist()[2] == 2 and positions.tolist()[:2] == [1, 0] and positions.tolist()[3:] == [4, 3]
    assert select_positives(torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2])).tolist() == [0, 1, 2]


@pytest.mark.parametrize("base", ["spcl", "ice", "strong_baseline"])
def test_acfl_generators_train_on_every_base(tiny_root, tmp_path, base):
    data = load_dataset("market", tiny_root)
    cfg = tiny_config(method={"base": base, "hard_samples": ["hpf", "hpi"]}, train={"epochs": 1, "eval_every": 0})
    result = train(cfg, data, tmp_path / base, log_to_stderr=False)
    row = result.history[0]
    assert row["loss_ins"] > 0 and math.isfinite(row["loss"])
    assert row["hpf_pos_shift"] <= 0 <= row["hpf_neg_shift"]
    assert -1 <= row["ins_pos_cos"] <= 1 and -1 <= row["ins_plain_cos"] <= 1


# -- fidelity of the hard positive instances (acfl.hpi_bn, acfl.hpi_lr_reference) and Table 4 "Mining" ----------
class ChunkedTiny(TinyNet):
    """TinyNet whose train-mode BatchNorm normalises chunks of ``bn_chunk`` images (as ReidModel)."""

    def __init__(self, bn_chunk: int) -> None:
        super().__init__()
        self.bn_chunk = bn_chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and 0 < self.bn_chunk < x.shape[0]:
            return torch.cat([super(ChunkedTiny, self).forward(c) for c in x.split(self.bn_chunk)])
        return super().forward(x)


def _frozen_copy(model: nn.Module, reference: torch.Tensor) -> nn.Module:
    """Naive reference: a copy in eval mode whose running statistics are the train-mode batch statistics of
    ``reference`` (one forward with momentum 1, the unbiased variance turned back into the biased one)."""
    frozen = copy.deepcopy(model).train()
    counts = {}
    for name, m in frozen.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 1.0
            m.register_forward_pre_hook(lambda mod, inp, key=name: counts.__setitem__(key, inp[0].numel() // inp[0].shape[1]))
    frozen.bn_chunk = 0
    with torch.no_grad():
        frozen(reference)
    for name, m in frozen.named_modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_var.mul_((counts[name] - 1) / counts[name])
    return frozen.eval()


def _one_at_a_time(model: nn.Module, anchors, positives, prototypes, steps: int, lr: float) -> torch.Tensor:
    """x_j <- x_j + lr g / |g| for each image alone, g its own pair's L_ins gradient (Eq. 4 written per pair)."""
    out = []
    for i in range(positives.shape[0]):
        x = positives[i:i + 1].clone()
        for _ in range(steps):
            x.requires_grad_(True)
            value = relative_entropy_loss(anchors[i:i + 1], model(x), prototypes, 0.05)
            (g,) = torch.autograd.grad(value, x)
            x = (x + lr * g / g.norm()).detach()
        out.append(x)
    return torch.cat(out)


def _train_mode_ascent(chunk: int) -> dict:
    """acfl.hpi_bn frozen_batch and running on a train-mode net, each with its one-image-at-a-time reference."""
    torch.manual_seed(5)
    model = ChunkedTiny(chunk).train()
    images = torch.randn(6, 3, 8, 4) * 2 + 0.5
    anchors = F.normalize(torch.randn(6, 8), dim=1)
    prototypes = F.normalize(torch.randn(3, 8), dim=1)
    batched = hard_positive_instances(model, anchors, images, prototypes, 3, 1.0, 0.05, bn="frozen_batch")
    parts = images.split(chunk) if chunk else (images,)
    start = 0
    single = []
    for part in parts:
        reference = _frozen_copy(model, part)
        single.append(_one_at_a_time(reference, anchors[start:start + len(part)], part, prototypes, 3, 1.0))
        start += len(part)
    running = hard_positive_instances(model, anchors, images, prototypes, 3, 1.0, 0.05, bn="running")
    reference = _one_at_a_time(copy.deepcopy(model).eval(), anchors, images, prototypes, 3, 1.0)
    return {"model": model, "images": images, "anchors": anchors, "prototypes": prototypes, "batched": batched,
            "frozen_gap": float((batched - torch.cat(single)).abs().max()),
            "running_gap": float((running - reference).abs().max()),
            "tol": _ascent_tolerance(model, images, prototypes, 3, 1.0)}  # train mode: with the BatchNorm statistics


@pytest.mark.parametrize("chunk", [0, 3])
def test_frozen_batch_ascent_is_per_image_in_train_mode(chunk):
    """acfl.hpi_bn frozen_batch: batched x* == one image at a time with the positives' (per-chunk) batch statistics."""
    run = _train_mode_ascent(chunk)
    model, images, anchors, prototypes, batched = (run[k] for k in ("model", "images", "anchors", "prototypes", "batched"))
    assert run["frozen_gap"] <= run["tol"], run
    assert model.training and model.bn.running_mean.abs().sum() == 0  # nothing written
    coupled = hard_positive_instances(model, anchors, images, prototypes, 3, 1.0, 0.05, bn="batch")
    assert (coupled - batched).abs().max() > 1e-3  # today's behaviour couples the positives
    assert run["running_gap"] <= run["tol"], run  # running: eval-mode normalisation, one image at a time
    with pytest.raises(UserError, match="hpi_bn"):
        hard_positive_instances(model, anchors, images, prototypes, 1, 1.0, 0.05, bn="frozen")


@pytest.mark.parametrize("chunk", [0, 3])
def test_per_image_ascent_checks_catch_positives_coupled_by_batch_statistics(chunk, monkeypatch):
    """Negative twin: frozen_batch and running silently normalising with each step's batch statistics (acfl.hpi_bn
    batch), which couples the positives."""
    from hardreid.methods.generators import hpi

    real = hpi.generation_forward
    monkeypatch.setattr(hpi, "generation_forward", lambda model, positives, mode="frozen_batch": real(model, positives, "batch"))
    run = _train_mode_ascent(chunk)
    assert run["frozen_gap"] > 100 * run["tol"] and run["running_gap"] > 100 * run["tol"], run


def test_batched_ascent_check_catches_one_gradient_norm_for_the_whole_batch(monkeypatch):
    """Negative twin: the ascent step divided by the norm of the whole batch's image gradient instead of each
    image's own (the batch flattened as one vector before the norm)."""
    flatten = torch.Tensor.flatten

    def whole_batch(self, start_dim=0, end_dim=-1):
        if self.dim() == 4 and tuple(self.shape[1:]) == (3, 8, 4) and start_dim == 1:  # the image gradient only
            return flatten(self).unsqueeze(0).expand(self.shape[0], -1)
        return flatten(self, start_dim, end_dim)

    monkeypatch.setattr(torch.Tensor, "flatten", whole_batch)
    gap, tol = _batched_vs_single_gap()
    assert gap > 100 * tol, (gap, tol)


@pytest.mark.parametrize("bn", ["frozen_batch", "running"])
def test_every_bn_mode_leaves_the_model_untouched(bn):
    torch.manual_seed(0)
    model = build_model("mobilenet_v2", last_stride=2, bn_chunk=2).train()
    images = torch.randn(4, 3, 32, 16)
    anchors = model(images).detach()
    before = _snapshot(model, torch.optim.Adam(model.parameters()))
    hard_positive_instances(model, anchors, images.roll(1, 0), F.normalize(torch.randn(4, 1280), dim=1), 2, 1.0,
                            0.05, bn=bn)
    after = _snapshot(model, torch.optim.Adam(model.parameters()))
    for part in ("params", "buffers", "versions"):
        for key in before[part]:
            a, b = before[part][key], after[part][key]
            assert (torch.equal(a, b) if torch.is_tensor(a) else a == b), (part, key)
    assert after["training"] and all(m.training for m in model.modules())


def test_hpi_step_moves_each_pixel_as_far_at_any_input_size():
    """acfl.hpi_lr_reference [256, 128]: the per-pixel RMS of the step is eta3 / sqrt(3 * 256 * 128) at any size."""
    from hardreid.methods.generators.hpi import HardPositiveInstances, hpi_step_scale

    torch.manual_seed(3)
    model = TinyNet().eval()  # adaptive pooling: any input size
    rms, rtol = {}, 0.0
    for size in ((256, 128), (128, 64)):
        for reference in ([256, 128], []):
            images = torch.randn(4, 3, *size)
            anchors = F.normalize(torch.randn(4, 8), dim=1)
            lr = 1.0 * hpi_step_scale(*size, reference)
            hard = hard_positive_instances(model, anchors, images, F.normalize(torch.randn(3, 8), dim=1), 1, lr, 0.05)
            rms[size, bool(reference)] = ((hard - images) ** 2).flatten(1).mean(1).sqrt()
            # float32 rounding of the measured RMS (the CPU only reorders the sums): the step s = lr g / |g| is
            # within normalize_error(n) + 2 u of its length, hard - images within 2 u (|x| + |s|) per value, and the
            # RMS's mean of n squares within n u (n u / 2 after the root)
            n, step = images[0].numel(), lr / math.sqrt(images[0].numel())
            rtol = max(rtol, normalize_error(n) + 2 * U32 + 2 * U32 * (float(images.abs().max()) + lr) / step
                       + (n / 2 + 2) * U32)
    paper = 1.0 / math.sqrt(3 * 256 * 128)
    for size in ((256, 128), (128, 64)):
        torch.testing.assert_close(rms[size, True], torch.full((4,), paper), rtol=rtol, atol=0)
    # the negative twin of that check: without the scale (a step scale ignored) the same check sees twice the size
    torch.testing.assert_close(rms[(128, 64), False], torch.full((4,), 2 * paper), rtol=rtol, atol=0)
    assert rtol < 0.01
    component = HardPositiveInstances(tiny_config(data={"height": 128, "width": 64}), CPU)
    assert component.lr_scale == pytest.approx(0.5)
    off = load_config(None, ["acfl.hpi_lr_reference=null", "data.height=128", "data.width=64"])
    assert off.acfl.hpi_lr_reference == [] and HardPositiveInstances(off, CPU).lr_scale == 1.0
    with pytest.raises(UserError, match="hpi_lr_reference"):
        hpi_step_scale(128, 64, [256])


def test_mining_takes_the_hardest_positive_of_the_whole_identity():
    """Table 4 "Mining": argmin similarity over all images of the pseudo identity (not the batch's K)."""
    from hardreid.methods.generators.hpi import hardest_positives

    features, labels = _clustered(40, 4, 6, seed=9)
    labels[7] = 9  # a label of one image: its own positive
    got = hardest_positives(features, labels)
    exact = features.double() @ features.double().t()
    for i in range(40):
        same = [j for j in range(40) if labels[j] == labels[i] and j != i and labels[i] >= 0]
        expected = min(same, key=lambda j: float(features[i] @ features[j])) if same else i
        if len(same) > 1:  # no near-tie: a matrix product and a dot product (each within 6 u of the exact cosine,
            # in any order) pick the same positive on every CPU
            lowest, runner_up = sorted(float(exact[i, j]) for j in same)[:2]
            assert runner_up - lowest > 10 * 2 * sum_error(6, 1.0), i
        assert int(got[i]) == expected, i
    cfg = load_config(ACFL / "t4_mining.yaml")
    assert cfg.acfl.positive == "hardest" and cfg.acfl.mining_scope == "identity"
    method = M.build_method(cfg, CPU)
    data = M.EpochData(0, features, labels.clamp(max=3), torch.zeros(40, dtype=torch.long), 4)
    method.start_epoch(data, TinyNet())
    assert torch.equal(method.companions(), hardest_positives(features, data.labels))


def test_the_loader_brings_each_images_mined_positive(tiny_root, tmp_path):
    from hardreid.data.loaders import InfiniteIdentityLoader
    from hardreid.data.transforms import train_transform

    data = load_dataset("market", tiny_root)
    cfg = tiny_config(data={"erasing_p": 0.0, "flip_p": 0.0, "pad": 0})  # a deterministic transform
    samples = data.train[:12]
    companions = [samples[(i + 5) % 12] for i in range(12)]
    loader = InfiniteIdentityLoader(samples, [i // 4 for i in range(12)], train_transform(cfg.data), 8, 4, 0, seed=1,
                                    num_views=2, companions=companions)
    images, labels, cams, positions = loader.next()
    batch = M.Batch.from_loader(images, labels, cams, positions, CPU, companion=True)
    assert len(batch.views) == 1 and batch.companion.shape == batch.images.shape
    reference = InfiniteIdentityLoader(companions, [0] * 12, train_transform(cfg.data), 4, 4, 0, seed=0).loader.dataset
    for row, position in enumerate(positions.tolist()):
        torch.testing.assert_close(batch.companion[row], reference[position][0])
    # end to end: the trainer asks the method for the companions and Mining aligns with them
    run = train(tiny_config(method={"hard_samples": ["align"]}, memory={"kind": "instance"},
                            acfl={"positive": "hardest"}, train={"epochs": 1, "eval_every": 0}),
                data, tmp_path / "mining", log_to_stderr=False)
    assert run.history[0]["loss_ins"] > 0 and -1 <= run.history[0]["ins_pos_cos"] <= 1
