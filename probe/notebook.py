"""Notebook use: compare two sentences in one call, and results that show themselves.

:func:`compare` captures a pair (and, by default, an automatic matched control) on a model and
returns a :class:`PairComparison`: in Jupyter it renders as a short summary plus the
interactive aligned view; ``.table()`` is a pandas DataFrame of every metric per layer and
head (descriptive: one pair has no test statistic), ``.figure()`` a matplotlib figure.
pandas is optional and imported only by ``.table()``.

Imports numpy, :mod:`probe.capture`, :mod:`probe.cues`, :mod:`probe.design`,
:mod:`probe.errors`, :mod:`probe.names`, :mod:`probe.pair_compare`, :mod:`probe.pair_metrics`
and :mod:`probe.pairs` (and, inside functions, pandas, :mod:`probe.models`, :mod:`probe.plots`
and :mod:`probe.view`).

>>> from probe.notebook import compare
>>> r = compare("The cat is on the mat.", "The cat is not on the mat.")
>>> r.cue, r.control_text
('not', 'The cat is surely on the mat.')
>>> row = r.top("attention_js_divergence", 1)[0]
>>> sorted(row)[:3], row["n_pairs"]
(['control', 'counterfactual', 'difference'], 1)
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import numpy as np

from .capture import AttentionProbe
from .pair_compare import AlignedPair, align_pair, compare_pair
from .cues import token_char_spans, tokens_in_spans
from .design import PairPlan, plan_pairs
from .errors import InputError
from .names import parse_key
from .pair_metrics import METRICS, components_needed
from .pairs import Pair, check_texts

DESCRIPTIVE = "n = 1 pair: descriptive values, no test statistic (run a study for tests)"
_MODELS: dict = {}


def _model(model, tokenizer):
    if model is None or isinstance(model, str):
        if model not in _MODELS:
            from .models import load_model

            _MODELS[model] = load_model(model)
        return _MODELS[model]
    if isinstance(model, tuple):
        return model
    if tokenizer is None:
        raise InputError("compare(model=...) with a model object also needs tokenizer=...")
    return model, tokenizer


@dataclass
class PairComparison:
    """One pair (and its control) compared per layer and head; see :func:`compare`."""

    plan: PairPlan
    original: object
    counterfactual: object
    control: object | None
    view: AlignedPair
    values: dict
    control_values: dict | None
    layers: tuple

    @property
    def cue(self) -> str:
        return self.plan.cue.text

    @property
    def control_text(self) -> str | None:
        return self.plan.control

    def rows(self) -> list[dict]:
        """One row per metric, layer and head: the counterfactual's and the control's value
        against the original, and their difference (descriptive)."""
        out = []
        for name, value in self.values.items():
            if value is None:
                continue
            ctrl = None if self.control_values is None else self.control_values.get(name)
            for li, layer in enumerate(self.layers):
                for head in range(value.shape[1]):
                    c = np.nan if ctrl is None else float(ctrl[li, head])
                    out.append({"metric": name, "family": METRICS[name].family, "layer": layer,
                                "head": head, "counterfactual": float(value[li, head]),
                                "control": c, "difference": float(value[li, head]) - c,
                                "n_pairs": 1})
        return out

    def table(self):
        """A pandas DataFrame of :meth:`rows`; ``df.attrs["note"]`` says it is descriptive."""
        try:
            import pandas as pd
        except ImportError:
            raise InputError("table() needs pandas: pip install pandas (or use .rows())") from None
        df = pd.DataFrame(self.rows())
        df.attrs["note"] = DESCRIPTIVE
        return df

    def top(self, metric: str = "attention_js_divergence", n: int = 5) -> list[dict]:
        """The ``n`` heads where ``metric`` differs most from the control (or the original)."""
        if metric not in METRICS:
            raise InputError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
        rows = [r for r in self.rows() if r["metric"] == metric]
        key = "difference" if self.control is not None else "counterfactual"
        return sorted(rows, key=lambda r: -abs(r[key]) if np.isfinite(r[key]) else 0)[:n]

    def figure(self, layer: int | None = None, head: int | None = None):
        """Four panels (patterns and value-weighted patterns of both sides) at one head;
        by default the head whose attention changes most against the control."""
        from . import plots

        if layer is None or head is None:
            best = self.top("mean_attention_diff", 1)[0]
            layer, head = best["layer"], best["head"]
        return plots.pair_figure(self.original, self.counterfactual, layer, head,
                                 title=f"{self.original.text!r} vs {self.counterfactual.text!r}")

    def _repr_html_(self) -> str:
        from .view import build_view

        top = self.top("attention_js_divergence", 5)
        cells = "".join(f"<tr><td>{r['layer']}</td><td>{r['head']}</td><td>{r['counterfactual']:.4f}"
                        f"</td><td>{r['control']:.4f}</td><td>{r['difference']:+.4f}</td></tr>"
                        for r in top)
        page = build_view(self.original, self.counterfactual,
                          title=f"{self.original.text} / {self.counterfactual.text}")
        return (f"<div><b>{html.escape(self.original.text)}</b> vs "
                f"<b>{html.escape(self.counterfactual.text)}</b>; cue "
                f"<code>{html.escape(self.cue or '(none)')}</code>; control "
                f"<i>{html.escape(self.control_text or '(none: ' + self.plan.control_note + ')')}</i>"
                f"<br><small>{html.escape(DESCRIPTIVE)}</small>"
                "<table><tr><th>layer</th><th>head</th><th>JS vs original</th><th>control</th>"
                f"<th>difference</th></tr>{cells}</table>"
                f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width:100%;height:720px;'
                'border:1px solid #ddd"></iframe></div>')


def compare(original: str, counterfactual: str, *, model=None, tokenizer=None,
            control: str | None = "auto", cue=None, layers=None, seed: int = 0) -> PairComparison:
    """Compare two sentences on a model (default: the bundled MiniLM), per layer and head.

    ``model``: None, a hub name or local folder, a ``(model, tokenizer)`` tuple, or a model
    object with ``tokenizer=``. ``control``: ``"auto"`` builds a matched control from the cue,
    a sentence uses that one, None uses none. ``cue`` overrides cue detection (text or span).
    """
    mode = "auto" if control == "auto" else "none" if control is None else "field"
    check_texts(original, counterfactual, "pair", "compare()", control if mode == "field" else None)
    model, tokenizer = _model(model, tokenizer)
    pair = Pair("pair", original, counterfactual, control=None if mode != "field" else control, cue=cue)
    plan = plan_pairs([pair], controls=mode, seed=seed)[0]
    texts = [original, counterfactual] + ([plan.control] if plan.control is not None else [])
    with AttentionProbe(model, tokenizer, layers=layers, keys=components_needed()) as p:
        examples = list(p.run(texts))
    orig, cf, ctrl = examples[0], examples[1], examples[2] if len(examples) > 2 else None
    view = align_pair(orig.tokens, cf.tokens, None if ctrl is None else ctrl.tokens,
                      cue=tokens_in_spans(token_char_spans(cf.text, cf.tokens), plan.cue.spans),
                      cue_original=tokens_in_spans(token_char_spans(orig.text, orig.tokens),
                                                   plan.cue.original_spans))
    if view.n_content == 0:
        raise InputError("the two sentences share no content token to compare")
    layers = tuple(sorted({parse_key(k)[0] for k in orig}))
    values, control_values = compare_pair(orig, cf, ctrl, view, layers=layers)
    return PairComparison(plan, orig, cf, ctrl, view, values, control_values, layers)


@dataclass
class Shown:
    """An HTML page that Jupyter displays inline (in an isolated frame)."""

    page: str

    def _repr_html_(self) -> str:
        return (f'<iframe srcdoc="{html.escape(self.page, quote=True)}" '
                'style="width:100%;height:720px;border:1px solid #ddd"></iframe>')


def show(capture, example: int = 0, *, pair: bool = True) -> Shown:
    """The interactive view of one example of a capture or run, inline in a notebook; in a
    pair run, with its partner (original, counterfactual and their difference).

    >>> from probe import AttentionProbe, load_model
    >>> model, tokenizer = load_model()
    >>> with AttentionProbe(model, tokenizer, keys=["pattern"]) as p:
    ...     caps = p.run(["A robin is a bird."])
    >>> show(caps)._repr_html_().startswith("<iframe")
    True
    """
    from .view import build_view

    if not 0 <= example < len(capture):
        raise InputError(f"example {example}: the capture holds examples 0..{len(capture) - 1}")
    ex, other = capture[example], None
    if pair and "pair_id" in ex.meta:
        metas = capture.metas()
        for i, meta in enumerate(metas):
            if (i != example and meta.get("pair_id") == ex.meta["pair_id"]
                    and meta.get("set") == ex.meta.get("set")
                    and {meta.get("side"), ex.meta.get("side")} == {"original", "counterfactual"}):
                other = capture[i]
        if other is not None and ex.meta.get("side") == "counterfactual":
            ex, other = other, ex
    return Shown(build_view(ex, other))
