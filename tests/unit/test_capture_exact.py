"""Every captured tensor against an independent reference, on a tiny model of every family.

References: transformers' own eager ``output_attentions``; softmax(q k^T * scale + mask) and
pattern @ v recomputed here in numpy from captured q, k, v; the output projection's real
output (read with a forward hook of the test's own); the identity rows-sum-to-1.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ARCHS, OUT_PROJ, SENTENCES, eager_reference
from probe import AttentionProbe
from probe.inputs import pad


def _batch(tokenizer, texts):
    rows = [tokenizer(t)["input_ids"] for t in texts]
    return pad(rows, 0, "cpu")


_eager = eager_reference


def _allowed(n, causal, window):
    i, j = np.indices((n, n))
    ok = np.ones((n, n), bool)
    if causal:
        ok &= j <= i
    if window:
        ok &= j > i - window
    return ok


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def captured(tiny, tokenizer):
    ids, mask = _batch(tokenizer, SENTENCES)
    with AttentionProbe(tiny, tokenizer) as p:
        with torch.no_grad():
            hidden = tiny(input_ids=ids, attention_mask=mask).last_hidden_state
        cap = p.last
    return ids, mask, hidden, cap


def test_pattern_equals_eager_output_attentions(tiny, tokenizer, captured):
    ids, mask, _, cap = captured
    _, attentions = _eager(tiny, ids, mask)
    assert len(attentions) == tiny.config.num_hidden_layers
    for layer, ref in enumerate(attentions):
        for row, ex in enumerate(cap):
            n = int(mask[row].sum())
            got = ex[f"blocks.{layer}.attn.pattern"]
            assert got.shape == (ref.shape[1], n, n)
            np.testing.assert_allclose(got, ref[row, :, :n, :n].numpy(), rtol=0, atol=1e-6)


def test_hidden_states_unchanged_by_probe(tiny, tokenizer, captured):
    ids, mask, hidden, _ = captured
    eager_hidden, _ = _eager(tiny, ids, mask)
    with torch.no_grad():
        plain = tiny(input_ids=ids, attention_mask=mask).last_hidden_state
    real = mask.bool()
    # the probe computes eager attention: same numbers as eager, and as sdpa up to rounding
    torch.testing.assert_close(hidden[real], eager_hidden[real], rtol=0, atol=1e-6)
    torch.testing.assert_close(hidden[real], plain[real], rtol=1e-5, atol=1e-5)


def test_scores_and_pattern_recomputed_from_q_k(arch, tiny, captured):
    _, _, _, cap = captured
    _, causal, window = ARCHS[arch]
    for ex in cap:
        n = len(ex.tokens)
        allowed = _allowed(n, causal, window)
        for layer in range(tiny.config.num_hidden_layers):
            q = ex[f"blocks.{layer}.attn.q"].astype(np.float64)
            k = ex[f"blocks.{layer}.attn.k"].astype(np.float64)
            n_heads, n_kv, d = q.shape[0], k.shape[0], q.shape[-1]
            kv_of = np.arange(n_heads) // (n_heads // n_kv)
            scores = np.einsum("hqd,hkd->hqk", q, k[kv_of]) * d ** -0.5
            scores = np.where(allowed, scores, -np.inf)
            got_scores = ex[f"blocks.{layer}.attn.scores"]
            assert np.array_equal(np.isneginf(got_scores), np.broadcast_to(~allowed, scores.shape))
            np.testing.assert_allclose(got_scores[:, allowed], scores[:, allowed], rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(ex[f"blocks.{layer}.attn.pattern"], _softmax(scores),
                                       rtol=0, atol=2e-6)


def test_z_is_pattern_times_v_and_rows_sum_to_one(tiny, captured):
    _, _, _, cap = captured
    for ex in cap:
        for layer in range(tiny.config.num_hidden_layers):
            pattern = ex[f"blocks.{layer}.attn.pattern"].astype(np.float64)
            v = ex[f"blocks.{layer}.attn.v"].astype(np.float64)
            kv_of = np.arange(pattern.shape[0]) // (pattern.shape[0] // v.shape[0])
            np.testing.assert_allclose(pattern.sum(-1), 1.0, atol=1e-6)
            z = np.einsum("hqk,hkd->hqd", pattern, v[kv_of])
            np.testing.assert_allclose(ex[f"blocks.{layer}.attn.z"], z, rtol=1e-5, atol=1e-5)


def test_value_weighted_vectors_rebuild_the_attention_output(arch, tiny, tokenizer):
    """sum over heads and keys of alpha_hij f_h(x_j), plus the bias, is the block's output."""
    ids, mask = _batch(tokenizer, SENTENCES)
    n_layers = tiny.config.num_hidden_layers
    outputs = {}
    handles = []
    for layer in range(n_layers):
        proj = tiny.get_submodule(OUT_PROJ[arch].format(l=layer))
        handles.append(proj.register_forward_hook(
            lambda m, a, o, layer=layer: outputs.__setitem__(layer, o.detach().clone())))
    try:
        with AttentionProbe(tiny, tokenizer) as p, torch.no_grad():
            tiny(input_ids=ids, attention_mask=mask)
    finally:
        for h in handles:
            h.remove()
    for layer in range(n_layers):
        proj = tiny.get_submodule(OUT_PROJ[arch].format(l=layer))
        w = proj.weight.detach().numpy().astype(np.float64)
        w = w if arch == "gpt2" else w.T  # -> [head*d_head, d_model]
        bias = proj.bias.detach().numpy() if proj.bias is not None else 0.0
        for row, ex in enumerate(p.last):
            n = len(ex.tokens)
            pattern = ex[f"blocks.{layer}.attn.pattern"].astype(np.float64)
            v = ex[f"blocks.{layer}.attn.v"].astype(np.float64)
            n_heads = pattern.shape[0]
            kv_of = np.arange(n_heads) // (n_heads // v.shape[0])
            w_heads = w.reshape(n_heads, -1, w.shape[-1])  # [head, d_head, d_model]
            f = np.einsum("hkd,hdm->hkm", v[kv_of], w_heads)  # f_h(x_j)
            rebuilt = np.einsum("hqk,hkm->qm", pattern, f) + bias
            np.testing.assert_allclose(rebuilt, outputs[layer][row, :n].numpy(), rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(ex[f"blocks.{layer}.attn.value_norm"],
                                       np.linalg.norm(f, axis=-1), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(ex[f"blocks.{layer}.attn.value_weighted"],
                                       np.linalg.norm(pattern[..., None] * f[:, None], axis=-1),
                                       rtol=1e-4, atol=1e-5)


def test_padded_batch_equals_each_sentence_alone(tiny, tokenizer):
    with AttentionProbe(tiny, tokenizer) as p:
        together = p.run(SENTENCES, batch_size=len(SENTENCES))
        alone = [p.run([s])[0] for s in SENTENCES]
    for a, b in zip(together, alone):
        assert a.tokens == b.tokens
        assert set(a) == set(b)
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)


def test_left_padding_in_user_forward(arch, tiny, tokenizer):
    """A user's left-padded batch (positions given) is unpadded to the same as running alone."""
    import inspect

    if "position_ids" not in inspect.signature(tiny.forward).parameters or "roberta" in arch:
        pytest.skip("this model derives positions itself; left padding shifts them")
    rows = [tokenizer(t)["input_ids"] for t in SENTENCES[:3]]
    width = max(map(len, rows))
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with AttentionProbe(tiny, tokenizer) as p, torch.no_grad():
        tiny(input_ids=ids, attention_mask=mask, position_ids=positions)
        left = p.last
        alone = p.run(SENTENCES[:3])
    for a, b in zip(left, alone):
        assert a.tokens == b.tokens
        for key in a:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5, err_msg=key)
