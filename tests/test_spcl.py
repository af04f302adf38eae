"""SpCL base: hybrid memory, unified contrastive loss, self-paced reliability, training and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hardreid.config import Config
from hardreid.data.datasets import load_dataset
from hardreid.data.sampler import IdentitySampler
from hardreid.memory import HybridMemory
import hardreid.methods as M
from hardreid.methods.bases.spcl import SpCL, reliability_scores, self_paced_labels
from hardreid.runs import train

from conftest import tiny_config


def _memory() -> HybridMemory:
    torch.manual_seed(0)
    memory = HybridMemory(torch.randn(7, 5), temperature=0.1, momentum=0.2)
    memory.set_labels(torch.tensor([0, 1, 0, 2, 1, 3, 0]), num_clusters=2)  # clusters 0, 1; images 3 and 5 un-clustered
    return memory


def test_unified_loss_matches_a_naive_loop():
    memory = _memory()
    torch.manual_seed(1)
    features = F.normalize(torch.randn(3, 5), dim=1)
    indices = torch.tensor([2, 3, 4])
    loss = memory.loss(features, indices)
    V, y = memory.features, memory.labels.tolist()
    entries = [sum(V[i] for i in range(7) if y[i] == k) / sum(1 for i in range(7) if y[i] == k) for k in (0, 1)]
    entries += [V[3], V[5]]  # un-clustered instances, in index order
    positive = {2: 0, 3: 2, 4: 1}
    naive = 0.0
    for f, i in zip(features, indices.tolist()):
        logits = [float(f @ e) / 0.1 for e in entries]
        naive += -(logits[positive[i]] - math.log(sum(math.exp(v) for v in logits)))
    # float32 logits of 5-term dots of unit-norm-ish rows over tau 0.1 (within 5 u |f| |e| / 0.1 ~ 5e-6), the
    # cross-entropy moves by at most twice that: far inside rel 1e-5 of a loss ~ 6 on every CPU
    assert loss.item() == pytest.approx(naive / 3, rel=1e-5)


def test_memory_update_after_step_keeps_unit_rows_and_follows_eq3():
    memory = _memory()
    before = memory.features.clone()
    f = F.normalize(torch.randn(2, 5), dim=1)
    memory.update(f, torch.tensor([1, 4]))
    expected = F.normalize(0.2 * before[1] + 0.8 * f[0], dim=0)
    torch.testing.assert_close(memory.features[1], expected)
    torch.testing.assert_close(memory.features.norm(dim=1), torch.ones(7))
    assert torch.equal(memory.features[0], before[0])


def test_no_memory_change_inside_backward():
    method = M.ComposedMethod(SpCL(Config(), torch.device("cpu")))
    base = method.base
    base.memory = _memory()
    model = torch.nn.Linear(3, 5)
    batch = M.Batch(torch.randn(3, 3), torch.tensor([0, 2, 1]), torch.zeros(3, dtype=torch.long), torch.tensor([2, 3, 4]))
    out = method.training_step(model, batch)
    before = base.memory.features.clone()
    out.loss.backward()
    assert torch.equal(before, base.memory.features)  # the reference updates V inside backward; we do not
    method.after_step(out)
    assert not torch.equal(before, base.memory.features)


def test_reliability_on_a_hand_made_clustering():
    # eps: clusters A = {0,1,2,3}, B = {4,5,6}, image 7 an outlier
    labels = np.array([0, 0, 0, 0, 1, 1, 1, -1])
    tight = np.array([0, 0, 0, -1, 1, 1, 1, -1])  # image 3 leaves A at the tight eps
    loose = np.array([0, 0, 0, 0, 0, 0, 0, -1])  # A and B merge at the loose eps
    comp, indep = reliability_scores(labels, tight, loose)
    np.testing.assert_allclose(comp, [1 - 3 / 4, 1 - 3 / 4, 1 - 3 / 4, 1 - 1 / 4, 0, 0, 0, 0])
    np.testing.assert_allclose(indep, [1 - 4 / 7] * 4 + [1 - 3 / 7] * 3 + [0])
    # threshold above both clusters' independence: both independent; image 3 is not compact -> un-clustered
    hybrid, num_clusters, threshold = self_paced_labels(labels, tight, loose, indep_threshold=0.6)
    assert num_clusters == 2 and threshold == 0.6
    assert hybrid[:3].tolist() == [0, 0, 0] and hybrid[4:7].tolist() == [1, 1, 1]
    assert hybrid[3] >= 2 and hybrid[7] >= 2 and hybrid[3] != hybrid[7]
    # a tighter threshold drops A (1 - 4/7 = 0.43 > 0.5? no: 0.43 <= 0.5 keeps A; B 0.57 > 0.5 is dropped)
    hybrid, num_clusters, _ = self_paced_labels(labels, tight, loose, indep_threshold=0.5)
    assert num_clusters == 1 and hybrid[:3].tolist() == [0, 0, 0] and len(set(hybrid[3:].tolist())) == 5
    # first epoch: threshold = 90th percentile of the clusters' scores (index round(2 * 0.9) = 2 -> the last)
    _, _, threshold = self_paced_labels(labels, tight, loose)
    assert threshold == pytest.approx(1 - 3 / 7)


def test_sampler_gives_singletons_once():
    sampler = IdentitySampler([0, 0, 1, 2, 2, 2], num_instances=4, seed=0, singletons_once=True)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 9 and drawn.count(2) == 1
    assert len(list(IdentitySampler([0, 0, 1, 2, 2, 2], num_instances=4, seed=0))) == 12


def test_logit_adjuster_reaches_the_centroids_only():
    base = SpCL(Config(), torch.device("cpu"))
    base.memory = _memory()
    seen = []

    def adjust(features, labels, prototypes, logits):
        seen.append((labels.tolist(), prototypes.shape[0]))
        return logits - 3.0 * F.one_hot(labels.clamp(min=0), prototypes.shape[0]) * (labels >= 0)[:, None]

    method = M.ComposedMethod(base)
    model = torch.nn.Linear(3, 5)
    batch = M.Batch(torch.randn(3, 3), torch.tensor([0, 2, 1]), torch.zeros(3, dtype=torch.long), torch.tensor([2, 3, 4]))
    plain = method.training_step(model, batch).loss
    base.logit_adjusters.append(adjust)
    harder = method.training_step(model, batch).loss
    assert seen == [([0, -1, 1], 2)]  # un-clustered image 3: -1, its positive is not a centroid
    assert harder.item() > plain.item()


def test_spcl_trains_and_resumes_exactly(tiny_root, tmp_path):
    data = load_dataset("market", tiny_root)
    cfg = dict(method={"base": "spcl"})
    straight = train(tiny_config(**cfg), data, tmp_path / "straight", log_to_stderr=False)
    assert "spcl_unclustered" in straight.history[0] and straight.history[0]["loss_spcl"] > 0
    train(tiny_config(**cfg, train={"epochs": 1}), data, tmp_path / "split", log_to_stderr=False)
    resumed = train(tiny_config(**cfg), data, tmp_path / "split", resume=True, log_to_stderr=False)
    # a resumed run repeats the straight run's computations (same shapes, order, thread count; saved state exact): equal by construction
    for key, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, msg=key)
    assert resumed.history[1]["loss"] == pytest.approx(straight.history[1]["loss"])
