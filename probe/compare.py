"""Counterfactual comparison of one pair, per layer and head (vectorised over both).

Inputs are two :class:`~probe.captures.Example` (live or stored) and their
:class:`~probe.align.Alignment`. Pattern metrics use the *matched* tokens only: ``A`` below is
the pattern restricted to matched queries and keys, ``[layer, head, m, m]``, compared position
to position.

Pattern metrics (each ``[layer, head]``):

- ``max_attention_diff``, ``mean_attention_diff``: max and mean of ``|A_orig - A_cf|``.
- ``attention_pattern_correlation``: Pearson correlation of the flattened ``A`` of both sides.
- ``attention_spearman``: Spearman rank correlation of the same.
- ``attention_js_divergence``: mean over matched query rows of the Jensen-Shannon divergence
  (nats, at most ln 2) between the two rows, each taken over the matched keys plus one bin
  holding the mass on unmatched keys, so attention moved to an inserted token counts.
- ``value_weighted_diff``, ``value_weighted_correlation``: mean absolute difference and
  Pearson correlation of value-weighted attention (``||alpha f(x)||``) on matched tokens.
- ``value_output_correlation``: Pearson correlation of the per-head outputs ``z`` on matched
  tokens (flattened over token and d_head).

Cue metrics, on the side that carries the cue (usually the counterfactual), each with a
``*_baseline`` computed the same way on the other side at the same token positions (the
tokens that stand where the cue stands). "Content" tokens are all but special tokens.

- ``cue_attention_in``: mean over non-cue content queries of the attention mass on the cue.
- ``cue_attention_out``: mean over cue queries of the mass on non-cue content tokens.
- ``cue_value_share``: mean over non-cue content queries of the cue's share of the row's
  value-weighted attention, ``sum_{j in cue} vw_ij / sum_j vw_ij``.
- ``cue_value_spread``: how evenly the cue's value-weighted contribution spreads over the
  sentence: the entropy of ``d_i = sum_{j in cue} vw_ij`` normalised over non-cue content
  queries, divided by ``log`` of their number (1 = evenly over every token, 0 = into one).

>>> import numpy as np
>>> from probe.captures import Example
>>> pat = np.full((1, 3, 3), 1 / 3)
>>> ex = Example(["[CLS]", "x", "[SEP]"], ["blocks.0.attn.pattern"], lambda k: pat)
>>> m = compare_pair(ex, ex, align(ex.tokens, ex.tokens), layers=[0], metrics=["mean_attention_diff"])
>>> m["mean_attention_diff"].tolist()
[[0.0]]
"""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from .align import Alignment, align, is_special  # noqa: F401  (align re-exported for doctests)

PATTERN_METRICS = ("max_attention_diff", "mean_attention_diff", "attention_pattern_correlation",
                   "attention_spearman", "attention_js_divergence")
VALUE_METRICS = ("value_weighted_diff", "value_weighted_correlation")
OUTPUT_METRICS = ("value_output_correlation",)
CUE_METRICS = ("cue_attention_in", "cue_attention_out", "cue_value_share", "cue_value_spread")
METRICS = PATTERN_METRICS + VALUE_METRICS + OUTPUT_METRICS + CUE_METRICS

#: what each metric needs from the capture
NEEDS = {**{m: ("pattern",) for m in PATTERN_METRICS}, **{m: ("value_weighted",) for m in VALUE_METRICS},
         "value_output_correlation": ("z",),
         "cue_attention_in": ("pattern",), "cue_attention_out": ("pattern",),
         "cue_value_share": ("value_weighted",), "cue_value_spread": ("value_weighted",)}


def stack(example, component: str, layers) -> np.ndarray:
    """``[layer, ...]`` stack of one component of an example."""
    return np.stack([np.asarray(example[f"blocks.{layer}.attn.{component}"], dtype=np.float64)
                     for layer in layers])


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson correlation along the last axis (NaN where either side is constant)."""
    xc = x - x.mean(-1, keepdims=True)
    yc = y - y.mean(-1, keepdims=True)
    den = np.sqrt((xc * xc).sum(-1) * (yc * yc).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _sub(a: np.ndarray, rows, cols) -> np.ndarray:
    return a[..., rows[:, None], cols[None, :]]


def js_divergence(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Jensen-Shannon divergence (nats) between distributions along the last axis."""
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
        kl_q = np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
    return 0.5 * (kl_p + kl_q)


def _with_rest(rows: np.ndarray) -> np.ndarray:
    """Rows over matched keys plus one bin with the rest of each row's mass."""
    rest = np.clip(1.0 - rows.sum(-1, keepdims=True), 0.0, None)
    return np.concatenate([rows, rest], axis=-1)


def _cue_metrics(pattern, vw, cue, content):
    """Cue metrics of one side, ``[layer, head]`` each; cue/content are index arrays."""
    out = {}
    others = np.setdiff1d(content, cue)
    if len(cue) == 0 or len(others) == 0:
        return out
    if pattern is not None:
        out["cue_attention_in"] = pattern[..., others[:, None], cue[None, :]].sum(-1).mean(-1)
        out["cue_attention_out"] = pattern[..., cue[:, None], others[None, :]].sum(-1).mean(-1)
    if vw is not None:
        to_cue = vw[..., others[:, None], cue[None, :]].sum(-1)  # [layer, head, query]
        total = vw[..., others, :].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out["cue_value_share"] = np.where(total > 0, to_cue / np.where(total > 0, total, 1), 0).mean(-1)
            d = to_cue / to_cue.sum(-1, keepdims=True)
            entropy = -np.where(d > 0, d * np.log(d), 0.0).sum(-1)
        out["cue_value_spread"] = entropy / np.log(len(others)) if len(others) > 1 else np.ones_like(entropy)
    return out


def compare_pair(original, counterfactual, alignment: Alignment, *, layers, metrics=METRICS,
                 special=None) -> dict[str, np.ndarray]:
    """Every requested metric for one pair: ``{name: [layer, head]}``.

    Cue metrics come with ``{name}_baseline``; they are absent when the pair has no cue.
    """
    wanted = set(metrics)
    need = {c for m in wanted for c in NEEDS[m]}
    mo, mc = alignment.matched_original, alignment.matched_counterfactual
    sides = {}
    for side, ex in (("original", original), ("counterfactual", counterfactual)):
        sides[side] = {c: stack(ex, c, layers) for c in need}
    out = {}
    if need & {"pattern"} and wanted & set(PATTERN_METRICS):
        a, b = _sub(sides["original"]["pattern"], mo, mo), _sub(sides["counterfactual"]["pattern"], mc, mc)
        diff = np.abs(a - b)
        flat_a, flat_b = a.reshape(*a.shape[:2], -1), b.reshape(*b.shape[:2], -1)
        values = {
            "max_attention_diff": lambda: diff.max((-1, -2)),
            "mean_attention_diff": lambda: diff.mean((-1, -2)),
            "attention_pattern_correlation": lambda: pearson(flat_a, flat_b),
            "attention_spearman": lambda: pearson(rankdata(flat_a, axis=-1), rankdata(flat_b, axis=-1)),
            "attention_js_divergence": lambda: js_divergence(_with_rest(a), _with_rest(b)).mean(-1),
        }
        out.update({m: f() for m, f in values.items() if m in wanted})
    if wanted & set(VALUE_METRICS):
        a = _sub(sides["original"]["value_weighted"], mo, mo)
        b = _sub(sides["counterfactual"]["value_weighted"], mc, mc)
        if "value_weighted_diff" in wanted:
            out["value_weighted_diff"] = np.abs(a - b).mean((-1, -2))
        if "value_weighted_correlation" in wanted:
            out["value_weighted_correlation"] = pearson(a.reshape(*a.shape[:2], -1),
                                                        b.reshape(*b.shape[:2], -1))
    if "value_output_correlation" in wanted:
        za = sides["original"]["z"][..., mo, :]
        zb = sides["counterfactual"]["z"][..., mc, :]
        out["value_output_correlation"] = pearson(za.reshape(*za.shape[:2], -1), zb.reshape(*zb.shape[:2], -1))
    if wanted & set(CUE_METRICS) and alignment.cue:
        cue_side = alignment.cue_side
        other_side = "original" if cue_side == "counterfactual" else "counterfactual"
        ex_cue = counterfactual if cue_side == "counterfactual" else original
        ex_other = original if cue_side == "counterfactual" else counterfactual
        cue = np.array(alignment.cue)
        for prefix, side, ex in (("", cue_side, ex_cue), ("baseline:", other_side, ex_other)):
            tokens = ex.tokens
            content = np.array([i for i, t in enumerate(tokens) if not is_special(t, special)])
            positions = cue[cue < len(tokens)]
            positions = np.intersect1d(positions, content)
            cm = _cue_metrics(sides[side].get("pattern"), sides[side].get("value_weighted"),
                              positions, content)
            for k, v in cm.items():
                if k in wanted:
                    out[k if not prefix else f"{k}_baseline"] = v
    return out
