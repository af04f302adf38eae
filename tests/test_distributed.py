"""Several processes: shares of batches and data sets, augmentation that does not depend on them, the
helpers' one-process behaviour, and (``test_two_processes_*``) real 2-process gloo runs against one process."""

from __future__ import annotations

import torch

from hardreid import distributed
from hardreid.data.datasets import load_dataset
from hardreid.data.loaders import InfiniteIdentityLoader
from hardreid.data.sampler import GlobalBatches, IdentitySampler
from hardreid.data.transforms import train_transform

from conftest import tiny_config


def fake_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)
    monkeypatch.setattr(distributed, "active", lambda: world > 1)


def test_global_batches_shares_are_contiguous_parts_of_the_one_process_batches():
    labels = [i // 3 for i in range(60)]  # 20 identities of 3 images
    whole = GlobalBatches(IdentitySampler(labels, 4, seed=5), 16, seed=7)
    parts = [GlobalBatches(IdentitySampler(labels, 4, seed=5), 16, seed=7, part=p, parts=4) for p in range(4)]
    assert len(whole) == len(parts[0]) == 80 // 16
    for _ in range(2):  # a second pass continues both the sampler's and the seeds' streams
        for batch, *shares in zip(whole, *parts):
            assert [key for share in shares for key in share] == batch
            assert all(len(share) == 4 for share in shares)
            assert all(len({labels[i] for i, _ in share}) == 1 for share in shares)  # K = 4: one identity each
    assert len({seed for batch in whole for _, seed in batch}) > 60


def test_augmentation_is_the_same_at_any_number_of_processes_and_workers(tiny_root):
    data = load_dataset("market", tiny_root)
    cfg = tiny_config().data
    samples = data.train[:40]
    labels = [s.pid for s in samples]

    def batches(part: int, parts: int, workers: int) -> list[torch.Tensor]:
        loader = InfiniteIdentityLoader(samples, labels, train_transform(cfg), 8, 4, workers, seed=3,
                                        part=part, parts=parts)
        return [loader.next()[0] for _ in range(3)]

    torch.manual_seed(0)
    one = batches(0, 1, 0)
    assert not torch.equal(one[0][0], one[0][1])  # augmented, not copies
    halves = [batches(p, 2, 0) for p in range(2)]
    for whole, first, second in zip(one, *halves):
        assert torch.equal(torch.cat([first, second]), whole)
    torch.manual_seed(123)  # the loader's draws do not depend on the global generators either
    for whole, again in zip(one, batches(0, 1, 2)):
        assert torch.equal(again, whole)


def test_a_global_batch_that_splits_identities_is_refused(tiny_root):
    from hardreid.errors import UserError
    import pytest

    data = load_dataset("market", tiny_root)
    with pytest.raises(UserError, match=r"shared by 3 processes.*multiple of 3 x 4 = 12"):
        InfiniteIdentityLoader(data.train, [s.pid for s in data.train], train_transform(tiny_config().data), 16, 4, 0,
                               seed=0, part=0, parts=3)


def test_shards_cover_everything_in_order_at_block_boundaries(monkeypatch):
    for world in (1, 2, 3, 5):
        for total in (0, 1, 7, 128, 300):
            bounds = []
            for r in range(world):
                fake_rank(monkeypatch, r, world)
                bounds.append(distributed.shard_bounds(total, block=32))
            assert bounds[0][0] == 0 and bounds[-1][1] == total
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            assert all(start % 32 == 0 or start == total for start, _ in bounds)


def test_rank_block_is_the_diagonal_block_of_the_share(monkeypatch):
    m = torch.arange(36.0).view(6, 6)
    fake_rank(monkeypatch, 1, 3)
    assert torch.equal(distributed.rank_block(m), m[2:4, 2:4])


def test_helpers_are_no_ops_in_one_process():
    t = torch.randn(5, 3)
    model = torch.nn.Linear(3, 2)
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    assert distributed.all_gather_cat(t) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.main_then_broadcast(lambda: 7) == 7
    assert distributed.sum_over_ranks({"a": 2.0}) == {"a": 2.0}
    assert distributed.rank_block(t[:3, :3]) is not None
    assert distributed.data_parallel(model) == model.forward
    assert distributed.check_identical({"w": model.weight}, "test") == 1
    assert distributed.setup("cpu") == torch.device("cpu")
