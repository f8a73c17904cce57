"""The shard plan: every row of every batch of the unsharded plan is written by exactly one
shard, shards are balanced to one example, each shard's rows are contiguous in plan order,
and the parts follow batches_by_length window by window."""

from __future__ import annotations

import pytest

from probe.inputs import batches_by_length
from probe.run_setup import shard_parts, shard_size


@pytest.mark.parametrize("n_examples,window,batch_size,n_shards", [
    (1, 2048, 32, 2), (7, 2048, 2, 3), (100, 2048, 32, 4), (1000, 64, 7, 5), (33, 8, 1, 4),
    (4097, 2048, 32, 3), (10, 3, 4, 16),
])
def test_every_row_is_written_once_and_shards_are_balanced(n_examples, window, batch_size,
                                                           n_shards):
    written = []  # (plan position, shard)
    computed = 0  # batches computed, summed over shards
    for k in range(n_shards):
        parts = list(shard_parts(n_examples, window, batch_size, k, n_shards))
        assert len(parts) == -(-n_examples // window)
        position = 0
        for w, part in enumerate(parts):
            n = min(window, n_examples - w * window)
            batches = batches_by_length(list(range(n)), batch_size)  # any lengths: same sizes
            assert len(part) == len(batches)
            for rows, ab in zip(batches, part):
                if ab is not None:
                    a, b = ab
                    assert 0 <= a < b <= len(rows)
                    written += [(position + i, k) for i in range(a, b)]
                    computed += 1
                position += len(rows)
    positions = sorted(p for p, _ in written)
    assert positions == list(range(n_examples))  # each row once
    sizes = [sum(1 for _, k in written if k == s) for s in range(n_shards)]
    assert sizes == [shard_size(n_examples, k, n_shards) for k in range(n_shards)]
    assert max(sizes) - min(sizes) <= 1
    for k in range(n_shards):  # contiguous in plan order, in shard order
        mine = sorted(p for p, s in written if s == k)
        assert mine == list(range(mine[0], mine[0] + len(mine))) if mine else True
    n_batches = sum(-(-min(window, n_examples - s) // batch_size)
                    for s in range(0, n_examples, window))
    assert computed <= n_batches + n_shards - 1  # at most N - 1 batches computed twice


def test_one_shard_writes_every_row_of_every_batch():
    parts = list(shard_parts(5000, 2048, 32, 0, 1))
    assert all(ab == (0, 32) for part in parts for ab in part[:-1])
    assert shard_size(5000, 0, 1) == 5000


def test_parts_follow_batches_by_length_whatever_the_lengths():
    lengths = [5, 1, 9, 9, 2, 7, 3]
    assert [len(b) for b in batches_by_length(lengths, 3)] == [3, 3, 1]
    assert list(shard_parts(7, 2048, 3, 0, 2)) == [[(0, 3), None, None]]
    assert list(shard_parts(7, 2048, 3, 1, 2)) == [[None, (0, 3), (0, 1)]]
