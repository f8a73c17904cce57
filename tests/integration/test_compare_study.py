"""Per-pair comparisons with controls on hand-computed examples; the study live vs stored; CLI."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from probe import AttentionProbe, InputError, open_run
from probe.captures import Capture, Example
from probe.pair_compare import align_pair, compare_pair
from probe.design import plan_pairs
from probe.pairs import Pair
from probe.study import STATS_COLUMNS, STUDY_COMPONENTS, capture_pairs, pair_tables, pair_texts
from probe.study_report import analyze


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


CTRL = ["[CLS]", "it", "really", "rains", "[SEP]"]
P_CTRL = [[1.0, 0.0, 0.0, 0.0, 0.0],
          [0.5, 0.25, 0.25, 0.0, 0.0],
          [0.2, 0.2, 0.2, 0.2, 0.2],
          [0.5, 0.0, 0.25, 0.25, 0.0],
          [0.2, 0.2, 0.2, 0.2, 0.2]]


def _view():
    return align_pair(ORIG, CF, CTRL, cue=[2])


def test_three_way_alignment_leaves_out_cue_and_edit():
    v = _view()
    assert v.original.tolist() == [0, 1, 2, 3] and v.counterfactual.tolist() == [0, 1, 3, 4]
    assert v.control.tolist() == [0, 1, 3, 4] and v.cue.tolist() == [2] and v.edit.tolist() == [2]
    assert v.content.tolist() == [False, True, True, False]
    # a token matched in the counterfactual but edited in the control is not aligned
    v2 = align_pair(ORIG, CF, ["[CLS]", "it", "pours", "[SEP]"], cue=[2])
    assert v2.original.tolist() == [0, 1, 3] and v2.edit.tolist() == [2]


def test_metrics_on_a_hand_computed_pair_and_control():
    names = ["max_attention_diff", "mean_attention_diff", "attention_js_divergence", "first_token_shift",
             "cue_attention_in", "cue_attention_out"]
    cf, ctrl = compare_pair(_example(ORIG, P_ORIG), _example(CF, P_CF), _example(CTRL, P_CTRL), _view(),
                            layers=[0], metrics=names)
    rows = [0, 1, 3, 4]
    a = np.array(P_ORIG)
    for values, p in ((cf, np.array(P_CF)), (ctrl, np.array(P_CTRL))):
        b = p[np.ix_(rows, rows)]
        assert values["max_attention_diff"][0, 0] == pytest.approx(np.abs(a - b).max())
        assert values["mean_attention_diff"][0, 0] == pytest.approx(np.abs(a - b).mean())
        # JS per aligned row with a rest bin for the edited key
        js = []
        for i in range(4):
            pr, qr = np.append(a[i], 1 - a[i].sum()), np.append(b[i], 1 - b[i].sum())
            m = (pr + qr) / 2
            kl = lambda x: np.sum(x[x > 0] * np.log(x[x > 0] / m[x > 0]))  # noqa: E731  (0 log 0 = 0)
            js.append(0.5 * kl(pr) + 0.5 * kl(qr))
        assert values["attention_js_divergence"][0, 0] == pytest.approx(np.mean(js))
        # first-token shift on the content queries "it", "rains" (positions 1, 2 / 1, 3)
        assert values["first_token_shift"][0, 0] == pytest.approx(p[[1, 3], 0].mean() - a[[1, 2], 0].mean())
        # mass on the cue / the control's edit (position 2) from "it" and "rains", and back
        assert values["cue_attention_in"][0, 0] == pytest.approx(p[[1, 3], 2].mean())
        assert values["cue_attention_out"][0, 0] == pytest.approx(p[2, [1, 3]].sum())
    assert cf["cue_attention_in"][0, 0] == pytest.approx(0.5) and ctrl["cue_attention_in"][0, 0] == pytest.approx(0.25)


def test_value_metrics_by_hand():
    vw_o = np.arange(16.0).reshape(4, 4)
    vw_c = np.zeros((5, 5))
    vw_c[np.ix_([0, 1, 3, 4], [0, 1, 3, 4])] = vw_o + 1.0
    vw_c[:, 2] = [0, 2, 0, 6, 0]  # the cue column
    z_o = np.arange(8.0).reshape(4, 2)
    z_c = np.vstack([z_o[:2], [[9, 9]], z_o[2:]]) * 2
    cf, ctrl = compare_pair(_example(ORIG, P_ORIG, vw_o, z_o), _example(CF, P_CF, vw_c, z_c), None,
                            align_pair(ORIG, CF, cue=[2]), layers=[0],
                            metrics=["value_weighted_diff", "value_weighted_correlation",
                                     "value_output_correlation", "cue_value_share", "cue_value_spread"])
    assert ctrl is None
    assert cf["value_weighted_diff"][0, 0] == pytest.approx(1.0)
    assert cf["value_weighted_correlation"][0, 0] == pytest.approx(1.0)
    assert cf["value_output_correlation"][0, 0] == pytest.approx(1.0)
    share = np.mean([2 / vw_c[1].sum(), 6 / vw_c[3].sum()])
    assert cf["cue_value_share"][0, 0] == pytest.approx(share)
    d = np.array([2, 6]) / 8
    assert cf["cue_value_spread"][0, 0] == pytest.approx(-(d * np.log(d)).sum() / np.log(2))


def test_identical_sides_compare_as_identical(minilm):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted", "z"]) as p:
        a, b = p.run(["The robin is a bird.", "The robin is a bird."])
    cf, _ = compare_pair(a, b, None, align_pair(a.tokens, b.tokens), layers=range(6))
    assert np.allclose(cf["max_attention_diff"], 0) and np.allclose(cf["attention_js_divergence"], 0)
    assert np.allclose(cf["first_token_shift"], 0) and np.allclose(cf["entropy_shift"], 0)
    for name in ("attention_pattern_correlation", "attention_spearman", "value_weighted_correlation",
                 "value_output_correlation"):
        assert np.allclose(cf[name], 1), name
    assert cf["cue_attention_in"] is None  # no cue: not applicable
    assert cf["max_attention_diff"].shape == (6, 12)


NEG = [("The robin is a bird.", "The robin is not a bird."), ("The soup is hot.", "The soup is not hot."),
       ("She can swim.", "She cannot swim."), ("He always lies.", "He never lies."),
       ("The door was open.", "The door wasn't open."), ("There is a cat here.", "There is no cat here."),
       ("We like tea.", "We do not like tea."), ("The plan worked.", "The plan never worked."),
       ("It is raining.", "It is not raining."), ("The shop is open.", "The shop isn't open."),
       ("They were late.", "They were not late."), ("He will come.", "He will not come.")]
PAIRS = [Pair(f"n{i}", o, c, kind="copula" if i % 2 else "other") for i, (o, c) in enumerate(NEG)]


def test_study_live_and_stored_give_identical_tables(minilm, tmp_path):
    model, tokenizer = minilm
    plans = plan_pairs(PAIRS + [Pair("dup", *NEG[0], kind="other")])
    with AttentionProbe(model, tokenizer, keys=STUDY_COMPONENTS) as p:
        texts, metas = pair_texts(plans)
        live = p.run(texts, meta=metas)
        capture_pairs(p, plans, tmp_path / "run.h5").close()
    with open_run(tmp_path / "run.h5") as run:
        stored = pair_tables(run)["pairs"]
        result = analyze(run, tmp_path / "out", n_resamples=200, figures=True)
    table = pair_tables(live)["pairs"]
    assert table.ids == stored.ids and table.excluded == stored.excluded
    assert table.excluded[-1] == "duplicate of n0" and not any(table.excluded[:-1])
    for metric, values in table.values.items():
        np.testing.assert_array_equal(values, stored.values[metric], err_msg=metric)
        np.testing.assert_array_equal(table.control[metric], stored.control[metric], err_msg=metric)
    live_stats = analyze(live, tmp_path / "live", n_resamples=200, figures=False).stats
    assert len(live_stats) == len(result.stats)
    for a, b in zip(live_stats, result.stats):
        for k in a:
            assert a[k] == b[k] or (isinstance(a[k], float) and np.isnan(a[k]) and np.isnan(b[k])), k
    out = tmp_path / "out"
    rows = list(csv.DictReader(open(out / "stats.csv")))
    assert list(rows[0]) == STATS_COLUMNS
    # 14 metrics x 2 contrasts x 2 kinds x 72 heads, each row from one kind's pairs
    assert len(rows) == 14 * 2 * 2 * 72
    assert {r["kind"] for r in rows} == {"copula", "other"}
    assert {(r["kind"], r["n_pairs"]) for r in rows if r["metric"] == "mean_attention_diff"} == {
        ("copula", "6"), ("other", "6")}
    for r in rows:
        if r["test"].startswith("descriptive"):
            assert r["p"] == r["q"] == r["effect_size"] == "" and r["contrast"] == "negation_vs_original"
        else:
            assert 0 < float(r["p"]) <= 1 and r["log10_p"] != ""
    pairs = list(csv.DictReader(open(out / "pairs.csv")))
    assert [r["id"] for r in pairs] == [p.id for p in PAIRS] + ["dup"]
    assert pairs[-1]["excluded"] == "duplicate of n0" and pairs[0]["cue"] == "not"
    assert pairs[0]["control_source"] == "auto" and pairs[0]["cue_source"] == "detected"
    summary = (out / "summary.md").read_text()
    assert summary.startswith("# Negation study") and "## copula" in summary and "## other" in summary
    assert "left out: duplicate 1" in summary
    assert "not the word: a selective head treats the cue unlike the control's word" in summary
    figures = sorted(p.name for p in (out / "figures").iterdir())
    assert "cue_attention_by_layer.svg" in figures and any(f.startswith("pair_n0_") for f in figures)
    assert "heatmap_mean_attention_diff_negation_vs_control.png" in figures
    assert (out / "COMPLETE.json").exists()


def test_non_finite_metric_stops_the_study_naming_the_pair(tmp_path):
    pat = np.full((1, 4, 4), 0.25)  # constant pattern: correlations are undefined
    ex = Example(ORIG, ["blocks.0.attn.pattern"], lambda k: pat, text="it rains",
                 meta={"pair_id": "p/1", "side": "original", "study": "negation"})
    cf = Example(CF, ["blocks.0.attn.pattern"], lambda k: np.full((1, 5, 5), 0.2), text="it not rains",
                 meta={"pair_id": "p/1", "side": "counterfactual", "study": "negation"})
    cap = Capture.__new__(Capture)
    cap_examples = [ex, cf]

    class Two:
        layers = (0,)

        def metas(self):
            return [e.meta for e in cap_examples]

        def __getitem__(self, i):
            return cap_examples[i]

    del cap
    with pytest.raises(InputError, match=r"pair 'p/1': attention_pattern_correlation of the counterfactual is nan"):
        pair_tables(Two(), metrics=["attention_pattern_correlation"])


def _pair_file(path, pairs, **extra):
    path.write_text("\n".join(json.dumps({"id": p.id, "original": p.original, "counterfactual": p.counterfactual,
                                          "kind": p.kind, **extra}) for p in pairs) + "\n", encoding="utf-8")
    return path


def test_cli_negation_analyze_and_odd_ids(tmp_path, tiny_model_dir, capsys):
    from probe.cli import main

    odd = ["a/b", "..", "with space", "naïve/ü", "x" * 300, "../../etc"]
    pairs = [Pair(odd[i] if i < len(odd) else p.id, p.original, p.counterfactual, kind=p.kind)
             for i, p in enumerate(PAIRS)]
    path = _pair_file(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "study"
    assert main(["negation", "--model", str(tiny_model_dir), "--pairs", str(path), "--out", str(out),
                 "--resamples", "100", "--quiet", "--example-pair", "naïve/ü"]) == 0
    for name in ("run.h5", "stats.csv", "pairs.csv", "pair_metrics.csv", "summary.md", "COMPLETE.json"):
        assert (out / name).exists(), name
    assert [r["id"] for r in csv.DictReader(open(out / "pairs.csv", encoding="utf-8"))] == [p.id for p in pairs]
    figures = [f.name for f in (out / "figures").iterdir()]
    assert any(f.startswith("pair_naive-") or f.startswith("pair_na-ve") for f in figures), figures
    assert all((out / "figures" / f).resolve().parent == (out / "figures").resolve() for f in figures)
    again = tmp_path / "again"
    assert main(["analyze", str(out / "run.h5"), "--out", str(again), "--resamples", "100",
                 "--example-pair", "naïve/ü"]) == 0
    assert (out / "stats.csv").read_text() == (again / "stats.csv").read_text()
    import shutil

    import h5py

    shutil.copy(out / "run.h5", tmp_path / "unfinished.h5")
    with h5py.File(tmp_path / "unfinished.h5", "r+") as f:  # as if the capture had stopped early
        f["state/complete"][0] = 0
    capsys.readouterr()
    assert main(["analyze", str(tmp_path / "unfinished.h5"), "--out", str(tmp_path / "u"),
                 "--resamples", "50"]) == 0
    assert "probe: warning: " in capsys.readouterr().err
    assert main(["negation", "--model", str(tiny_model_dir), "--pairs", str(path), "--out",
                 str(out), "--quiet"]) == 2  # run.h5 exists, no --resume
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "original": "X.", "counterfactual": "X."}\n')
    assert main(["counterfactual", "--pairs", str(bad), "--out", str(tmp_path / "b")]) == 2


def test_controls_modes_and_explicit_baseline(tmp_path, tiny_model_dir, capsys):
    from probe.cli import main

    with_field = [Pair(p.id, p.original, p.counterfactual, kind="k") for p in PAIRS]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps({"id": p.id, "original": p.original, "counterfactual": p.counterfactual,
                                          "kind": p.kind, **({"control": p.original.replace(" ", " also ", 1)}
                                                             if i < 8 else {})})
                              for i, p in enumerate(with_field)) + "\n")
    assert main(["cues", "--pairs", str(path), "--out", str(tmp_path / "cues.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "cues.csv")))
    assert [r["control_source"] for r in rows] == ["field"] * 8 + ["none"] * 4
    assert all("no control field" in r["control"] for r in rows[8:])
    assert main(["cues", "--pairs", str(path), "--controls", "auto", "--out", str(tmp_path / "a.csv")]) == 0
    assert {r["control_source"] for r in csv.DictReader(open(tmp_path / "a.csv"))} == {"auto"}
    baseline = _pair_file(tmp_path / "base.jsonl", [Pair(f"b{i}", p.original, p.original.replace(".", " here."))
                                                    for i, p in enumerate(PAIRS)])
    out = tmp_path / "s"
    assert main(["counterfactual", "--model", str(tiny_model_dir), "--pairs", str(path), "--baseline",
                 str(baseline), "--controls", "none", "--out", str(out), "--resamples", "50", "--quiet"]) == 0
    stats = list(csv.DictReader(open(out / "stats.csv")))
    # without controls there is no row against the control (a row needs pairs)
    assert {r["contrast"] for r in stats} == {"counterfactual_vs_original", "counterfactual_vs_baseline"}
    assert not any(r["metric"].startswith("cue_") and r["contrast"].endswith("baseline") for r in stats)
    summary = (out / "summary.md").read_text()
    assert "Baseline set `baseline`" in summary
    assert "rather than of the edit's meaning" in summary and "negation" not in summary.lower()


def test_kill_9_during_a_study_leaves_no_half_written_file(tmp_path, tiny_model_dir):
    """The study process is killed (SIGKILL) while it writes figures: every file in the folder
    is complete (atomic renames) and the missing COMPLETE.json marks the folder unfinished; a
    rerun with --resume finishes it."""
    import os
    import subprocess
    import sys

    path = _pair_file(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "study"
    script = (
        "import os, signal, sys\n"
        "import probe.plots as plots\n"
        "calls = []\n"
        "real = plots.save\n"
        "def save(fig, path):\n"
        "    calls.append(path)\n"
        "    if len(calls) == 3:\n"
        "        import matplotlib.figure\n"
        "        def die(*a, **k):\n"
        "            open(a[0], 'wb').write(b'half an image')\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "        fig.savefig = die\n"
        "    return real(fig, path)\n"
        "plots.save = save\n"
        "from probe.cli import main\n"
        f"sys.exit(main(['negation', '--model', {str(tiny_model_dir)!r}, '--pairs', {str(path)!r}, "
        f"'--out', {str(out)!r}, '--resamples', '50', '--quiet']))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr[-1000:]
    assert not (out / "COMPLETE.json").exists()
    figures = out / "figures"
    assert len([p for p in figures.iterdir() if p.name.endswith(".tmp")]) == 1  # killed mid-write
    assert all(p.stat().st_size > 1000 for p in figures.glob("*.png"))  # no half image under a final name
    for name in ("stats.csv", "pairs.csv"):  # what has its final name is complete
        rows = list(csv.DictReader(open(out / name, encoding="utf-8")))
        assert rows and all(None not in r.values() for r in rows)
    rows = list(csv.DictReader(open(out / "pairs.csv", encoding="utf-8")))
    assert len(rows) == len(PAIRS)
    from probe.cli import main

    assert main(["negation", "--model", str(tiny_model_dir), "--pairs", str(path), "--out", str(out),
                 "--resamples", "50", "--quiet", "--resume"]) == 0
    assert (out / "COMPLETE.json").exists()
    assert not [p for p in out.rglob("*.tmp")]  # the finished rerun leaves no temporary file


def test_summary_says_when_no_test_was_possible(tmp_path, tiny_model_dir):
    """With 1 cluster nothing is tested (the summary said "0/72" against the original and "No
    head is significant"); with 3 clusters the exact sign-flip cannot go below p = 0.25, so the
    summary says none could be significant rather than that none is."""
    from probe.cli import main

    for n, expected in ((1, "No test against the control for this kind: 1 cluster(s)"),
                        (3, "none could be: with 3 clusters the exact sign-flip test gives p >= 0.25")):
        texts = ["The cat is here.", "The dog runs fast.", "A bird sings."][:n]
        pairs = [Pair(f"p{i}", t, t.replace(" is ", " is not ").replace(" runs", " does not run")
                      .replace(" sings", " does not sing"))
                 for i, t in enumerate(texts)]  # unrelated originals: one cluster each
        out = tmp_path / f"s{n}"
        assert main(["negation", "--model", str(tiny_model_dir), "--pairs",
                     str(_pair_file(tmp_path / f"p{n}.jsonl", pairs)), "--out", str(out),
                     "--resamples", "50", "--quiet"]) == 0
        summary = (out / "summary.md").read_text()
        assert expected in summary and "No head is significant against the control for this kind.\n" not in summary
        line = next(row for row in summary.splitlines() if row.startswith("| first_token_shift |"))
        assert line.split(" | ")[2] == ("0/0" if n == 1 else "0/8"), line  # 2 layers x 4 heads
