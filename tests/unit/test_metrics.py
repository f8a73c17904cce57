"""Pattern metrics on hand-computed examples, and on a real model."""

from __future__ import annotations

import numpy as np
import pytest

from probe import AttentionProbe
from probe import metrics as M
from probe.captures import Example

# one head, 4 tokens: [CLS] a b [SEP]
P = np.array([[1.0, 0.0, 0.0, 0.0],
              [0.5, 0.5, 0.0, 0.0],
              [0.5, 0.25, 0.25, 0.0],
              [0.25, 0.25, 0.25, 0.25]])


def test_hand_computed_values():
    assert M.first_token_attention(P) == pytest.approx((1 + 0.5 + 0.5 + 0.25) / 4)
    assert M.first_token_max(P) == 1.0
    index, share = M.sink_token(P[None])
    assert index.tolist() == [0] and share[0] == pytest.approx(2.25 / 4)
    assert M.self_attention(P) == pytest.approx((1 + 0.5 + 0.25 + 0.25) / 4)
    assert M.offset_attention(P, -1) == pytest.approx((0.5 + 0.25 + 0.25) / 3)
    assert M.offset_attention(P, 1) == pytest.approx(0.0)
    # within +-1: row0 1, row1 1, row2 .25+.25, row3 .25+.25
    assert M.local_attention(P, 1) == pytest.approx((1 + 1 + 0.5 + 0.5) / 4)
    # distances: row1 .5*1, row2 .5*2+.25*1, row3 .25*(3+2+1)
    assert M.mean_attention_distance(P) == pytest.approx((0 + 0.5 + 1.25 + 1.5) / 4)
    h = [0.0, np.log(2), -(0.5 * np.log(0.5) + 2 * 0.25 * np.log(0.25)), np.log(4)]
    np.testing.assert_allclose(M.row_entropy(P), h)
    assert M.mean_row_entropy(P) == pytest.approx(np.mean(h))
    # allowed keys per row: 1, 2, 3, 4
    assert M.uniform_entropy_bound(P) == pytest.approx(np.log([1, 2, 3, 4]).mean())


def test_content_function_ratio_on_words():
    tokens = ["[CLS]", "the", "un", "##happy", "cat", "[SEP]"]
    p = np.zeros((6, 6))
    p[:, 2] = 0.3   # un
    p[:, 3] = 0.1   # ##happy -> word "unhappy" receives 0.4
    p[:, 4] = 0.2   # cat
    p[:, 1] = 0.3   # the
    p[:, 0] = 0.1
    assert M.content_function_ratio(p, tokens) == pytest.approx(((0.4 + 0.2) / 2) / 0.3)
    assert np.isnan(M.content_function_ratio(p, ["[CLS]", "dogs", "bark", "loudly", "today", "[SEP]"]))
    assert np.isnan(M.content_function_ratio(p[:3, :3], ["the", "of", "."]))


def test_rollout_matches_a_hand_product():
    a1 = np.array([[[1.0, 0.0], [0.5, 0.5]]])
    a2 = np.array([[[0.5, 0.5], [0.0, 1.0]]])
    r = M.attention_rollout(np.stack([a1, a2]))
    h1 = 0.5 * a1[0] + 0.5 * np.eye(2)
    h2 = 0.5 * a2[0] + 0.5 * np.eye(2)
    np.testing.assert_allclose(r, h2 @ h1)
    np.testing.assert_allclose(r.sum(-1), 1)


def test_token_importance_and_profile_on_minilm(minilm):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted"]) as p:
        ex = p.run(["The unbelievable story is not true."])[0]
    for method in ("raw", "value_weighted", "rollout"):
        imp = M.token_importance(ex, method)
        assert imp.shape == (len(ex.tokens),) and imp.sum() == pytest.approx(1)
    m = M.example_metrics(ex)
    assert m["entropy"].shape == (6, 12)
    assert (m["entropy"] <= m["entropy_bound"] + 1e-9).all()
    assert ((0 <= m["first_token"]) & (m["first_token"] <= 1)).all()
    classes = M.classify_heads({k: v for k, v in m.items()})
    assert classes.shape == (6, 12) and set(classes.ravel()) <= {c for c, _, _ in M.HEAD_CLASSES} | {"mixed"}


def test_metrics_vectorised_over_leading_axes():
    stack = np.stack([P, P.T / P.T.sum(-1, keepdims=True)])[None]   # [1, 2, 4, 4]
    assert M.mean_row_entropy(stack).shape == (1, 2)
    assert M.local_attention(stack, 2).shape == (1, 2)
    np.testing.assert_allclose(M.mean_row_entropy(stack)[0, 0], M.mean_row_entropy(P))
