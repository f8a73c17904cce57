"""Compare models on the same sentences: architecture, pattern metrics, speed and peak memory,
every model measured side by side in the same run.

Two families of "first token" metric, named for what they read:

- ``cls_row_*``: the first token's own ROW (query 0: what [CLS] or BOS attends to):
  ``cls_row_entropy`` (nats), ``cls_row_entropy_norm`` (divided by log of the keys it may
  attend to; empty for a causal model, whose first row can only attend to itself) and
  ``cls_row_max`` (its largest weight).
- ``to_first_token*``: the first token's COLUMN (key 0: attention every query pays TO it):
  ``to_first_token`` (mean over queries) and ``to_first_token_max`` (max over queries).

One job: the rows, tables and charts of a comparison (:func:`compare_models`,
:func:`write_charts`); speed and peak memory are measured by :mod:`probe.model_speed` (the
method used is written in ``speed.csv``). Imports numpy, :mod:`probe.metrics`,
:mod:`probe.capture`, :mod:`probe.model_speed`, :mod:`probe.models`, :mod:`probe.names` (and,
inside the chart functions, :mod:`probe.plots`).

>>> from probe.comparison import architecture
>>> from probe import load_model
>>> architecture(load_model()[0])["heads"]
12
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from . import metrics as M
from .capture import AttentionProbe
from .model_speed import speed_row
from .models import load_model
from .names import key, layers_of

SUMMARY = ("cls_row_entropy", "cls_row_entropy_norm", "cls_row_max", "to_first_token",
           "to_first_token_max", "sink_share", "self", "previous", "next", "local", "distance",
           "entropy_norm", "content_function_ratio")

#: what each metric reads, for the report
DEFINITIONS = {
    "cls_row_entropy": "entropy (nats) of the first token's row: what [CLS]/BOS attends to",
    "cls_row_entropy_norm": "that entropy / log(keys the first row may attend to); empty for causal models",
    "cls_row_max": "largest weight in the first token's row",
    "to_first_token": "attention TO the first token (its column), mean over queries",
    "to_first_token_max": "attention TO the first token, max over queries",
    "sink_share": "share of attention on the most attended key, whatever it is",
    "self": "weight on the diagonal", "previous": "weight on the previous token",
    "next": "weight on the next token", "local": "weight within one token either side",
    "distance": "mean |query - key| distance, weighted by attention",
    "entropy_norm": "mean row entropy / its uniform bound",
    "content_function_ratio": "attention to content words / to function words",
}
#: the model names that stand for the bundled all-MiniLM-L6-v2
BUNDLED = ("bundled", "default")


@dataclass(frozen=True)
class Group:
    """Sentences a metric row averages over: all of them, or those whose metadata field ``by``
    holds ``value``; ``str()`` is the row's ``group`` (``all`` or ``by=value``).

    >>> str(Group()), str(Group("kind", "copula")), Group.parse("kind=copula").value
    ('all', 'kind=copula', 'copula')
    """

    by: str | None = None
    value: str = ""

    def __str__(self) -> str:
        return "all" if self.by is None else f"{self.by}={self.value}"

    @classmethod
    def parse(cls, label: str) -> Group:
        """The group of a row's ``group`` label."""
        by, eq, value = str(label).partition("=")
        return cls(by, value) if eq else cls()


def cls_row_metrics(pattern: np.ndarray) -> dict[str, np.ndarray]:
    """Metrics of the first token's row (query 0) of ``[..., query, key]`` patterns.

    >>> p = np.array([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]])
    >>> {k: np.round(v, 3).tolist() for k, v in cls_row_metrics(p).items()}
    {'cls_row_entropy': [0.693], 'cls_row_entropy_norm': [1.0], 'cls_row_max': [0.5]}
    """
    p = np.asarray(pattern, dtype=np.float64)
    entropy = M.row_entropy(p)[..., 0]
    allowed = (p[..., 0, :] > 0).sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = np.where(allowed > 1, entropy / np.log(np.maximum(allowed, 2)), np.nan)
    return {"cls_row_entropy": entropy, "cls_row_entropy_norm": norm, "cls_row_max": p[..., 0, :].max(-1)}


def example_summary(example) -> dict[str, np.ndarray]:
    """Every SUMMARY metric of one example, ``[layer, head]`` each."""
    base = M.example_metrics(example)
    stack = np.stack([example[key(l, "pattern")] for l in sorted(layers_of(example, "pattern"))])
    out = {"to_first_token": base["first_token"], "to_first_token_max": base["first_token_max"],
           **cls_row_metrics(stack)}
    out.update({m: base[m] for m in SUMMARY if m not in out})
    return out


def _mean(values) -> float:
    with warnings.catch_warnings():  # an all-NaN metric (e.g. no content word) stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmean(values))


def architecture(model) -> dict:
    """Layers, heads, key/value heads, hidden size, vocabulary and parameters of a model."""
    c = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    heads = getattr(c, "num_attention_heads", None)
    return {"model_type": c.model_type, "class": type(model).__name__,
            "layers": getattr(c, "num_hidden_layers", None), "heads": heads,
            "kv_heads": getattr(c, "num_key_value_heads", None) or heads,
            "hidden": getattr(c, "hidden_size", None), "vocab": getattr(c, "vocab_size", None),
            "parameters": int(sum(p.numel() for p in model.parameters()))}


def compare_models(names, texts, *, meta=None, group_by=None, batch_size: int = 32,
                   rounds: int = 3, device: str = "cpu"):
    """Rows for the architecture, metric, speed (and memory) and per-sentence tables of every
    model in ``names``: ``(arch_rows, metric_rows, speed_rows, sentence_rows)``."""
    arch_rows, metric_rows, speed_rows, sentence_rows = [], [], [], []
    for name in names:
        model, tokenizer = load_model(None if name in BUNDLED else name, device=device)
        label = "bundled all-MiniLM-L6-v2" if name in BUNDLED else name
        arch_rows.append({"model": label, **architecture(model)})
        with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
            capture = p.run(texts, batch_size=batch_size, truncate=True, meta=meta)
        per_example = [example_summary(ex) for ex in capture]
        groups = {Group(): list(range(len(per_example)))}
        for i, ex in enumerate(capture):
            value = ex.meta.get(group_by, "") if group_by else ""
            if group_by:
                groups.setdefault(Group(group_by, f"{value}"), []).append(i)
            sentence_rows.append({"model": label, "example": i, **({group_by: value} if group_by else {}),
                                  "tokens": len(ex.tokens), "text": ex.text,
                                  **{m: _mean(per_example[i][m]) for m in SUMMARY}})
        for group, idx in groups.items():
            row = {"model": label, "group": str(group), "n": len(idx)}
            for m in SUMMARY:
                row[m] = _mean([per_example[i][m] for i in idx])
            metric_rows.append(row)
        speed_rows.append(speed_row(model, tokenizer, texts, label=label, batch_size=batch_size,
                                    rounds=rounds))
        del model, capture
    return arch_rows, metric_rows, speed_rows, sentence_rows


def _short(label: str) -> str:
    return label if len(label) <= 28 else "..." + label.rstrip("/").rsplit("/", 1)[-1][-25:]


def metric_bars(metric_rows, metrics=SUMMARY, *, by_group: bool = False):
    """One panel per metric, one bar per model: overall (``by_group=False``, the "all" rows)
    or one group of bars per metadata group. Returns a Figure."""
    from . import plots

    rows = [r for r in metric_rows if (Group.parse(r["group"]).by is not None) == by_group]
    models = list(dict.fromkeys(r["model"] for r in rows))
    groups = list(dict.fromkeys(r["group"] for r in rows))
    cols = min(4, len(metrics))
    nrows = -(-len(metrics) // cols)
    width = max(3.2, 0.35 * len(groups) * len(models) + 1.5)
    fig, axes = plots.plt.subplots(nrows, cols, figsize=plots._size(cols * width, nrows * 2.8 + 0.8),
                                   squeeze=False, constrained_layout=True)
    colours = plots.plt.get_cmap("tab10")
    bar = 0.8 / max(len(models), 1)
    for ax, metric in zip(axes.flat, metrics):
        for k, model in enumerate(models):
            values = [next((r[metric] for r in rows if r["model"] == model and r["group"] == g), np.nan)
                      for g in groups]
            ax.bar(np.arange(len(groups)) + k * bar - 0.4 + bar / 2, values, bar, color=colours(k % 10),
                   label=_short(model))
        ax.set_title(metric, fontsize=9, **plots.LITERAL)
        ax.set_xticks(range(len(groups)), [Group.parse(g).value for g in groups] if by_group else [""] * len(groups),
                      fontsize=7, rotation=30 if by_group else 0, **plots.LITERAL)
        ax.tick_params(axis="y", labelsize=7)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=min(len(models), 4), fontsize=8)
    what = f"by {Group.parse(groups[0]).by}" if by_group and groups else "mean over sentences"
    fig.suptitle(f"pattern metrics per model ({what}, layers and heads); cls_row_*: what the first "
                 "token attends to; to_first_token*: attention to it", fontsize=9, **plots.LITERAL)
    return fig


def speed_memory_figure(speed_rows):
    """Sentences per second and peak memory of a plain forward and of a probe capture, per
    model, measured side by side in the same run. Returns a Figure."""
    from . import plots

    models = [_short(r["model"]) for r in speed_rows]
    fig, axes = plots.plt.subplots(1, 2, figsize=plots._size(max(9, 1.6 * len(models) + 5), 4),
                                   constrained_layout=True)
    x = np.arange(len(models))
    for ax, (a, b), ylabel in ((axes[0], ("forward_sentences_per_s", "capture_sentences_per_s"), "sentences / s"),
                               (axes[1], ("forward_peak_mib", "capture_peak_mib"), "peak memory above start (MiB)")):
        ax.bar(x - 0.2, [r[a] for r in speed_rows], 0.4, label="plain forward")
        ax.bar(x + 0.2, [r[b] for r in speed_rows], 0.4, label="probe capture (pattern)")
        ax.set_xticks(x, models, fontsize=8, rotation=15, **plots.LITERAL)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    axes[0].set_title("speed (median of the timed rounds)", fontsize=9)
    axes[1].set_title("memory: " + (speed_rows[0]["memory_method"] if speed_rows else ""), fontsize=9)
    return fig


def write_charts(out, metric_rows, speed_rows, group_by=None) -> list[str]:
    """PNG (and SVG) charts of a comparison in folder ``out``; returns the paths."""
    from . import plots

    paths = plots.save(metric_bars(metric_rows), f"{out}/metrics")
    if group_by:
        paths += plots.save(metric_bars(metric_rows, by_group=True), f"{out}/metrics_by_{group_by}")
    paths += plots.save(speed_memory_figure(speed_rows), f"{out}/speed_memory")
    return paths


def markdown_table(rows, columns) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
