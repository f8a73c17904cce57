"""Per-pair comparisons on hand-computed examples; the study pipeline live vs stored; CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from probe import AttentionProbe, open_run
from probe.align import align
from probe.captures import Example
from probe.compare import compare_pair
from probe.pairs import Pair
from probe.study import analyze, capture_pairs, pair_tables


def _example(tokens, pattern, vw=None, z=None):
    arrays = {"blocks.0.attn.pattern": np.asarray(pattern, float)[None]}
    if vw is not None:
        arrays["blocks.0.attn.value_weighted"] = np.asarray(vw, float)[None]
    if z is not None:
        arrays["blocks.0.attn.z"] = np.asarray(z, float)[None]
    return Example(tokens, list(arrays), arrays.__getitem__)


ORIG = ["[CLS]", "it", "rains", "[SEP]"]
CF = ["[CLS]", "it", "not", "rains", "[SEP]"]
P_ORIG = [[1.0, 0.0, 0.0, 0.0],
          [0.5, 0.5, 0.0, 0.0],
          [0.5, 0.0, 0.5, 0.0],
          [0.25, 0.25, 0.25, 0.25]]
P_CF = [[1.0, 0.0, 0.0, 0.0, 0.0],
        [0.5, 0.0, 0.5, 0.0, 0.0],   # "it" moves its self-attention to "not"
        [0.2, 0.2, 0.2, 0.2, 0.2],
        [0.5, 0.0, 0.5, 0.0, 0.0],   # "rains" attends to "not" instead of itself
        [0.2, 0.2, 0.2, 0.2, 0.2]]


def test_metrics_on_a_hand_computed_pair():
    al = align(ORIG, CF)
    assert al.matched.tolist() == [[0, 0], [1, 1], [2, 3], [3, 4]] and al.cue == [2]
    m = compare_pair(_example(ORIG, P_ORIG), _example(CF, P_CF), al, layers=[0],
                     metrics=["max_attention_diff", "mean_attention_diff", "attention_js_divergence",
                              "cue_attention_in", "cue_attention_out"])
    # matched sub-pattern of the counterfactual (rows/cols 0,1,3,4)
    sub = np.array(P_CF)[np.ix_([0, 1, 3, 4], [0, 1, 3, 4])]
    diff = np.abs(np.array(P_ORIG) - sub)
    assert m["max_attention_diff"][0, 0] == pytest.approx(0.5)   # "it"->"it": 0.5 vs 0.0
    assert m["mean_attention_diff"][0, 0] == pytest.approx(diff.mean())
    # JSD rows with a rest bin: row "it": orig (0.5, 0.5, 0, 0 | 0) vs cf (0.5, 0, 0, 0 | 0.5)
    row_it = 0.5 * (0.5 * np.log(0.5 / 0.25)) * 2   # two halves: 0.5*KL(p||m) + 0.5*KL(q||m)
    row_rains = 0.5 * (0.5 * np.log(0.5 / 0.25)) * 2
    row_sep = 0.0  # (.25,.25,.25,.25|0) vs (.2,.2,.2,.2|.2)
    p, q = np.array([0.25] * 4 + [0.0]), np.array([0.2] * 5)
    mid = (p + q) / 2
    row_sep = 0.5 * np.sum(p[p > 0] * np.log(p[p > 0] / mid[p > 0])) + 0.5 * np.sum(q * np.log(q / mid))
    assert m["attention_js_divergence"][0, 0] == pytest.approx((0 + row_it + row_rains + row_sep) / 4)
    # to the cue from the content queries it, rains: (0.5 + 0.5) / 2; from the cue: 0.2 + 0.2
    assert m["cue_attention_in"][0, 0] == pytest.approx(0.5)
    assert m["cue_attention_out"][0, 0] == pytest.approx(0.4)
    # baseline: the original token at the cue's position (2 = "rains"), from "it" only: 0.0
    assert m["cue_attention_in_baseline"][0, 0] == pytest.approx(0.0)
    assert m["cue_attention_out_baseline"][0, 0] == pytest.approx(0.0)


def test_value_metrics_by_hand():
    vw_o = np.arange(16.0).reshape(4, 4)
    vw_c = np.zeros((5, 5))
    vw_c[np.ix_([0, 1, 3, 4], [0, 1, 3, 4])] = vw_o + 1.0
    vw_c[:, 2] = [0, 2, 0, 6, 0]  # the cue column
    z_o = np.arange(8.0).reshape(4, 2)
    z_c = np.vstack([z_o[:2], [[9, 9]], z_o[2:]]) * 2
    m = compare_pair(_example(ORIG, P_ORIG, vw_o, z_o), _example(CF, P_CF, vw_c, z_c), align(ORIG, CF),
                     layers=[0], metrics=["value_weighted_diff", "value_weighted_correlation",
                                          "value_output_correlation", "cue_value_share", "cue_value_spread"])
    assert m["value_weighted_diff"][0, 0] == pytest.approx(1.0)
    assert m["value_weighted_correlation"][0, 0] == pytest.approx(1.0)
    assert m["value_output_correlation"][0, 0] == pytest.approx(1.0)
    # queries it (row 1) and rains (row 3): cue share 2/(sum row 1) and 6/(sum row 3)
    share = np.mean([2 / vw_c[1].sum(), 6 / vw_c[3].sum()])
    assert m["cue_value_share"][0, 0] == pytest.approx(share)
    d = np.array([2, 6]) / 8
    assert m["cue_value_spread"][0, 0] == pytest.approx(-(d * np.log(d)).sum() / np.log(2))


def test_identical_sides_compare_as_identical(minilm):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted", "z"]) as p:
        a, b = p.run(["The robin is a bird.", "The robin is a bird."])
    m = compare_pair(a, b, align(a.tokens, b.tokens), layers=range(6),
                     metrics=["max_attention_diff", "attention_pattern_correlation",
                              "attention_spearman", "attention_js_divergence",
                              "value_weighted_correlation", "value_output_correlation"])
    assert np.allclose(m["max_attention_diff"], 0) and np.allclose(m["attention_js_divergence"], 0)
    for key in ("attention_pattern_correlation", "attention_spearman", "value_weighted_correlation",
                "value_output_correlation"):
        assert np.allclose(m[key], 1), key
    assert m["max_attention_diff"].shape == (6, 12)


PAIRS = [Pair(f"n{i}", o, c, kind="copula", target="not") for i, (o, c) in enumerate([
    ("The robin is a bird.", "The robin is not a bird."), ("The soup is hot.", "The soup is not hot."),
    ("She can swim.", "She cannot swim."), ("He always lies.", "He never lies."),
    ("The door was open.", "The door wasn't open."), ("There is a cat here.", "There is no cat here."),
    ("We like tea.", "We do not like tea."), ("The plan worked.", "The plan never worked."),
    ("It is raining.", "It is not raining."), ("The shop is open.", "The shop isn't open."),
    ("They were late.", "They were not late."), ("He will come.", "He will not come.")])]
SWAPS = [Pair(f"s{i}", p.original, p.original.replace(p.original.split()[1], "thing", 1),
              kind="noun-swap", group=p.id) for i, p in enumerate(PAIRS)]


def test_study_live_and_stored_give_identical_tables(minilm, tmp_path):
    model, tokenizer = minilm
    sets = {"pairs": PAIRS, "baseline": SWAPS}
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted", "z"]) as p:
        from probe.study import pair_texts

        texts, metas = pair_texts(sets)
        live = p.run(texts, meta=metas)
        capture_pairs(p, sets, tmp_path / "run.h5").close()
    with open_run(tmp_path / "run.h5") as run:
        stored_tables = pair_tables(run)
        result = analyze(run, tmp_path / "out", n_resamples=200, figures=True)
    live_tables = pair_tables(live)
    for name in ("pairs", "baseline"):
        assert live_tables[name].ids == stored_tables[name].ids
        for metric, values in live_tables[name].metrics.items():
            np.testing.assert_array_equal(values, stored_tables[name].metrics[metric], err_msg=metric)
    live_stats = analyze(live, tmp_path / "live", n_resamples=200, figures=False).stats
    for a, b in zip(live_stats, result.stats):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == b[k] or (isinstance(a[k], float) and np.isnan(a[k]) and np.isnan(b[k])), k
    rows = list(csv.DictReader(open(tmp_path / "out" / "stats.csv")))
    assert len(rows) == 12 * 72  # 8 comparison + 4 cue metrics, 6 layers x 12 heads
    tests = {r["metric"]: r["test"] for r in rows}
    assert tests["cue_attention_in"] == "paired exact sign-flip" or "sign-flip" in tests["cue_attention_in"]
    assert "paired" in tests["mean_attention_diff"]
    assert (tmp_path / "out" / "summary.md").read_text().startswith("# Counterfactual study")
    figures = sorted(p.name for p in (tmp_path / "out" / "figures").iterdir())
    assert "cue_attention_by_layer.svg" in figures and any(f.startswith("pair_n0_") for f in figures)


def test_cli_negation_and_analyze(tmp_path, tiny_model_dir):
    from probe.cli import main

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"id": p.id, "original": p.original,
                                           "counterfactual": p.counterfactual, "kind": p.kind})
                               for p in PAIRS) + "\n")
    out = tmp_path / "study"
    assert main(["negation", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--no-baseline",
                 "--out", str(out), "--resamples", "100", "--quiet"]) == 0
    for name in ("run.h5", "stats.csv", "pairs.csv", "pair_alignments.csv", "summary.md"):
        assert (out / name).exists(), name
    again = tmp_path / "again"
    assert main(["analyze", str(out / "run.h5"), "--out", str(again), "--resamples", "100"]) == 0
    assert (out / "stats.csv").read_text() == (again / "stats.csv").read_text()
    assert main(["negation", "--model", str(tiny_model_dir), "--pairs", str(pairs), "--out",
                 str(out), "--quiet", "--no-baseline"]) == 2  # run.h5 exists, no --resume
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "original": "X.", "counterfactual": "X."}\n')
    assert main(["counterfactual", "--pairs", str(bad), "--out", str(tmp_path / "b")]) == 2
