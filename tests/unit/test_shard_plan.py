"""The shard plan: every batch of the unsharded plan goes to exactly one shard, shards are
balanced to within one batch, and the plan follows batches_by_length window by window."""

from __future__ import annotations

import itertools

import pytest

from probe.inputs import batches_by_length
from probe.run_setup import batch_owners, shard_size


@pytest.mark.parametrize("n_examples,window,batch_size,n_shards", [
    (1, 2048, 32, 2), (7, 2048, 2, 3), (100, 2048, 32, 4), (1000, 64, 7, 5), (33, 8, 1, 4),
    (4097, 2048, 32, 3), (10, 3, 4, 16),
])
def test_batches_are_shared_out_whole_and_balanced(n_examples, window, batch_size, n_shards):
    plan = list(batch_owners(n_examples, window, batch_size, n_shards))
    assert len(plan) == -(-n_examples // window)
    sizes = [0] * n_shards
    for w, owners in enumerate(plan):
        n = min(window, n_examples - w * window)
        batches = batches_by_length(list(range(n)), batch_size)  # any lengths: same sizes
        assert len(owners) == len(batches)
        for rows, k in zip(batches, owners):
            sizes[k] += len(rows)
    assert sum(sizes) == n_examples
    assert sizes == [shard_size(n_examples, window, batch_size, k, n_shards)
                     for k in range(n_shards)]
    assert max(sizes) - min(sizes) <= batch_size
    n_batches = sum(map(len, plan))
    assert sum(s > 0 for s in sizes) == min(n_shards, n_batches)  # empty only when batches run out


def test_one_shard_takes_every_batch():
    assert set(itertools.chain.from_iterable(batch_owners(5000, 2048, 32, 1))) == {0}
    assert shard_size(5000, 2048, 32, 0, 1) == 5000


def test_batch_sizes_follow_batches_by_length_whatever_the_lengths():
    lengths = [5, 1, 9, 9, 2, 7, 3]
    assert [len(b) for b in batches_by_length(lengths, 3)] == [3, 3, 1]
    assert list(batch_owners(7, 2048, 3, 2)) == [[0, 1, 0]]
