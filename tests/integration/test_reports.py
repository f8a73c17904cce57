"""probe metrics, probe compare-models and the static figures."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from probe import AttentionProbe
from probe import metrics as M
from probe import plots


def _rows(path):
    return list(csv.DictReader(open(path, encoding="utf-8")))


def test_metrics_command_groups_by_metadata(minilm, tmp_path):
    from probe.cli import main

    model, tokenizer = minilm
    src = tmp_path / "in.jsonl"
    src.write_text("\n".join(json.dumps({"id": i, "text": t, "domain": d}) for i, (t, d) in enumerate([
        ("Dogs bark at night.", "animals"), ("Cats sleep all day.", "animals"),
        ("The market fell sharply.", "finance"), ("No.", "finance")])) + "\n")
    assert main(["capture", str(src), "--out", str(tmp_path / "r.h5"), "--keys", "pattern,value_weighted",
                 "--quiet"]) == 0
    assert main(["metrics", str(tmp_path / "r.h5"), "--out", str(tmp_path / "m"), "--group-by", "domain"]) == 0
    per_example = _rows(tmp_path / "m" / "example_metrics.csv")
    assert len(per_example) == 4 * 6 * 12
    by = _rows(tmp_path / "m" / "by_domain.csv")
    assert {r["domain"] for r in by} == {"animals", "finance"} and len(by) == 2 * 72
    summary = _rows(tmp_path / "m" / "head_summary.csv")
    assert len(summary) == 72 and all(r["class"] for r in summary)
    # the animals mean equals the mean of its two examples' rows (layer 2, head 3)
    vals = [float(r["entropy"]) for r in per_example
            if r["domain"] == "animals" and r["layer"] == "2" and r["head"] == "3"]
    row = next(r for r in by if r["domain"] == "animals" and r["layer"] == "2" and r["head"] == "3")
    assert abs(float(row["entropy"]) - np.mean(vals)) < 1e-5
    imp = _rows(tmp_path / "m" / "token_importance.csv")
    assert {"raw", "value_weighted", "rollout"} <= set(imp[0])
    # "No." has a function word and no content word: the ratio is left empty (NaN), not an error
    no_rows = [r for r in per_example if r["example"] == "3"]
    assert all(r["content_function_ratio"] == "" for r in no_rows)


def test_compare_models_command(tmp_path, tiny_model_dir, minilm):
    from probe.cli import main
    from probe.comparison import SUMMARY, cls_row_metrics

    src = tmp_path / "in.jsonl"
    texts = [("Dogs bark at night.", "animals"), ("Cats sleep all day.", "animals"),
             ("The market fell sharply.", "finance")]
    src.write_text("\n".join(json.dumps({"text": t, "domain": d}) for t, d in texts) + "\n")
    out = tmp_path / "c"
    assert main(["compare-models", "bundled", str(tiny_model_dir), "--texts", str(src), "--out", str(out),
                 "--rounds", "1", "--group-by", "domain"]) == 0
    arch = _rows(out / "architecture.csv")
    assert [(r["layers"], r["heads"], r["hidden"]) for r in arch] == [("6", "12", "384"), ("2", "4", "32")]
    assert int(arch[0]["parameters"]) > 20_000_000
    # speed and peak memory, both models measured in this run
    speed = _rows(out / "speed.csv")
    assert len(speed) == 2
    for r in speed:
        assert float(r["forward_sentences_per_s"]) > 0 and float(r["capture_over_forward"]) > 0
        assert float(r["forward_peak_mib"]) >= 0 and float(r["capture_peak_mib"]) >= 0 and r["memory_method"]
    assert float(speed[0]["weights_mib"]) > 50 > float(speed[1]["weights_mib"])
    # both first-token families, named for what they read
    metrics = _rows(out / "metrics.csv")
    assert {r["group"] for r in metrics} == {"all", "domain=animals", "domain=finance"}
    assert {"cls_row_entropy", "cls_row_max", "to_first_token", "to_first_token_max"} <= set(metrics[0])
    # per model and sentence; the bundled model's [CLS] row and column metrics recomputed here
    sentences = _rows(out / "sentences.csv")
    assert len(sentences) == 2 * len(texts) and [r["domain"] for r in sentences[:3]] == ["animals", "animals", "finance"]
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
        ex = p.run([texts[2][0]])[0]
    stack = np.stack([ex[f"blocks.{l}.attn.pattern"] for l in range(6)])
    row = sentences[2]
    assert row["text"] == texts[2][0] and int(row["tokens"]) == len(ex.tokens)
    assert float(row["cls_row_max"]) == pytest.approx(stack[..., 0, :].max(-1).mean(), abs=1e-4)
    assert float(row["cls_row_entropy"]) == pytest.approx(cls_row_metrics(stack)["cls_row_entropy"].mean(), abs=1e-4)
    assert float(row["to_first_token"]) == pytest.approx(stack[..., :, 0].mean(), abs=1e-4)
    overall = next(r for r in metrics if r["model"] == row["model"] and r["group"] == "all")
    for m in SUMMARY[:5]:
        assert float(overall[m]) == pytest.approx(np.mean([float(r[m]) for r in sentences[:3]]), abs=1e-4)
    # charts: per-model bars per metric, per metric x domain, speed and memory
    for name in ("metrics", "metrics_by_domain", "speed_memory"):
        png = out / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    report = (out / "comparison.md").read_text()
    assert report.startswith("# Model comparison") and "sentences.csv" in report and "cls_row_max" in report


def test_cls_row_metrics_on_a_causal_pattern():
    from probe.comparison import cls_row_metrics

    causal = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    got = cls_row_metrics(causal[None])
    assert got["cls_row_entropy"].tolist() == [0.0] and got["cls_row_max"].tolist() == [1.0]
    assert np.isnan(got["cls_row_entropy_norm"][0])  # the first row of a causal model has no choice


def test_static_figures_show_the_data(minilm):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted"]) as p:
        ex = p.run(["The robin is not a bird."])[0]
    fig = plots.pattern_figure(ex, 3, 7)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), ex["blocks.3.attn.pattern"][7])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ex.tokens
    grid = plots.head_grid(ex)
    assert len(grid.axes) == 6 * 12 + 1  # and one colour bar
    np.testing.assert_allclose(grid.axes[12 * 2 + 5].images[0].get_array(), ex["blocks.2.attn.pattern"][5])
    first = M.first_token_attention(np.stack([ex[f"blocks.{l}.attn.pattern"] for l in range(6)]))
    bars = plots.first_token_bars(first)
    heights = sorted(b.get_height() for b in bars.axes[0].patches)
    np.testing.assert_allclose(heights, np.sort(first.ravel()))
    imp = {m: M.token_importance(ex, m) for m in ("raw", "value_weighted", "rollout")}
    fig = plots.token_importance_figure(ex.tokens, imp)
    assert len(fig.axes[0].patches) == 3 * len(ex.tokens)
    for f in (fig, bars, grid):
        plots.plt.close(f)
