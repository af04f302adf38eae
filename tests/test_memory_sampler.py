"""Cluster memory and the P x K sampler."""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn.functional as F

from hardreid.data.sampler import IdentitySampler
from hardreid.memory import ClusterMemory, cluster_centroids

from rounding import U32, normalize_error


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
    torch.testing.assert_close(mem.prototypes, expected)  # 3 updates of one row: within MOMENTUM_TOL < atol 1e-5
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


# Rows updated as normalize(0.3 a + 0.7 f), a and f unit vectors of dimension 16, in float32, the rounds (a batch of
# rows, norm over dim 1) against one row at a time (norm of a vector): the norms may sum in another order on another
# CPU. |0.3 a + 0.7 f| >= 0.4, so a step rounds within r = 3 u / 0.4 + normalize_error(16) (relative) and shrinks an
# earlier error by 0.3 / 0.4 = 0.75: each side stays within r / (1 - 0.75) = 4 r of the exact rows, two sides 8 r.
MOMENTUM_TOL = 8 * (3 * U32 / 0.4 + normalize_error(16))


def _rounds_vs_loop() -> tuple[torch.Tensor, torch.Tensor]:
    from hardreid.memory.cluster_memory import momentum_update_rows_

    g = torch.Generator().manual_seed(4)
    rows = torch.randint(0, 6, (40,), generator=g)  # rows repeat up to ~12 times, in any order
    table = F.normalize(torch.randn(8, 16, generator=g), dim=1)
    feats = F.normalize(torch.randn(40, 16, generator=g), dim=1)
    expected = table.clone()
    for f, r in zip(feats, rows.tolist()):
        row = 0.3 * expected[r] + 0.7 * f
        expected[r] = row / row.norm()
    momentum_update_rows_(table, rows, feats, 0.3)
    return table, expected


def test_momentum_update_in_rounds_equals_the_sequential_loop():
    from hardreid.memory.cluster_memory import momentum_update_rows_, occurrence_rank

    assert occurrence_rank(torch.tensor([3, 1, 3, 3, 1, 0])).tolist() == [0, 0, 1, 2, 1, 0]
    table, expected = _rounds_vs_loop()
    torch.testing.assert_close(table, expected, rtol=0, atol=MOMENTUM_TOL)
    before = table.clone()
    momentum_update_rows_(table, torch.zeros(0, dtype=torch.long), torch.zeros(0, 16), 0.3)  # an empty batch
    assert torch.equal(table, before)  # changes nothing


def test_momentum_rounds_check_catches_a_row_updated_out_of_order(monkeypatch):
    """Negative twin: the rounds take each row's repeated features last first (occurrence counted from the end)."""
    from hardreid.memory import cluster_memory

    rank = cluster_memory.occurrence_rank

    def from_the_end(rows: torch.Tensor) -> torch.Tensor:
        return rank(rows.flip(0)).flip(0)

    monkeypatch.setattr(cluster_memory, "occurrence_rank", from_the_end)
    table, expected = _rounds_vs_loop()
    assert (table - expected).abs().max() > 100 * MOMENTUM_TOL


def _groups(order: list[int], labels: list[int]) -> list[list[int]]:
    """Cut a sampler's stream into its per-identity groups (consecutive runs of one label)."""
    groups: list[list[int]] = []
    for i in order:
        if groups and labels[groups[-1][0]] == labels[i]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


# identities: 0 spans cameras 0/1/2 (8 images), 1 one camera (5), 2 two cameras with one image on the other (3),
# 3 a single image, 4 two cameras (2 images), -1 outliers
LABELS = [0] * 8 + [1] * 5 + [2] * 3 + [3] + [4] * 2 + [-1] * 3
CAMS = [0, 1, 2, 0, 1, 2, 0, 0] + [3] * 5 + [0, 0, 1] + [2] + [0, 1] + [0, 1, 2]


def test_multi_camera_sampler_follows_random_multiple_gallery_sampler():
    from hardreid.data.sampler import MultiCameraSampler

    for seed in range(20):
        sampler = MultiCameraSampler(LABELS, num_instances=4, seed=seed, camids=CAMS)
        order = list(sampler)
        assert len(order) == len(sampler) == 4 * 4 + 1  # the single image is given once
        groups = _groups(order, LABELS)
        assert sorted(LABELS[g[0]] for g in groups) == [0, 1, 2, 3, 4]
        for anchor, *partners in groups:
            label = LABELS[anchor]
            members = [i for i, y in enumerate(LABELS) if y == label]
            assert all(LABELS[p] == label and p != anchor for p in partners)
            if len(members) == 1:
                assert partners == []
                continue
            assert len(partners) == 3
            if any(CAMS[m] != CAMS[anchor] for m in members):  # K - 1 partners from the other cameras
                assert all(CAMS[p] != CAMS[anchor] for p in partners)
            others = [m for m in members if (CAMS[m] != CAMS[anchor] if any(CAMS[x] != CAMS[anchor] for x in members)
                                             else m != anchor)]
            if len(others) >= 4:  # the official threshold: without replacement only from K candidates on
                assert len(set(partners)) == 3
    assert list(MultiCameraSampler(LABELS, 4, seed=5, camids=CAMS)) == list(MultiCameraSampler(LABELS, 4, seed=5, camids=CAMS))


def test_more_camera_sampler_covers_the_cameras_first():
    from hardreid.data.sampler import MoreCameraSampler

    for seed in range(20):
        sampler = MoreCameraSampler(LABELS, num_instances=4, seed=seed, camids=CAMS)
        order = list(sampler)
        assert len(order) == len(sampler) == 5 * 4  # always K per identity, a single image repeated
        chunks = [order[i:i + 4] for i in range(0, len(order), 4)]
        assert sorted(LABELS[c[0]] for c in chunks) == [0, 1, 2, 3, 4]
        for chunk in chunks:
            label = LABELS[chunk[0]]
            members = [i for i, y in enumerate(LABELS) if y == label]
            assert all(LABELS[i] == label for i in chunk)
            cameras = {CAMS[m] for m in members}
            assert {CAMS[i] for i in chunk} == cameras  # every camera of the identity (it has at most 3 < K)
            if len(members) >= 4:
                assert len(set(chunk)) == 4  # picks + distinct others
    wide = [0] * 6
    picked = list(MoreCameraSampler(wide, 4, seed=1, camids=[0, 1, 2, 3, 4, 5]))
    assert len(set(picked)) == 4  # K cameras of 6, one image each


def test_sampler_registry_and_the_bases_official_samplers():
    from hardreid.data.sampler import SAMPLERS, sampler_class
    from hardreid.errors import UserError
    from hardreid.methods import build_method

    assert set(SAMPLERS) == {"pk", "multi_camera", "more_camera"}
    import pytest

    with pytest.raises(UserError, match="data.sampler"):
        sampler_class("random")
    from conftest import tiny_config

    device = torch.device("cpu")
    expected = {"cluster_contrast": "multi_camera", "spcl": "multi_camera", "ice": "more_camera",
                "strong_baseline": "multi_camera"}
    for base, name in expected.items():
        cfg = tiny_config(method={"base": base})
        assert build_method(cfg, device).sampler(cfg) == name
        cfg = tiny_config(method={"base": base}, data={"sampler": "pk"})
        assert build_method(cfg, device).sampler(cfg) == "pk"
