"""Figures: functions take arrays (or examples) and return a matplotlib Figure; they never save.

Every figure that shows a colour scale has a labelled colour bar, every pattern has its tokens
on both axes (query down the side, key along the top or bottom), sizes are capped (at most
``MAX_INCHES`` wide, an aspect no wider than ``MAX_ASPECT``: a one-layer head grid wraps its
heads into rows), and every token and title is drawn literally (``parse_math=False``: a token
``$x$`` is not mathtext).

Imports matplotlib, numpy and :mod:`probe.names` (and, inside functions, :mod:`probe.outputs`).

>>> import numpy as np
>>> fig = metric_heatmap(np.arange(6.0).reshape(2, 3), np.eye(2, 3, dtype=bool), "demo")
>>> len(fig.axes)
2
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.patches import Rectangle

from .names import key, layers_of


#: no figure is wider than this (inches), nor wider than MAX_ASPECT times its height
MAX_INCHES = 18.0
MAX_ASPECT = 3.0
LITERAL = {"parse_math": False}  # tokens and titles are text, never mathtext


def _size(width: float, height: float) -> tuple[float, float]:
    """(width, height) in inches, scaled down to MAX_INCHES and padded to MAX_ASPECT."""
    scale = min(1.0, MAX_INCHES / width, MAX_INCHES / height)
    width, height = width * scale, height * scale
    return width, max(height, width / MAX_ASPECT)


def _token_ticks(ax, tokens_q, tokens_k, *, fontsize: float = 7, top: bool = False, room: float = 0.0):
    """Query tokens down the side, key tokens along the bottom (or top), drawn literally; with
    more tokens than ``room`` (points along an axis) allows at ``fontsize``, every k-th."""
    for tokens, axis in ((tokens_k, ax.xaxis), (tokens_q, ax.yaxis)):
        n = len(tokens)
        every = max(1, int(np.ceil(n * (fontsize + 1) / room))) if room else 1
        ticks = list(range(0, n, every))
        axis.set_ticks(ticks, [tokens[t] for t in ticks], fontsize=fontsize, **LITERAL,
                       **({"rotation": 90} if axis is ax.xaxis else {}))
    if top:
        ax.xaxis.tick_top()


def _pattern_panel(ax, matrix, tokens_q, tokens_k, title, vmax=None, *, room=0.0, cmap="viridis",
                   vmin=0.0):
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    _token_ticks(ax, tokens_q, tokens_k, fontsize=7, room=room)
    ax.set_xlabel("key")
    ax.set_ylabel("query")
    ax.set_title(title, fontsize=9, **LITERAL)
    return im


def pair_figure(original, counterfactual, layer: int, head: int, *, title: str | None = None):
    """Four panels for one pair at one layer and head: original and counterfactual patterns,
    original and counterfactual value-weighted patterns, with token labels on both axes."""
    key_p, key_v = key(layer, "pattern"), key(layer, "value_weighted")
    fig, axes = plt.subplots(2, 2, figsize=(11, 10), constrained_layout=True)
    vw_max = max(float(original[key_v][head].max()), float(counterfactual[key_v][head].max()))
    for col, (name, ex) in enumerate((("original", original), ("counterfactual", counterfactual))):
        im_p = _pattern_panel(axes[0, col], ex[key_p][head], ex.tokens, ex.tokens,
                              f"{name}: attention (layer {layer}, head {head})", vmax=1.0, room=280)
        im_v = _pattern_panel(axes[1, col], ex[key_v][head], ex.tokens, ex.tokens,
                              f"{name}: value-weighted ||alpha f(x)||", vmax=vw_max, room=280)
    fig.colorbar(im_p, ax=axes[0, :], shrink=0.8, label="attention weight (one scale, 0 to 1)")
    fig.colorbar(im_v, ax=axes[1, :], shrink=0.8, label="||alpha f(x)|| (one scale for both sides)")
    if title:
        fig.suptitle(title, fontsize=10, **LITERAL)
    return fig


def metric_heatmap(values, significant, title: str, *, label: str = "", center: float | None = None):
    """Layer x head heatmap of ``values`` [layer, head]; cells not significant are hatched."""
    values = np.asarray(values, dtype=float)
    layers, heads = values.shape
    fig, ax = plt.subplots(figsize=_size(max(4, 0.45 * heads + 2), max(3, 0.45 * layers + 1.5)),
                           constrained_layout=True)
    if center is not None:
        span = np.nanmax(np.abs(values - center)) or 1.0
        im = ax.imshow(values, cmap="RdBu_r", vmin=center - span, vmax=center + span, aspect="auto")
    else:
        im = ax.imshow(values, cmap="viridis", aspect="auto")
    for layer in range(layers):
        for head in range(heads):
            if significant is None or not significant[layer, head]:
                ax.add_patch(Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, hatch="///",
                                       edgecolor="0.6", linewidth=0))
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title + ("\n(hatched: not significant, q > 0.05)" if significant is not None else ""),
                 fontsize=9, **LITERAL)
    fig.colorbar(im, ax=ax, label=label or "value")
    return fig


def contrast_heatmaps(panels: dict, title: str, *, label: str = "", center: float | None = 0.0):
    """Layer x head heatmaps side by side on ONE colour scale, one panel per group (kind).

    ``panels``: ``name -> (values [layer, head], significant [layer, head] or None, hatch)``;
    ``hatch`` says what a hatched cell means ("not significant (q > 0.05)", or why a contrast
    is descriptive, in which case every cell is hatched). NaN cells (no pairs) are grey.

    >>> v = np.arange(6.0).reshape(2, 3) - 2
    >>> fig = contrast_heatmaps({"copula": (v, v > 1, "not significant (q > 0.05)")}, "demo")
    >>> len(fig.axes)
    2
    """
    names = list(panels)
    stack = np.stack([np.asarray(panels[n][0], dtype=float) for n in names])
    layers, heads = stack.shape[1:]
    cols = min(len(names), 3)
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * max(3.2, 0.32 * heads + 1.4) + 1.2,
                                                  rows * max(2.4, 0.32 * layers + 1.2) + 0.8),
                             squeeze=False, constrained_layout=True)
    finite = stack[np.isfinite(stack)]
    if center is not None:
        span = float(np.abs(finite - center).max()) if finite.size else 1.0
        norm = dict(cmap="RdBu_r", vmin=center - (span or 1.0), vmax=center + (span or 1.0))
    else:
        norm = dict(cmap="viridis", vmin=float(finite.min()) if finite.size else 0,
                    vmax=float(finite.max()) if finite.size else 1)
    cmap = plt.get_cmap(norm.pop("cmap")).with_extremes(bad="0.85")
    hatches = set()
    for ax, name, values in zip(axes.flat, names, stack):
        _, sig, hatch = panels[name]
        im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", **norm)
        hatched = np.isfinite(values) & (True if sig is None else ~np.asarray(sig, dtype=bool))
        if hatched.any():  # one collection of hatched cells, not one patch per cell
            edges_x, edges_y = np.arange(heads + 1) - 0.5, np.arange(layers + 1) - 0.5
            ax.pcolor(edges_x, edges_y, np.ma.masked_where(~hatched, np.ones(hatched.shape)),
                      hatch="///", facecolor="none", edgecolor="0.55", linewidth=0)
        hatches.add(hatch)
        ax.set_title(name, fontsize=9, parse_math=False)
        ax.set_xticks(range(heads))
        ax.set_yticks(range(layers))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("head", fontsize=8)
        ax.set_ylabel("layer", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, label=label, shrink=0.9)
    note = "; ".join(sorted(h for h in hatches if h))
    fig.suptitle(title + (f"\nhatched: {note}; grey: no pairs" if note else ""), fontsize=9,
                 parse_math=False)
    return fig


def cue_by_layer(layers, series: dict):
    """Attention to and from the cue per layer, each series ``name -> (mean [layer],
    (low [layer], high [layer]))``; names ending in "control" (the control's edit) are dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True, sharex=True)
    panels = (("cue_attention_in", "attention to the cue (from other tokens)"),
              ("cue_attention_out", "attention from the cue (to other tokens)"))
    for ax, (metric, title) in zip(axes, panels):
        for name, (mean, (low, high)) in series.items():
            if not name.startswith(metric):
                continue
            style = "--" if name.endswith("control") else "-"
            label = "the control's neutral word" if name.endswith("control") else "the cue"
            ax.plot(layers, mean, style, marker="o", label=label)
            ax.fill_between(layers, low, high, alpha=0.2)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("layer")
        ax.set_ylabel("attention mass (mean over heads and pairs, 95% CI)")
        ax.legend(fontsize=8)
    return fig


def save(fig, path_without_suffix) -> list[str]:
    """Write ``fig`` as PNG and SVG; returns the paths. (The one place figures touch disk.)"""
    from .outputs import atomic_path

    paths = []
    try:
        for suffix in (".png", ".svg"):
            path = f"{path_without_suffix}{suffix}"
            with atomic_path(path) as tmp:  # a crash never leaves a half-written image
                fig.savefig(tmp, dpi=130, format=suffix[1:])
            paths.append(path)
    finally:
        plt.close(fig)
    return paths


def pattern_figure(example, layer: int, head: int, *, value_weighted: bool = False):
    """One head's pattern (or value-weighted pattern) with token labels on both axes and a
    colour bar; at most ``MAX_INCHES`` a side (long sentences label every k-th token)."""
    name = key(layer, "value_weighted" if value_weighted else "pattern")
    n = len(example.tokens)
    width, height = _size(max(4, 0.3 * n + 2.5), max(3.5, 0.3 * n + 1.5))
    fig, ax = plt.subplots(figsize=(width, height), constrained_layout=True)
    im = _pattern_panel(ax, example[name][head], example.tokens, example.tokens,
                        f"layer {layer}, head {head}" + (" (value-weighted)" if value_weighted else ""),
                        vmax=None if value_weighted else 1.0, room=72 * (height - 1.5))
    fig.colorbar(im, ax=ax, label="||alpha f(x)||" if value_weighted else "attention weight (0 to 1)")
    return fig


def _grid_shape(layers: int, heads: int) -> tuple[int, int]:
    """(rows, columns) of a layer x head grid: one row per layer unless that is wider than
    MAX_ASPECT; then each layer's heads wrap into the fewest rows that fit.

    >>> _grid_shape(6, 12), _grid_shape(1, 12), _grid_shape(1, 7)
    ((6, 12), (2, 6), (2, 4))
    """
    per_layer = 1
    while -(-heads // per_layer) > MAX_ASPECT * layers * per_layer:
        per_layer += 1
    return layers * per_layer, -(-heads // per_layer)


def head_grid(example, layers=None):
    """Small multiples of every head's pattern for one example on one colour scale (0 to 1,
    with a colour bar): rows are layers (a layer's heads wrap into several rows when one row
    would be too wide), columns heads; the left column carries the query tokens, the bottom
    row the key tokens.

    >>> from probe.captures import Example
    >>> p = np.full((12, 3, 3), 1 / 3)
    >>> fig = head_grid(Example(["[CLS]", "$x$", "[SEP]"], ["blocks.0.attn.pattern"], lambda k: p))
    >>> w, h = fig.get_size_inches(); bool(w / h <= MAX_ASPECT)
    True
    """
    layers = list(layers) if layers is not None else sorted(layers_of(example, "pattern"))
    heads = example[key(layers[0], "pattern")].shape[0]
    tokens, n = example.tokens, len(example.tokens)
    rows, cols = _grid_shape(len(layers), heads)
    wrapped = rows > len(layers)
    side = min(1.3, (MAX_INCHES - 2.2) / cols, (MAX_INCHES - 1.8) / rows)
    label_in = min(1.1, 0.06 * max(len(t) for t in tokens) + 0.2)  # room for the token labels
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + label_in + 1.1, side * rows + label_in + 0.6),
                             squeeze=False, constrained_layout=True)
    font = max(3.0, min(6.0, 72 * side * 0.8 / n - 1))
    for k, (layer, h) in enumerate((l, h) for l in layers for h in range(heads)):
        ax = axes.flat[k]
        im = ax.imshow(example[key(layer, "pattern")][h], cmap="viridis", vmin=0, vmax=1,
                       interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        r, c = divmod(k, cols)
        if wrapped:
            ax.set_title(f"layer {layer}, head {h}", fontsize=6)
        else:
            if r == 0:
                ax.set_title(f"head {h}", fontsize=7)
            if c == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=7)
        if c == 0 or r == rows - 1:
            _token_ticks(ax, tokens if c == 0 else [], tokens if r == rows - 1 else [],
                         fontsize=font, room=72 * side)
    for ax in list(axes.flat)[len(layers) * heads:]:
        ax.axis("off")
    fig.colorbar(im, ax=axes, shrink=max(0.5, min(0.9, 4.0 / (rows * side))),
                 label="attention weight (0 to 1)")
    fig.suptitle(" ".join(tokens)[:120] + "  (rows: queries, columns: keys)", fontsize=8, **LITERAL)
    return fig


def first_token_bars(values, *, title: str = "attention to the first token"):
    """Bar chart of first-token attention ``[layer, head]``: one group of bars per layer, each
    bar a head, coloured by head index (colour bar)."""
    values = np.asarray(values, dtype=float)
    layers, heads = values.shape
    fig, ax = plt.subplots(figsize=_size(max(6, 0.12 * layers * heads + 3), 3.5), constrained_layout=True)
    width = 0.8 / heads
    cmap = plt.get_cmap("viridis")
    for h in range(heads):
        ax.bar(np.arange(layers) + h * width - 0.4 + width / 2, values[:, h], width,
               color=cmap(h / max(heads - 1, 1)))
    ax.set_xticks(range(layers), [f"layer {l}" for l in range(layers)])
    ax.set_ylabel("mean attention on first token")
    ax.set_ylim(0, 1)
    ax.set_title(title + f" (bars: heads 0..{heads - 1})", fontsize=9, **LITERAL)
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm

    norm = BoundaryNorm(np.arange(heads + 1) - 0.5, cmap.N)
    bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, label="head",
                       ticks=range(0, heads, max(1, heads // 12)))
    bar.ax.tick_params(labelsize=7)
    return fig


def token_importance_figure(tokens, importances: dict):
    """Token importance over the sentence, one bar series per method (``name -> [token]``)."""
    n = len(tokens)
    size = _size(max(6, 0.45 * n + 2), 3.5)
    fig, ax = plt.subplots(figsize=size, constrained_layout=True)
    width = 0.8 / max(len(importances), 1)
    for k, (name, values) in enumerate(importances.items()):
        ax.bar(np.arange(n) + k * width - 0.4 + width / 2, values, width, label=name)
    every = max(1, int(np.ceil(n * 9 / (72 * (size[0] - 1.5)))))
    ax.set_xticks(range(0, n, every), tokens[::every], rotation=60, fontsize=8, **LITERAL)
    ax.set_ylabel("importance (sums to 1)")
    ax.legend(fontsize=8)
    return fig
