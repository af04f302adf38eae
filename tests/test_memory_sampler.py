"""Cluster memory and the P x K sampler."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from hardreid.data.sampler import IdentitySampler
from hardreid.memory import ClusterMemory, cluster_centroids


def test_centroids_are_normalised_means_ignoring_outliers():
    feats = F.normalize(torch.randn(7, 5), dim=1)
    labels = torch.tensor([0, 1, 0, -1, 2, 1, 0])
    cents = cluster_centroids(feats, labels, 3)
    for c in range(3):
        mean = feats[labels == c].mean(0)
        torch.testing.assert_close(cents[c], mean / mean.norm())


def test_infonce_matches_hand_computation():
    protos = F.normalize(torch.randn(4, 6), dim=1)
    mem = ClusterMemory(protos, temperature=0.05)
    q = F.normalize(torch.randn(3, 6), dim=1)
    y = torch.tensor([2, 0, 3])
    expected = sum(-math.log(math.exp(q[i] @ protos[y[i]] / 0.05) / sum(math.exp(q[i] @ protos[a] / 0.05) for a in range(4)))
                   for i in range(3)) / 3
    assert abs(mem.loss(q, y).item() - expected) < 1e-4


def test_momentum_update_sequential_and_unit_norm():
    protos = F.normalize(torch.randn(3, 4), dim=1)
    mem = ClusterMemory(protos, momentum=0.1)
    feats = F.normalize(torch.randn(4, 4), dim=1)
    labels = torch.tensor([1, 1, 0, 1])
    expected = protos.clone()
    for f, y in zip(feats, labels):  # instance after instance, as the reference
        row = 0.1 * expected[y] + 0.9 * f
        expected[y] = row / row.norm()
    mem.update(feats, labels)
    torch.testing.assert_close(mem.prototypes, expected)
    torch.testing.assert_close(mem.prototypes.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(mem.prototypes[2], protos[2])  # untouched cluster


def test_loss_gradient_reaches_features_only():
    mem = ClusterMemory(F.normalize(torch.randn(5, 8), dim=1))
    before = mem.prototypes.clone()
    q = F.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    mem.loss(q, torch.tensor([0, 1, 2, 3])).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    torch.testing.assert_close(mem.prototypes, before)  # no update inside backward


def test_sampler_gives_p_by_k_batches_without_outliers():
    labels = [0] * 6 + [1] * 2 + [2] * 5 + [-1] * 4 + [3] * 4
    sampler = IdentitySampler(labels, num_instances=4, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == 4 * 4
    chunks = [order[i:i + 4] for i in range(0, len(order), 4)]
    assert sorted(labels[c[0]] for c in chunks) == [0, 1, 2, 3]
    for chunk in chunks:
        assert len({labels[i] for i in chunk}) == 1 and labels[chunk[0]] >= 0
        if labels[chunk[0]] != 1:  # enough images: drawn without replacement
            assert len(set(chunk)) == 4
    assert Counter(labels[i] for i in order)[-1] == 0


def test_sampler_chains_passes_when_few_identities_and_is_seeded():
    labels = [0] * 5 + [1] * 5
    sampler = IdentitySampler(labels, num_instances=4, seed=3, min_length=32)
    assert len(sampler) == 32 and len(list(sampler)) == 32
    assert list(IdentitySampler(labels, 4, seed=5)) == list(IdentitySampler(labels, 4, seed=5))


def test_momentum_update_in_rounds_equals_the_sequential_loop():
    from hardreid.memory.cluster_memory import momentum_update_rows_, occurrence_rank

    g = torch.Generator().manual_seed(4)
    rows = torch.randint(0, 6, (40,), generator=g)  # rows repeat up to ~12 times, in any order
    assert occurrence_rank(torch.tensor([3, 1, 3, 3, 1, 0])).tolist() == [0, 0, 1, 2, 1, 0]
    table = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    feats = F.normalize(torch.randn(40, 16, generator=g), dim=1)
    expected = table.clone()
    for f, r in zip(feats, rows.tolist()):
        row = 0.3 * expected[r] + 0.7 * f
        expected[r] = row / row.norm()
    momentum_update_rows_(table, rows, feats, 0.3)
    torch.testing.assert_close(table, expected, rtol=1e-6, atol=1e-6)
    momentum_update_rows_(table, rows[:0], feats[:0], 0.3)  # an empty batch changes nothing
    torch.testing.assert_close(table, expected, rtol=1e-6, atol=1e-6)
