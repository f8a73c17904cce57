"""The notebook API: probe.compare on one pair, show, and results that render themselves."""

from __future__ import annotations

import numpy as np
import pytest

import probe
from probe import AttentionProbe, InputError
from probe.pair_compare import align_pair, compare_pair

pytestmark = pytest.mark.slow


def test_compare_one_pair_against_an_independent_computation(minilm):
    model, tokenizer = minilm
    r = probe.compare("The cat is on the mat.", "The cat is not on the mat.", model=minilm)
    assert r.cue == "not" and r.control_text is not None and "not" not in r.control_text.split()
    # the same numbers from a capture made here, compared with the library's pair functions
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted", "z"]) as p:
        o, c, k = p.run(["The cat is on the mat.", "The cat is not on the mat.", r.control_text])
    view = align_pair(o.tokens, c.tokens, k.tokens, cue=[4])
    assert c.tokens[4] == "not"
    cf, ctrl = compare_pair(o, c, k, view, layers=range(6))
    np.testing.assert_allclose(r.values["attention_js_divergence"], cf["attention_js_divergence"])
    np.testing.assert_allclose(r.control_values["cue_attention_in"], ctrl["cue_attention_in"])
    df = r.table()
    assert set(df["metric"]) == set(r.values) and len(df) == 14 * 72
    assert df.attrs["note"].startswith("n = 1 pair: descriptive")
    assert not {"p", "q", "statistic", "t"} & set(df.columns)  # never a test for one pair
    row = df[(df["metric"] == "cue_attention_in") & (df["layer"] == 2) & (df["head"] == 3)].iloc[0]
    assert row["difference"] == pytest.approx(cf["cue_attention_in"][2, 3] - ctrl["cue_attention_in"][2, 3])
    assert len(r.figure().axes) == 6
    page = r._repr_html_()
    assert "<iframe srcdoc=" in page and "descriptive" in page


def test_compare_without_control_and_with_a_given_one(minilm):
    none = probe.compare("She can swim.", "She cannot swim.", model=minilm, control=None)
    assert none.control is None and np.isnan(none.rows()[0]["control"])
    given = probe.compare("She can swim.", "She cannot swim.", model=minilm, control="She could swim.")
    assert given.control_text == "She could swim." and given.plan.control_source == "field"
    with pytest.raises(InputError, match="unknown metric"):
        given.top("nope")
    with pytest.raises(InputError, match="also needs tokenizer"):
        probe.compare("A.", "B.", model=minilm[0])


def test_show_and_reprs(minilm, tmp_path):
    from probe.design import plan_pairs
    from probe.pairs import Pair
    from probe.study import pair_texts

    model, tokenizer = minilm
    plans = plan_pairs([Pair("p", "It rains.", "It does not rain.")])
    texts, metas = pair_texts(plans)
    with AttentionProbe(model, tokenizer) as p:
        caps = p.run(texts, meta=metas)
    html = probe.show(caps, 1)._repr_html_()
    assert html.startswith("<iframe") and "counterfactual" in html
    assert caps._repr_html_().startswith("<p><code>Capture(3 examples")
    with pytest.raises(InputError, match="examples 0..2"):
        probe.show(caps, 7)
