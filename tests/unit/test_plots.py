"""Static figures: colour bars, token labels drawn literally, and sizes within bounds."""

from __future__ import annotations

import numpy as np
import pytest

from probe import plots
from probe.captures import Example

DPI = 130  # plots.save's resolution


def _example(layers: int, heads: int, tokens=None):
    tokens = tokens or ["[CLS]", "$x$", "costs", "$5", "and", "$y$", ".", "[SEP]"]
    n = len(tokens)
    rng = np.random.default_rng(layers * 100 + heads)
    stack = rng.random((layers, heads, n, n))
    stack /= stack.sum(-1, keepdims=True)
    return Example(tokens, [f"blocks.{l}.attn.pattern" for l in range(layers)], lambda k: stack[int(k.split(".")[1])])


def _literal(label) -> bool:
    """The tick label is drawn as the plain text it holds (not mathtext)."""
    text, ismath = label._preprocess_math(label.get_text())
    return ismath is False and text == label.get_text()


def _colorbars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


@pytest.mark.parametrize("layers, heads", [(1, 12), (6, 12)])
def test_head_grid_size_colour_bar_and_tokens(layers, heads):
    ex = _example(layers, heads)
    fig = plots.head_grid(ex)
    width, height = fig.get_size_inches() * DPI
    assert 300 <= width <= plots.MAX_INCHES * DPI and 300 <= height <= plots.MAX_INCHES * DPI
    assert width / height <= plots.MAX_ASPECT  # the old single-layer grid came out 2028 x 169 px
    panels = [ax for ax in fig.axes if ax.images and ax not in _colorbars(fig)]
    assert len(panels) == layers * heads
    bars = _colorbars(fig)
    assert len(bars) == 1 and "attention" in bars[0].get_ylabel()
    # the first panel carries the query tokens; the last panel of the bottom row the key tokens
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ex.tokens
    assert [t.get_text() for t in panels[-1].get_xticklabels()] == ex.tokens
    assert all(_literal(t) for t in panels[0].get_yticklabels() + panels[-1].get_xticklabels())
    np.testing.assert_allclose(panels[heads - 1].images[0].get_array(), ex["blocks.0.attn.pattern"][heads - 1])
    if layers == 1:  # renders: a "$x$" token neither raises nor turns into math (the same
        fig.canvas.draw()  # tokens and code at 6 x 12, where drawing 72 panels takes 3 s)
    plots.plt.close(fig)


def test_pattern_figure_tokens_literal_with_colour_bar():
    ex = _example(2, 4)
    fig = plots.pattern_figure(ex, 1, 2)
    ax = fig.axes[0]
    for labels in (ax.get_xticklabels(), ax.get_yticklabels()):
        assert [t.get_text() for t in labels] == ex.tokens
        assert all(_literal(t) for t in labels)
    assert "$x$" in [t.get_text() for t in ax.get_xticklabels()]
    assert len(_colorbars(fig)) == 1
    fig.canvas.draw()
    plots.plt.close(fig)


def test_long_sentence_figures_stay_bounded():
    tokens = ["[CLS]", *[f"w{i}" for i in range(198)], "[SEP]"]
    ex = _example(1, 2, tokens)
    fig = plots.pattern_figure(ex, 0, 1)
    width, height = fig.get_size_inches()
    assert width <= plots.MAX_INCHES and height <= plots.MAX_INCHES
    shown = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert shown[0] == "[CLS]" and set(shown) <= set(tokens) and len(shown) >= 50
    plots.plt.close(fig)
    imp = plots.token_importance_figure(tokens, {"raw": np.full(len(tokens), 1 / len(tokens))})
    assert imp.get_size_inches()[0] <= plots.MAX_INCHES
    plots.plt.close(imp)


def test_pair_and_bar_figures_have_colour_bars():
    a = _example(1, 2)
    vw = np.random.default_rng(0).random((2, 8, 8))
    ex = Example(a.tokens, ["blocks.0.attn.pattern", "blocks.0.attn.value_weighted"],
                 lambda k: a["blocks.0.attn.pattern"] if k.endswith("pattern") else vw, text="$x$ costs $5")
    fig = plots.pair_figure(ex, ex, 0, 1, title="$x$ costs $5 / $y$")
    assert len(_colorbars(fig)) == 2
    assert all(_literal(t) for ax in fig.axes[:4] for t in ax.get_xticklabels())
    assert fig._suptitle.get_text() == "$x$ costs $5 / $y$" and _literal(fig._suptitle)
    fig.canvas.draw()
    plots.plt.close(fig)
    bars = plots.first_token_bars(np.random.default_rng(1).random((6, 12)))
    assert len(_colorbars(bars)) == 1 and _colorbars(bars)[0].get_ylabel() == "head"
    assert bars.get_size_inches()[0] / bars.get_size_inches()[1] <= plots.MAX_ASPECT
    plots.plt.close(bars)
    heat = plots.metric_heatmap(np.arange(12.0).reshape(1, 12), None, "$x$ by head")
    assert len(_colorbars(heat)) == 1 and _literal(heat.axes[0].title)
    plots.plt.close(heat)
