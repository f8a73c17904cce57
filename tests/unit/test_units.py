"""Unit tests on synthetic tensors: names, attention math, inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probe import names
from probe.attention import attend, repeat_kv, value_norms, value_vectors
from probe.recording import spans_of as _spans
from probe.errors import InputError
from probe.inputs import batches_by_length, encode


def test_keys_round_trip_for_every_component():
    for layer in (0, 7, 31):
        for component in names.COMPONENTS:
            assert names.parse_key(names.key(layer, component)) == (layer, component)
    with pytest.raises(InputError):
        names.key(0, "attn")


def test_repeat_kv_follows_kv_head_of():
    k = torch.arange(3).float().view(1, 3, 1, 1).expand(1, 3, 2, 2)
    out = repeat_kv(k, 12)
    for h in range(12):
        assert out[0, h, 0, 0].item() == names.kv_head_of(h, 12, 3)


@pytest.mark.parametrize("n_heads,n_kv", [(4, 4), (8, 2), (6, 1)])
def test_value_norms_equal_norm_of_mapped_values(n_heads, n_kv):
    torch.manual_seed(0)
    d, d_model = 8, 20
    v = torch.randn(2, n_kv, 5, d)
    w_o = torch.randn(d_model, n_heads * d)
    expected = value_vectors(v, w_o, n_heads).norm(dim=-1)
    # by hand: head h's slice of W_O is columns h*d:(h+1)*d
    v_rep = v[:, [names.kv_head_of(h, n_heads, n_kv) for h in range(n_heads)]]
    by_hand = torch.stack([(v_rep[:, h] @ w_o[:, h * d:(h + 1) * d].T).norm(dim=-1)
                           for h in range(n_heads)], dim=1)
    torch.testing.assert_close(expected, by_hand)
    torch.testing.assert_close(value_norms(v, w_o, n_heads), by_hand, rtol=1e-5, atol=1e-5)


def test_attend_masks_and_normalises():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3), torch.randn(1, 2, 4, 3)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 3] = torch.finfo(torch.float32).min
    scores, pattern, z = attend(q, k, v, mask, 0.5)
    assert torch.all(pattern[..., 3] == 0)
    torch.testing.assert_close(pattern.sum(-1), torch.ones(1, 2, 4))
    torch.testing.assert_close(z, pattern @ v)


def test_spans_from_masks():
    mask = torch.tensor([[1, 1, 1, 0], [0, 1, 1, 1], [1, 1, 1, 1]])
    assert _spans(mask, 3, 4) == [(0, 3), (1, 4), (0, 4)]
    assert _spans(None, 2, 5) == [(0, 5), (0, 5)]
    with pytest.raises(InputError, match="not contiguous"):
        _spans(torch.tensor([[1, 0, 1]]), 1, 3)
    with pytest.raises(InputError, match="no real token"):
        _spans(torch.tensor([[0, 0]]), 1, 2)


def test_batches_cover_every_index_once():
    lengths = list(np.random.default_rng(0).integers(1, 50, size=103))
    batches = batches_by_length(lengths, 16)
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert all(len(b) <= 16 for b in batches)


def test_encode_errors_name_the_example(tokenizer):
    with pytest.raises(InputError, match="example s2: the text is empty"):
        encode(tokenizer, ["ok", "fine", ""], max_length=512, ids=["s0", "s1", "s2"])
    with pytest.raises(InputError, match="single string"):
        encode(tokenizer, "just a string", max_length=512)
    with pytest.raises(InputError, match="expected a string"):
        encode(tokenizer, ["ok", 3], max_length=512)
    out = encode(tokenizer, ["one two three four"], max_length=4, truncate=True)
    assert len(out.ids[0]) == 4 and out.ids[0][-1] == tokenizer.sep_token_id and out.truncated == [True]
