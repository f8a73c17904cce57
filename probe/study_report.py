"""A study's outputs: tables, figures and summary.md from a pair capture (live or stored).

:func:`analyze` is the engine of ``probe negation``, ``probe counterfactual`` and ``probe
analyze``. It writes into a folder, every file complete or absent (:mod:`probe.outputs`), and
the completion marker last:

- ``stats.csv``: :data:`probe.study.STATS_COLUMNS`, one row per metric x contrast x kind x
  layer x head;
- ``pairs.csv``: one row per input pair (:data:`probe.design.PAIR_COLUMNS`), with the reason a
  pair was left out;
- ``pair_metrics.csv``: per used pair, layer and head, each metric for the counterfactual and
  for the control (``{metric}_control``), both against the original;
- ``summary.md`` and ``figures/``.

Imports numpy, :mod:`probe.design`, :mod:`probe.errors`, :mod:`probe.outputs`,
:mod:`probe.pair_metrics`, :mod:`probe.pairs`, :mod:`probe.stats` and :mod:`probe.study` (and,
inside the functions that draw or show, :mod:`probe.plots` and pandas, which is optional).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .design import PAIR_COLUMNS, PairSet
from .errors import InputError
from .outputs import begin_folder, finish_folder, write_csv, write_text
from .pair_metrics import HEADLINE, METRICS
from .pairs import slugs
from .stats import smallest_p
from .study import (POOLED, STATS_COLUMNS, Against, Contrast, PairTable, contrasts, pair_tables,
                    study_statistics)

ALPHA = 0.05


@dataclass
class StudyResult:
    """What :func:`analyze` wrote and computed; ``to_pandas()`` gives stats.csv as a DataFrame."""

    tables: dict[str, PairTable]
    stats: list[dict]
    out_dir: Path
    files: list[str]
    timings: dict[str, float]

    def to_pandas(self):
        """The rows of stats.csv as a pandas DataFrame (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError:
            raise InputError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.stats, columns=STATS_COLUMNS)

    def _repr_html_(self) -> str:
        import html

        text = (self.out_dir / "summary.md").read_text(encoding="utf-8")
        return f"<p>{len(self.files)} files in <code>{html.escape(str(self.out_dir))}</code></p>" \
               f"<pre style='white-space:pre-wrap'>{html.escape(text)}</pre>"


def analyze(capture, out_dir, *, main_set: str = PairSet.PAIRS, baseline_set: str | None = None,
            pooled: bool = False, n_resamples: int = 1000, seed: int = 0, figures: bool = True,
            example_pair: str | None = None, title: str | None = None,
            special=None, settings: dict | None = None) -> StudyResult:
    """Tables, statistics, figures and summary of a pair capture in ``out_dir``."""
    timings = {}
    t0 = time.perf_counter()
    if special is None and hasattr(capture, "attrs"):
        special = capture.attrs.get("special_tokens") or None
    tables = pair_tables(capture, special=special)
    timings["per-pair metrics"] = time.perf_counter() - t0
    if main_set not in tables:
        raise InputError(f"the capture holds no pairs of set {main_set!r} "
                         f"(sets: {', '.join(tables) or 'none'})")
    main = tables[main_set]
    if not main.used.any():
        raise InputError(f"no pair of set {main_set!r} can be analysed: "
                         + "; ".join(f"{r} ({n})" for r, n in Counter(main.excluded).items()))
    if example_pair is not None and example_pair not in main.ids:
        raise InputError(f"--example-pair {example_pair!r} is not a pair id of the study")
    baseline = tables.get(baseline_set) if baseline_set else None
    t0 = time.perf_counter()
    stats = study_statistics(main, baseline, pooled=pooled, n_resamples=n_resamples, seed=seed)
    timings["statistics"] = time.perf_counter() - t0
    out_dir = begin_folder(out_dir)
    files = [out_dir / "stats.csv", out_dir / "pairs.csv", out_dir / "pair_metrics.csv"]
    write_csv(files[0], stats, STATS_COLUMNS)
    write_csv(files[1], (r for t in tables.values() for r in t.rows()), PAIR_COLUMNS)
    metric_cols = [c for m in main.values for c in (m, f"{m}_control")]
    write_csv(files[2], (r for t in tables.values() for r in _per_pair_rows(t)),
              ["set", "id", "kind", "cluster", "layer", "head", *metric_cols])
    if figures:
        t0 = time.perf_counter()
        files += _figures(capture, main, stats, out_dir, example_pair)
        timings["figures"] = time.perf_counter() - t0
    title = title or f"{main.study.capitalize()} study"
    files.append(out_dir / "summary.md")
    write_text(files[-1], summary(main, baseline, stats, title, getattr(capture, "attrs", {}) or {},
                                  settings))
    finish_folder(out_dir, files, title=title, n_pairs=len(main), settings=settings or {})
    return StudyResult(tables, stats, out_dir, [str(f) for f in files], timings)


def _per_pair_rows(table: PairTable):
    names = list(table.values)
    for i in np.flatnonzero(table.used):
        plan = table.plans[i]
        for li, layer in enumerate(table.layers):
            for head in range(table.values[names[0]].shape[2]):
                row = {"set": table.set, "id": plan.pair.id, "kind": plan.pair.kind or "",
                       "cluster": plan.cluster, "layer": layer, "head": head}
                for m in names:
                    row[m] = table.values[m][i, li, head]
                    row[f"{m}_control"] = table.control[m][i, li, head]
                yield row


def _grid(stats, metric, contrast: Contrast, kind, layers, n_heads):
    """(estimate grid, significant grid, why it is descriptive or "") of one metric, contrast
    and kind; a contrast with the original is descriptive for the metrics that say so."""
    grid = np.full((len(layers), n_heads), np.nan)
    sig = np.zeros(grid.shape, bool)
    found = False
    for r in stats:
        if r["metric"] == metric and r["contrast"] == str(contrast) and r["kind"] == kind:
            li = layers.index(r["layer"])
            grid[li, r["head"]] = r["estimate"]
            sig[li, r["head"]] = r["q"] < ALPHA
            found = True
    descriptive = found and contrast.against is Against.ORIGINAL
    return grid, sig, METRICS[metric].descriptive_reason if descriptive else ""


def _figures(capture, main: PairTable, stats, out_dir: Path, example_pair) -> list[Path]:
    from . import plots
    from .study import SIDES

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    layers = list(main.layers)
    n_heads = next(iter(main.values.values())).shape[2]
    kinds = sorted({r["kind"] for r in stats})
    files = []
    for metric in HEADLINE:
        m = METRICS[metric]
        for contrast in contrasts(main)[:2]:
            panels = {}
            for kind in kinds:
                grid, sig, reason = _grid(stats, metric, contrast, kind, layers, n_heads)
                panels[kind] = (grid, None if reason else sig,
                                reason.split(";")[0] if reason else "not significant (q > 0.05)")
            descriptive = contrast.against is Against.ORIGINAL and not m.tested_vs_original
            fig = plots.contrast_heatmaps(
                panels, f"{metric}, {contrast}: {'mean over clusters' if descriptive else 'estimate'}",
                label=f"{m.label} ({m.unit})", center=None if descriptive else 0.0)
            files += plots.save(fig, fig_dir / f"heatmap_{metric}_{contrast}")
    used = main.used
    series = {}
    for metric in ("cue_attention_in", "cue_attention_out"):
        for name, values in ((metric, main.values[metric]), (f"{metric}_control", main.control[metric])):
            per_pair = values[used]
            per_pair = per_pair[~np.isnan(per_pair).all(axis=(1, 2))]
            if len(per_pair):
                mean = per_pair.mean(axis=2)  # mean over heads: [pair, layer]
                low, high = np.percentile(_boot_means(mean), [2.5, 97.5], axis=0)
                series[name] = (mean.mean(0), (low, high))
    if series:
        files += plots.save(plots.cue_by_layer(layers, series), fig_dir / "cue_attention_by_layer")
    grid = np.nanmean(main.values["mean_attention_diff"][used], axis=0)
    li, head = np.unravel_index(np.nanargmax(grid), grid.shape)
    index = main.ids.index(example_pair) if example_pair is not None else int(np.flatnonzero(used)[0])
    orig, cf = (capture[main.positions[index][s]] for s in SIDES[:2])
    fig = plots.pair_figure(orig, cf, layers[li], int(head),
                            title=f"pair {main.ids[index]}: {orig.text!r} vs {cf.text!r}")
    slug = slugs(main.ids)[index]
    files += plots.save(fig, fig_dir / f"pair_{slug}_layer{layers[li]}_head{head}")
    return [Path(f) for f in files]


def _boot_means(values: np.ndarray, n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n, len(values)))
    return values[idx].mean(1)


def _none_significant(n_clusters: int) -> str:
    """Why no head is listed: none tested, none could be (too few clusters), or none is."""
    best = smallest_p(n_clusters)
    if np.isnan(best):
        return (f"No test against the control for this kind: {n_clusters} cluster(s), and a "
                "test needs at least 2.")
    if best >= ALPHA:
        return (f"No head is significant against the control for this kind, and none could "
                f"be: with {n_clusters} clusters the exact sign-flip test gives p >= {best:.3g}. "
                "This is no evidence of absence; add clusters.")
    return "No head is significant against the control for this kind."


def _fmt(x, digits=3) -> str:
    return "" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{digits}g}"


def summary(main: PairTable, baseline, stats, title: str, attrs: dict, settings=None) -> str:
    """summary.md: per kind, what was tested against what, and the heads that survive."""
    used = main.used
    lines = [f"# {title}", ""]
    if attrs:
        lines.append(f"Model: `{attrs.get('model')}` ({attrs.get('model_type')}), run created "
                     f"{attrs.get('created')}, probe {attrs.get('probe_version')}.")
    excluded = Counter(str(e.why) for e in main.exclusions if e is not None)
    lines.append(f"Pairs: {len(main)} input rows, {int(used.sum())} used in "
                 f"{len(set(main.clusters[used]))} clusters"
                 + (f"; left out: {', '.join(f'{k} {v}' for k, v in excluded.items())}" if excluded else "")
                 + " (pairs.csv lists every row and why).")
    sources = Counter(p.control_source for p, u in zip(main.plans, used) if u)
    cue_sources = Counter(p.cue.source for p, u in zip(main.plans, used) if u)
    lines.append(f"Controls: {', '.join(f'{k} {v}' for k, v in sorted(sources.items()))}. "
                 f"Cues: {', '.join(f'{k} {v}' for k, v in sorted(cue_sources.items()))} "
                 "(pairs without a cue are left out of the cue metrics only).")
    if baseline is not None:
        lines.append(f"Baseline set `{baseline.set}`: {int(baseline.used.sum())} pairs, compared "
                     f"unpaired in `{Contrast(main.study, Against.BASELINE)}` (not a matched "
                     "control).")
    vs_original, vs_control = (str(c) for c in contrasts(main)[:2])
    lines += ["", "How to read this: `" + vs_original + "` compares each counterfactual with its "
              "original; inserting any word changes attention, so only `" + vs_control + "` (the "
              "difference in differences against the matched control, on the same aligned tokens) "
              "isolates the edit. A head is called selective only when it is significant there. "
              "The control matches insertion, length, position and the edit's place, not the "
              "word: a selective head treats the cue unlike the control's word (say \"not\" "
              "unlike \"really\"), which may be a difference of word identity or class rather "
              f"than of {'negation' if str(main.study) == 'negation' else 'the edit'}'s meaning. "
              f"Tests are over clusters, two-sided; q is Benjamini-Hochberg over the layer x head "
              f"tests of one metric, contrast and kind; significant means q < {ALPHA}. "
              "Descriptive rows (no test) are marked so in stats.csv.", ""]
    tested_orig = ", ".join(n for n, m in METRICS.items() if m.tested_vs_original)
    lines.append(f"Tested against the original: {tested_orig}. Descriptive against the original: "
                 "the other metrics (distances, correlations and cue metrics have no null there). "
                 "Tested against the control: every metric.")
    by = {}
    for r in stats:
        by.setdefault((r["kind"], r["metric"], r["contrast"]), []).append(r)
    kinds = sorted({r["kind"] for r in stats}, key=lambda k: (k == POOLED, k))
    lines += ["", "## Overview: heads significant against the control (of heads tested)", "",
              "| kind | pairs | clusters | " + " | ".join(HEADLINE) + " |",
              "|---|---|---|" + "---|" * len(HEADLINE)]
    for kind in kinds:
        pick = used & (main.kinds == kind) if kind != POOLED else used
        cells = []
        for metric in HEADLINE:
            rows = [r for r in by.get((kind, metric, vs_control), []) if not np.isnan(r["p"])]
            cells.append(f"{sum(r['q'] < ALPHA for r in rows)}/{len(rows)}")
        lines.append(f"| {kind} | {int(pick.sum())} | {len(set(main.clusters[pick]))} | "
                     + " | ".join(cells) + " |")
    for kind in kinds:
        pick = used & (main.kinds == kind) if kind != POOLED else used
        with_control = sum(p.control is not None for p, u in zip(main.plans, pick) if u)
        lines += ["", f"## {kind}", "",
                  f"{int(pick.sum())} pairs in {len(set(main.clusters[pick]))} clusters; "
                  f"{with_control} with a control.", "",
                  "| metric | vs original: estimate (test) | sig. vs original | sig. vs control "
                  "| sig. on both |", "|---|---|---|---|---|"]
        top, clusters_c = [], 0
        for metric, m in METRICS.items():
            orig = by.get((kind, metric, vs_original), [])
            ctrl_all = by.get((kind, metric, vs_control), [])
            ctrl = [r for r in ctrl_all if not np.isnan(r["p"])]
            if not orig and not ctrl:
                continue
            sig_o = {(r["layer"], r["head"]) for r in orig if r["q"] < ALPHA}
            sig_c = {(r["layer"], r["head"]) for r in ctrl if r["q"] < ALPHA}
            mean_o = np.mean([r["estimate"] for r in orig]) if orig else np.nan
            tested_o = sum(not np.isnan(r["p"]) for r in orig)
            test_o = "descriptive" if not m.tested_vs_original else f"{len(sig_o)}/{tested_o}"
            clusters_c = max([clusters_c, *(int(r["n_clusters"]) for r in ctrl_all)])
            lines.append(f"| {metric} | {_fmt(mean_o)} (mean over heads) | {test_o} | "
                         f"{len(sig_c)}/{len(ctrl)} | "
                         f"{len(sig_o & sig_c) if m.tested_vs_original else '-'} |")
            est_o = {(r["layer"], r["head"]): r["estimate"] for r in orig}
            top += [(r, est_o.get((r["layer"], r["head"]))) for r in ctrl if r["q"] < ALPHA]
        top.sort(key=lambda t: -abs(t[0]["effect_size"]) if not np.isnan(t[0]["effect_size"]) else 0)
        if top:
            lines += ["", "Selective heads (significant against the control), strongest first:", "",
                      "| metric | layer | head | vs control: estimate (95% CI) | d_z | q "
                      "| vs original: estimate |", "|---|---|---|---|---|---|---|"]
            for r, o in top[:8]:
                lines.append(f"| {r['metric']} | {r['layer']} | {r['head']} | {_fmt(r['estimate'])} "
                             f"({_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}) | {_fmt(r['effect_size'])} "
                             f"| {_fmt(r['q'], 2)} | {_fmt(o)} |")
        else:
            lines += ["", _none_significant(clusters_c)]
    return "\n".join(lines) + "\n"
