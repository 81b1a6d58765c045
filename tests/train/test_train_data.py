"""ShardSampler: disjoint equal shards, a new shuffle per epoch, the same on every rank."""
from __future__ import annotations

import torch

from shoal.train.data import ShardSampler


def test_shards_are_disjoint_and_cover_the_dataset():
    shards = [ShardSampler(10, 3, r, shuffle=True, seed=1).indices() for r in range(3)]
    assert all(len(s) == 4 for s in shards)          # padded to equal length
    assert set(torch.cat(shards).tolist()) == set(range(10))


def test_drop_last_trims_to_equal_shards():
    shards = [ShardSampler(10, 3, r, drop_last=True, shuffle=False).indices() for r in range(3)]
    assert all(len(s) == 3 for s in shards)
    assert len(set(torch.cat(shards).tolist())) == 9


def test_set_epoch_changes_the_order_reproducibly():
    a, b = ShardSampler(50, 2, 0), ShardSampler(50, 2, 0)
    first = a.indices()
    a.set_epoch(1)
    b.set_epoch(1)
    assert not torch.equal(first, a.indices())
    assert torch.equal(a.indices(), b.indices())


def test_unshuffled_shard_is_strided():
    assert ShardSampler(8, 2, 1, shuffle=False).indices().tolist() == [1, 3, 5, 7]
