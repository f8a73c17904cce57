"""Counterfactual comparison of one pair (and its control), per layer and head.

:func:`align_pair` finds the tokens the three sentences share: tokens of the original matched
(by :func:`probe.align.align`) both in the counterfactual and, when there is one, in the
control, with the cue and the control's edit left out. :func:`compare_pair` evaluates every
metric of :data:`probe.pair_metrics.METRICS` on those tokens for the counterfactual and for
the control, so the difference of the two (the contrast with the control) is measured on the
same tokens by construction. The control's *edit* is where it differs from the counterfactual
(its neutral word in the cue's place), so cue metrics compare like with like: in "The cat does
not eat fish." / "The cat does really eat fish." the cue is "not" and the edit "really", while
"does" and "eat", changed in both, are left out of both.

Imports numpy, :mod:`probe.align`, :mod:`probe.names`, :mod:`probe.pair_metrics` and
:mod:`probe.pairs`.

>>> from probe.captures import Example
>>> pat = np.full((1, 3, 3), 1 / 3)                      # [head, query, key]
>>> ex = Example(["[CLS]", "x", "[SEP]"], ["blocks.0.attn.pattern"], lambda k: pat)
>>> view = align_pair(ex.tokens, ex.tokens)
>>> cf, control = compare_pair(ex, ex, None, view, layers=[0], metrics=["mean_attention_diff"])
>>> cf["mean_attention_diff"].tolist(), control
([[0.0]], None)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .align import align, is_special
from .names import key
from .pair_metrics import METRICS, Family
from .pairs import Side


@dataclass
class AlignedPair:
    """Token positions shared by original, counterfactual and control; cue and edit tokens."""

    original: np.ndarray        # aligned positions in the original
    counterfactual: np.ndarray  # the same tokens in the counterfactual
    control: np.ndarray | None  # ... and in the control (None: the pair has no control)
    content: np.ndarray         # bool over aligned tokens: not a special token
    cue: np.ndarray             # cue token positions in the counterfactual (content only)
    edit: np.ndarray | None     # control tokens unmatched in the counterfactual: its neutral
                                # word in the cue's place (content only)

    @property
    def n_content(self) -> int:
        return int(self.content.sum())


def _matches(a: list[str], b: list[str]) -> dict[int, int]:
    return {int(i): int(j) for i, j in align(a, b).matched}


def _content(tokens, positions, special) -> np.ndarray:
    return np.array([p for p in sorted(positions) if not is_special(tokens[p], special)], dtype=np.int64)


def align_pair(original: list[str], counterfactual: list[str], control: list[str] | None = None,
               *, cue=(), cue_original=(), special=None) -> AlignedPair:
    """Three-way alignment; ``cue`` / ``cue_original`` are cue token positions of each side.

    >>> v = align_pair(["[CLS]", "it", "rains", "[SEP]"], ["[CLS]", "it", "not", "rains", "[SEP]"],
    ...                ["[CLS]", "it", "really", "rains", "[SEP]"], cue=[2])
    >>> v.original.tolist(), v.counterfactual.tolist(), v.control.tolist(), v.edit.tolist()
    ([0, 1, 2, 3], [0, 1, 3, 4], [0, 1, 3, 4], [2])
    """
    to_cf = _matches(original, counterfactual)
    to_ctrl = _matches(original, control) if control is not None else None
    cue_set, cue_orig = {int(c) for c in cue}, {int(c) for c in cue_original}
    keep = [o for o in sorted(to_cf) if to_cf[o] not in cue_set and o not in cue_orig
            and (to_ctrl is None or o in to_ctrl)]
    o = np.array(keep, dtype=np.int64)
    c = np.array([to_cf[i] for i in keep], dtype=np.int64)
    k = None if to_ctrl is None else np.array([to_ctrl[i] for i in keep], dtype=np.int64)
    content = np.array([not is_special(original[i], special) for i in keep], dtype=bool)
    edit = None
    if control is not None:  # where the control differs from the counterfactual: the cue's place
        edit = _content(control, set(range(len(control))) - set(_matches(counterfactual, control).values()),
                        special)
    return AlignedPair(o, c, k, content, _content(counterfactual, cue_set, special), edit)


def stack(example, component: str, layers) -> np.ndarray:
    """``[layer, ...]`` float64 stack of one component of an example."""
    return np.stack([np.asarray(example[key(layer, component)], dtype=np.float64)
                     for layer in layers])


def _sub(x: np.ndarray, rows: np.ndarray, component: str) -> np.ndarray:
    """Aligned rows (and, for [query, key] components, aligned keys) of a stack."""
    if component == "z":
        return x[..., rows, :]
    return x[..., rows[:, None], rows[None, :]]


def compare_pair(original, counterfactual, control, view: AlignedPair, *, layers,
                 metrics=None) -> tuple[dict, dict | None]:
    """``(counterfactual_values, control_values)``: ``{metric: [layer, head] or None}`` each.

    A value is None where the metric does not apply to the pair (no cue, no edit, too few
    aligned tokens). ``control_values`` is None when ``control`` is None.
    """
    names = list(METRICS) if metrics is None else list(metrics)
    sides = {Side.ORIGINAL: (original, view.original),
             Side.COUNTERFACTUAL: (counterfactual, view.counterfactual)}
    if control is not None:
        sides[Side.CONTROL] = (control, view.control)
    cache: dict = {}

    def arr(side, component):
        if (side, component) not in cache:
            cache[side, component] = stack(sides[side][0], component, layers)
        return cache[side, component]

    out = {side: {} for side in sides if side is not Side.ORIGINAL}
    for name in names:
        m = METRICS[name]
        for side, values in out.items():
            rows = sides[side][1]
            queries = rows[view.content]
            if m.family in (Family.DISTANCE, Family.SIMILARITY):
                values[name] = m.compute(_sub(arr(Side.ORIGINAL, m.needs), view.original, m.needs),
                                         _sub(arr(side, m.needs), rows, m.needs))
            elif m.family is Family.SHIFT:
                values[name] = (None if not len(queries) else
                                m.compute(arr(side, m.needs), queries)
                                - m.compute(arr(Side.ORIGINAL, m.needs), view.original[view.content]))
            else:
                edit = view.cue if side is Side.COUNTERFACTUAL else view.edit
                values[name] = (None if not len(queries) or edit is None or not len(edit)
                                else m.compute(arr(side, m.needs), edit, queries))
    return out[Side.COUNTERFACTUAL], out.get(Side.CONTROL)
