"""Counterfactual studies: capture pairs with their controls, compare, test across clusters.

A pair run is an ordinary run file whose examples carry ``meta`` with ``pair_id``, ``side``
(a :class:`probe.pairs.Side`: ``original``, ``counterfactual`` or ``control``), ``set`` (a
:class:`probe.design.PairSet`: ``pairs``, or ``baseline`` for an explicit unpaired contrast
set), ``study`` (``negation`` or ``counterfactual``) and the pair's plan
(:func:`probe.design.plan_meta`). Everything after the capture reads only the run, so
``probe analyze RUN.h5`` recomputes every table and figure without the model.

Contrasts (a :class:`Contrast`: the study and what it is :class:`Against`), per metric, kind,
layer and head (``stats.csv``, named ``{study}_vs_{against}``; ``{study}`` is the study's name):

- ``{study}_vs_original``: the counterfactual against the original. Tested (over clusters)
  only for ``shift`` metrics; distances, correlations and cue metrics are descriptive here;
- ``{study}_vs_control``: the difference in differences, per pair (counterfactual vs original)
  minus (control vs original) on the same aligned tokens; cue metrics compare the cue with the
  control's edit at the same place. A head is called selective only on this contrast;
- ``{study}_vs_baseline``: only with an explicit baseline set: the pairs' values against the
  baseline pairs', unpaired, over clusters.

q: Benjamini-Hochberg over the layer x head tests of one metric, contrast and kind.

Imports numpy, :mod:`probe.captures`, :mod:`probe.cues`, :mod:`probe.design`,
:mod:`probe.errors`, :mod:`probe.pair_compare`, :mod:`probe.pair_metrics`, :mod:`probe.pairs`
and :mod:`probe.stats`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .cues import token_char_spans, tokens_in_spans
from .pair_compare import align_pair, compare_pair
from .design import NO_KIND, Exclusion, PairPlan, PairSet, Why, plan_from_meta, plan_meta
from .errors import InputError
from .pair_metrics import METRICS, Family, components_needed
from .pairs import Label, Side
from .captures import require_every_head
from .stats import benjamini_hochberg, cluster_test, cluster_unpaired_test

STUDY_COMPONENTS = components_needed()
POOLED = "all kinds (pooled)"
STATS_COLUMNS = ["metric", "contrast", "kind", "layer", "head", "n_pairs", "n_clusters", "estimate",
                 "ci_low", "ci_high", "effect_size", "test", "p", "q", "log10_p"]
SIDES = tuple(Side)


class Against(Label):
    """What a contrast compares the pairs' counterfactuals with."""

    ORIGINAL = "original"
    CONTROL = "control"
    BASELINE = "baseline"


@dataclass(frozen=True)
class Contrast:
    """One contrast of a study; ``str()`` is its name in ``stats.csv``.

    >>> c = Contrast("negation", Against.CONTROL)
    >>> str(c), Contrast.parse("negation_vs_control") == c, Contrast.parse("negation")
    ('negation_vs_control', True, None)
    """

    study: str
    against: Against

    def __str__(self) -> str:
        return f"{self.study}_vs_{self.against}"

    @classmethod
    def parse(cls, name: str) -> Contrast | None:
        """The contrast named ``name`` in a ``stats.csv`` (None: not a contrast's name)."""
        study, vs, against = str(name).rpartition("_vs_")
        if not (study and vs) or against not in tuple(Against):
            return None
        return cls(study, Against(against))


def pair_texts(plans, study: str = "negation") -> tuple[list[str], list[dict]]:
    """Texts and per-example metadata of every pair plan (original, counterfactual, control)."""
    texts, metas = [], []
    for plan in plans:
        base = plan_meta(plan, study)
        for side, text in zip(SIDES, (plan.pair.original, plan.pair.counterfactual, plan.control)):
            if text is not None:
                texts.append(text)
                metas.append({**base, "side": side.value})
    return texts, metas


def capture_pairs(probe, plans, out, *, study: str = "negation", **options):
    """Capture every sentence of the plans into the run file ``out``; returns the opened run."""
    texts, metas = pair_texts(plans, study)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    return probe.run_to_file(texts, out, meta=metas, **options)


@dataclass
class PairTable:
    """Per-pair values of one set. ``values[m]`` / ``control[m]`` are ``[pair, layer, head]``:
    the counterfactual's and the control's value against the original (NaN: not applicable)."""

    set: str
    study: str
    plans: list[PairPlan]
    layers: tuple[int, ...]
    exclusions: list[Exclusion | None]        # why each pair is left out; None when used
    positions: list[dict] = field(default_factory=list)   # Side -> example index
    values: dict[str, np.ndarray] = field(default_factory=dict)
    control: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.plans)

    @property
    def ids(self) -> list[str]:
        return [p.pair.id for p in self.plans]

    @property
    def excluded(self) -> list[str]:
        """Why each pair is left out, as ``pairs.csv`` says it ("" when used)."""
        return [str(e or "") for e in self.exclusions]

    @property
    def used(self) -> np.ndarray:
        return np.array([e is None for e in self.exclusions], dtype=bool)

    @property
    def kinds(self) -> np.ndarray:
        return np.array([p.pair.kind or NO_KIND for p in self.plans], dtype=object)

    @property
    def clusters(self) -> np.ndarray:
        return np.array([p.cluster for p in self.plans], dtype=object)

    def rows(self) -> list[dict]:
        """``pairs.csv``: one row per input pair, with the reason it was excluded."""
        return [plan.row(why) for plan, why in zip(self.plans, self.exclusions)]


def _group_examples(capture) -> dict[str, dict[str, dict]]:
    """set -> pair_id -> {Side: example index}, in order of first appearance."""
    sets: dict[str, dict[str, dict]] = {}
    for i, meta in enumerate(capture.metas()):
        if "pair_id" not in meta or meta.get("side") not in SIDES:
            raise InputError(f"example {i} of the run has no pair_id/side metadata: this is "
                             "not a pair run (capture pairs with probe negation/counterfactual)")
        pairs = sets.setdefault(meta.get("set", PairSet.PAIRS), {})
        pairs.setdefault(str(meta["pair_id"]), {})[Side(meta["side"])] = i
    return sets


def _cue_tokens(example, spans) -> list[int]:
    return tokens_in_spans(token_char_spans(example.text, example.tokens), spans) if spans else []


def _check_finite(value, pid, metric, side, layers):
    bad = ~np.isfinite(value)
    if bad.any():
        li, head = (int(i) for i in np.argwhere(bad)[0])
        raise InputError(f"pair {pid!r}: {metric} of the {side} is {value[li, head]} at layer "
                         f"{layers[li]} head {head} (a constant pattern, or an empty attention "
                         "row); remove the pair or fix its texts")


def pair_tables(capture, *, metrics=None, special=None) -> dict[str, PairTable]:
    """A :class:`PairTable` per set of a pair capture (live or stored)."""
    require_every_head(capture, "the pair study")
    names = list(METRICS) if metrics is None else list(metrics)
    layers = tuple(capture.layers)
    tables = {}
    for set_name, pairs in _group_examples(capture).items():
        table = PairTable(set_name, "counterfactual", [], layers, [])
        rows_v, rows_c = [], []
        for pid, sides in pairs.items():
            meta = capture[next(iter(sides.values()))].meta
            table.study = meta.get("study", "counterfactual")
            examples = {s: capture[i] for s, i in sides.items()}
            texts = {s: ex.text for s, ex in examples.items()}
            plan = plan_from_meta(meta, texts.get(Side.ORIGINAL, ""),
                                  texts.get(Side.COUNTERFACTUAL, ""), texts.get(Side.CONTROL))
            why, v, c = _compare(plan, examples, layers, names, special)
            table.plans.append(plan)
            table.exclusions.append(why)
            table.positions.append(sides)
            rows_v.append(v)
            rows_c.append(c)
        n_heads = next((r[m].shape[1] for r in rows_v for m in r if r[m] is not None), 0)
        blank = np.full((len(layers), n_heads), np.nan)
        for m in names:
            table.values[m] = np.stack([blank if r.get(m) is None else r[m] for r in rows_v])
            table.control[m] = np.stack([blank if r.get(m) is None else r[m] for r in rows_c])
        tables[set_name] = table
    return tables


def _compare(plan: PairPlan, examples, layers, names, special):
    """(why the pair is left out or None, counterfactual values, control values) of one pair."""
    if plan.exclusion is not None:
        return plan.exclusion, {}, {}
    expected = {Side.ORIGINAL, Side.COUNTERFACTUAL} | (
        {Side.CONTROL} if plan.control is not None else set())
    if not expected <= set(examples):
        return Exclusion(Why.NOT_CAPTURED), {}, {}
    orig, cf, ctrl = (examples.get(s) for s in SIDES)
    view = align_pair(orig.tokens, cf.tokens, None if ctrl is None else ctrl.tokens,
                      cue=_cue_tokens(cf, plan.cue.spans),
                      cue_original=_cue_tokens(orig, plan.cue.original_spans), special=special)
    if view.n_content == 0:
        return Exclusion(Why.NO_CONTENT), {}, {}
    values, control = compare_pair(orig, cf, ctrl, view, layers=layers, metrics=names)
    for side, found in ((Side.COUNTERFACTUAL, values), (Side.CONTROL, control or {})):
        for m, value in found.items():
            if value is not None:
                _check_finite(value, plan.pair.id, m, side, layers)
    return None, values, control or {}


def contrasts(table: PairTable, baseline: PairTable | None = None) -> list[Contrast]:
    """The contrasts of a table's study: against the original, the control and, given a
    baseline set, the baseline."""
    against = [Against.ORIGINAL, Against.CONTROL] + ([Against.BASELINE] if baseline is not None else [])
    return [Contrast(table.study, a) for a in against]


def kind_groups(kinds: np.ndarray, used: np.ndarray, pooled: bool = False) -> dict[str, np.ndarray]:
    """kind -> boolean pick over pairs (used pairs only), and every used pair under
    :data:`POOLED` when ``pooled``: the groups the study (and probe patch) test separately."""
    groups = {k: used & (kinds == k) for k in sorted(set(kinds[used]))}
    if pooled:
        groups[POOLED] = used.copy()
    return groups


def study_statistics(table: PairTable, baseline: PairTable | None = None, *, pooled: bool = False,
                     n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Rows of ``stats.csv`` (see the module docstring and :data:`STATS_COLUMNS`)."""
    rows = []
    vs_original, vs_control, *vs_baseline = contrasts(table, baseline)
    clusters = table.clusters
    for kind, pick in kind_groups(table.kinds, table.used, pooled).items():
        for name, m in METRICS.items():
            if name not in table.values:
                continue
            values = table.values[name][pick]
            tests = [(vs_original, cluster_test(values, clusters[pick], n_resamples=n_resamples,
                                                seed=seed), m.descriptive_reason)]
            tests.append((vs_control, cluster_test(values - table.control[name][pick], clusters[pick],
                                                   n_resamples=n_resamples, seed=seed), ""))
            if vs_baseline and m.family is not Family.CUE and name in baseline.values:
                b = baseline.values[name][baseline.used]
                tests.append((vs_baseline[0], cluster_unpaired_test(
                    values, clusters[pick], b, baseline.clusters[baseline.used],
                    n_resamples=n_resamples, seed=seed), ""))
            for contrast, result, descriptive in tests:
                rows += _rows(name, contrast, kind, table.layers, result, descriptive)
    return rows


def _rows(metric, contrast, kind, layers, r, descriptive: str) -> list[dict]:
    q = (np.full(r.p.shape, np.nan) if descriptive else benjamini_hochberg(r.p))
    out = []
    for li, layer in enumerate(layers):
        for head in range(r.estimate.shape[1]):
            if r.n_pairs[li, head] == 0:
                continue
            row = {"metric": metric, "contrast": str(contrast), "kind": kind, "layer": layer,
                   "head": head, "n_pairs": int(r.n_pairs[li, head]),
                   "n_clusters": int(r.n_clusters[li, head]), "estimate": r.estimate[li, head],
                   "ci_low": r.ci_low[li, head], "ci_high": r.ci_high[li, head],
                   "effect_size": np.nan if descriptive else r.effect_size[li, head],
                   "test": descriptive or str(r.test[li, head]),
                   "p": np.nan if descriptive else r.p[li, head], "q": q[li, head],
                   "log10_p": np.nan if descriptive else r.log10_p[li, head]}
            out.append(row)
    return out
