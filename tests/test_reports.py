"""probe metrics, probe compare-models and the static figures."""

from __future__ import annotations

import csv
import json

import numpy as np

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


def test_compare_models_command(tmp_path, tiny_model_dir):
    from probe.cli import main

    assert main(["compare-models", "bundled", str(tiny_model_dir), "--out", str(tmp_path / "c"),
                 "--rounds", "1"]) == 0
    arch = _rows(tmp_path / "c" / "architecture.csv")
    assert [(r["layers"], r["heads"], r["hidden"]) for r in arch] == [("6", "12", "384"), ("2", "4", "32")]
    assert int(arch[0]["parameters"]) > 20_000_000
    speed = _rows(tmp_path / "c" / "speed.csv")
    assert all(float(r["forward_sentences_per_s"]) > 0 and float(r["capture_over_forward"]) > 0 for r in speed)
    assert (tmp_path / "c" / "comparison.md").read_text().startswith("# Model comparison")


def test_static_figures_show_the_data(minilm):
    model, tokenizer = minilm
    with AttentionProbe(model, tokenizer, keys=["pattern", "value_weighted"]) as p:
        ex = p.run(["The robin is not a bird."])[0]
    fig = plots.pattern_figure(ex, 3, 7)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), ex["blocks.3.attn.pattern"][7])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ex.tokens
    grid = plots.head_grid(ex)
    assert len(grid.axes) == 6 * 12
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
