"""The one definition of every pair metric: name, function, family, unit, reading, testability.

Comparison (:mod:`probe.pair_compare`), statistics and tables (:mod:`probe.study`), figures and the
summary (:mod:`probe.study_report`) all read :data:`METRICS`; adding a metric is one entry
here plus its test.

A metric is computed for one *side* of a pair against the original: the counterfactual, and,
when the pair has one, the control. Arrays are ``[layer, head, ...]`` stacks of one example.
Every metric sees only *aligned* tokens (tokens of the original matched in the counterfactual
and in the control, cue and edit tokens excluded), so the two sides of a contrast are measured
on the same tokens. Families:

- ``distance`` / ``similarity``: a comparison of the original's and the side's patterns on
  the aligned tokens, ``f(a, b) -> [layer, head]``. Against the original alone it is
  descriptive: a distance is positive (a correlation below 1) whenever anything changes, so
  there is no null to test without a control.
- ``shift``: a per-sentence quantity on the aligned query rows, ``g(x, queries) -> [layer,
  head]``; the pair's value is ``g(side) - g(original)``, testable against 0.
- ``cue``: a quantity of the edited tokens, ``h(x, edit, queries) -> [layer, head]``: the cue
  in the counterfactual, the neutral edit in the control. The original has no such token, so
  only the difference from the control is tested.

Imports numpy, scipy.stats and :mod:`probe.pairs`.

>>> sorted({str(m.family) for m in METRICS.values()})
['cue', 'distance', 'shift', 'similarity']
>>> METRICS["cue_attention_in"].tested_vs_original
False
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.stats import rankdata

from .pairs import Label


class Family(Label):
    """How a metric compares a side with the original (see the module docstring)."""

    DISTANCE = "distance"
    SIMILARITY = "similarity"
    SHIFT = "shift"
    CUE = "cue"


FAMILIES = tuple(Family)

#: why a contrast with the original is not tested, per family
DESCRIPTIVE_VS_ORIGINAL = {
    Family.DISTANCE: "descriptive: a distance is positive whenever anything changes; "
                     "tested against the control",
    Family.SIMILARITY: "descriptive: a correlation is below 1 whenever anything changes; "
                       "tested against the control",
    Family.CUE: "descriptive: the original has no cue token; tested against the control's edit",
}


@dataclass(frozen=True)
class PairMetric:
    """One pair metric and how it is read and tested."""

    name: str
    family: Family
    needs: str        # the captured component it reads: pattern, value_weighted or z
    unit: str
    label: str        # what a value is, for tables and figure labels
    reading: str      # what a positive difference from the control means
    compute: Callable
    headline: bool = False

    @property
    def tested_vs_original(self) -> bool:
        return self.family is Family.SHIFT

    @property
    def descriptive_reason(self) -> str:
        """Why the contrast with the original is not tested ("" when it is)."""
        return DESCRIPTIVE_VS_ORIGINAL.get(self.family, "")


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (NaN where either side is constant).

    >>> float(pearson(np.array([1.0, 2, 3]), np.array([2.0, 4, 7])).round(4))
    0.9934
    """
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1), np.nan)


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (nats, at most ln 2) between distributions on the last axis.

    >>> round(float(js_divergence(np.array([1.0, 0]), np.array([0.0, 1]))), 6) == round(float(np.log(2)), 6)
    True
    """
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / np.where(m > 0, m, 1)), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log(q / np.where(m > 0, m, 1)), 0.0).sum(-1)
    return 0.5 * (kl_p + kl_q)


def _with_rest(rows: np.ndarray) -> np.ndarray:
    """Rows over aligned keys plus one bin with the rest of each row's mass (edited keys)."""
    rest = np.clip(1.0 - rows.sum(-1, keepdims=True), 0.0, None)
    return np.concatenate([rows, rest], axis=-1)


def _flat(a: np.ndarray) -> np.ndarray:
    return a.reshape(*a.shape[:2], -1)


def _row_entropy(x: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(x > 0, x * np.log(np.where(x > 0, x, 1)), 0.0).sum(-1)


def _cue_in(x, edit, queries):
    """Mean over aligned content queries of the attention mass on the edited tokens."""
    return x[..., queries[:, None], edit[None, :]].sum(-1).mean(-1)


def _cue_out(x, edit, queries):
    """Mean over the edited tokens' rows of their mass on aligned content tokens."""
    return x[..., edit[:, None], queries[None, :]].sum(-1).mean(-1)


def _cue_share(vw, edit, queries):
    """Mean over aligned content queries of the edit's share of the row's value-weighted mass."""
    to_edit = vw[..., queries[:, None], edit[None, :]].sum(-1)
    total = vw[..., queries, :].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (to_edit / total).mean(-1)


def _cue_spread(vw, edit, queries):
    """Normalised entropy over aligned content queries of ``d_i = sum_{j in edit} vw_ij``:
    1 = the edit's contribution spreads evenly, 0 = into one token (needs 2+ queries)."""
    if len(queries) < 2:
        return None
    d = vw[..., queries[:, None], edit[None, :]].sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _row_entropy(d / d.sum(-1, keepdims=True)) / np.log(len(queries))


def _metric(name, family, needs, unit, label, reading, compute, headline=False):
    return name, PairMetric(name, family, needs, unit, label, reading, compute, headline)


MORE_CHANGE = "the negation changes this head more than the neutral edit does"
LESS_SIMILAR = "negative: the negation leaves the pattern less similar than the neutral edit does"

#: every pair metric, in report order
METRICS: dict[str, PairMetric] = dict([
    _metric("max_attention_diff", Family.DISTANCE, "pattern", "attention weight",
            "max |attention change| on aligned tokens", MORE_CHANGE,
            lambda a, b: np.abs(a - b).max((-1, -2))),
    _metric("mean_attention_diff", Family.DISTANCE, "pattern", "attention weight",
            "mean |attention change| on aligned tokens", MORE_CHANGE,
            lambda a, b: np.abs(a - b).mean((-1, -2)), headline=True),
    _metric("attention_js_divergence", Family.DISTANCE, "pattern", "nats",
            "Jensen-Shannon divergence of aligned attention rows (+ a bin for edited keys)",
            MORE_CHANGE, lambda a, b: js_divergence(_with_rest(a), _with_rest(b)).mean(-1),
            headline=True),
    _metric("attention_pattern_correlation", Family.SIMILARITY, "pattern", "Pearson r",
            "correlation of aligned attention", LESS_SIMILAR,
            lambda a, b: pearson(_flat(a), _flat(b))),
    _metric("attention_spearman", Family.SIMILARITY, "pattern", "Spearman rho",
            "rank correlation of aligned attention", LESS_SIMILAR,
            lambda a, b: pearson(rankdata(_flat(a), axis=-1), rankdata(_flat(b), axis=-1))),
    _metric("value_weighted_diff", Family.DISTANCE, "value_weighted", "||alpha f(x)||",
            "mean |value-weighted attention change|", MORE_CHANGE,
            lambda a, b: np.abs(a - b).mean((-1, -2)), headline=True),
    _metric("value_weighted_correlation", Family.SIMILARITY, "value_weighted", "Pearson r",
            "correlation of aligned value-weighted attention", LESS_SIMILAR,
            lambda a, b: pearson(_flat(a), _flat(b))),
    _metric("value_output_correlation", Family.SIMILARITY, "z", "Pearson r",
            "correlation of per-head outputs z on aligned tokens", LESS_SIMILAR,
            lambda a, b: pearson(_flat(a), _flat(b)), headline=True),
    _metric("first_token_shift", Family.SHIFT, "pattern", "attention weight",
            "change of attention to the first token, aligned queries",
            "the negation moves more attention to the first token than the neutral edit",
            lambda x, queries: x[..., queries, 0].mean(-1)),
    _metric("entropy_shift", Family.SHIFT, "pattern", "nats",
            "change of attention row entropy, aligned queries",
            "the negation spreads attention more than the neutral edit",
            lambda x, queries: _row_entropy(x[..., queries, :]).mean(-1)),
    _metric("cue_attention_in", Family.CUE, "pattern", "attention weight",
            "attention mass to the cue from aligned content tokens",
            "aligned tokens attend more to the negation cue than to the neutral word",
            _cue_in, headline=True),
    _metric("cue_attention_out", Family.CUE, "pattern", "attention weight",
            "attention mass from the cue to aligned content tokens",
            "the cue attends more to the aligned tokens than the neutral word does", _cue_out),
    _metric("cue_value_share", Family.CUE, "value_weighted", "share",
            "the cue's share of value-weighted attention, aligned content queries",
            "the cue contributes more to aligned tokens than the neutral word", _cue_share,
            headline=True),
    _metric("cue_value_spread", Family.CUE, "value_weighted", "normalised entropy",
            "how evenly the cue's value-weighted contribution spreads (1 = evenly)",
            "the cue's contribution spreads more evenly than the neutral word's", _cue_spread),
])

HEADLINE = [name for name, m in METRICS.items() if m.headline]


def components_needed(names=None) -> list[str]:
    """Captured components the given metrics read (all metrics by default)."""
    names = list(METRICS) if names is None else names
    return sorted({METRICS[n].needs for n in names})
