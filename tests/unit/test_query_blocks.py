"""Long sequences are computed over blocks of query rows (probe.capture.BLOCKS_ABOVE_BYTES);
the thresholds are lowered here so that tiny models take that path. Every family must then
give the captures and the hidden states of the whole-sequence path (every family but Llama
is marked slow: the quick run keeps one)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from families import FAMILIES, batch as _batch, tiny_model

from probe import AttentionProbe, attention, capture


def _run(model, tokenizer, ids, mask, heads=None):
    with AttentionProbe(model, tokenizer, heads=heads) as p:
        with torch.inference_mode():
            hidden = model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return p.last, hidden


@pytest.fixture
def blocks(monkeypatch):
    """Every captured layer in blocks of 2 query rows; counts the blocked calls."""
    calls = []
    original = attention.attend_in_blocks

    def counted(*args, **kwargs):
        calls.append(kwargs["block"])
        return original(*args, **kwargs)
    monkeypatch.setattr(capture, "attend_in_blocks", counted)

    def enable():
        monkeypatch.setattr(capture, "BLOCKS_ABOVE_BYTES", 0)
        monkeypatch.setattr(capture, "_query_block", _two_rows(capture._query_block))
    return enable, calls


def _two_rows(decide):
    return lambda *a: None if decide(*a) is None else 2


@pytest.mark.parametrize("family", [pytest.param(f, marks=() if f == "llama" else pytest.mark.slow)
                                    for f in FAMILIES])
def test_blocks_give_the_whole_sequence_captures(family, tokenizer, blocks):
    enable, calls = blocks
    model = tiny_model(family)
    ids, mask = _batch(tokenizer)
    whole, hidden = _run(model, tokenizer, ids, mask)
    enable()
    cut, hidden_cut = _run(model, tokenizer, ids, mask)
    assert calls and set(calls) == {2}
    real = mask.bool()
    # products over fewer rows may round differently in the last bit (1e-6 seen on GPT-2),
    # which later layers carry on (1.4e-6 in OLMo-2's second-layer q)
    torch.testing.assert_close(hidden_cut[real], hidden[real], rtol=1e-5, atol=1e-5)
    for a, b in zip(whole, cut):
        assert list(a) == list(b)
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_blocks_keep_only_the_selected_heads(tokenizer, blocks):
    enable, calls = blocks
    model = tiny_model("llama")
    ids, mask = _batch(tokenizer)
    whole, _ = _run(model, tokenizer, ids, mask, heads="0.1,0.3,1.*")
    enable()
    cut, _ = _run(model, tokenizer, ids, mask, heads="0.1,0.3,1.*")
    assert calls
    for a, b in zip(whole, cut):
        assert b["blocks.0.attn.pattern"].shape[0] == 2 and b.heads[0] == [1, 3]
        for key in a:
            np.testing.assert_allclose(b[key], a[key], rtol=1e-4, atol=1e-5, err_msg=key)


def test_the_block_size_follows_the_byte_budget():
    q = torch.zeros(1, 4, 4096, 8)
    k = torch.zeros(1, 2, 4096, 8)
    # one query row's scores: 4 heads x 4096 keys x 4 bytes = 64 KiB; 4 MiB -> 64 rows
    assert capture._query_block(None, _Module(), q, k, 0.0) is None  # no probe: never
    probe = type("P", (), {"intervention": None})()
    assert capture._query_block(probe, _Module(), q, k, 0.0) == 64
    assert capture._query_block(probe, _Module(), q[:, :, :64], k[:, :, :64], 0.0) is None
    probe.intervention = lambda *a: None  # an intervention sees whole patterns
    assert capture._query_block(probe, _Module(), q, k, 0.0) is None


class _Module:
    training = False
