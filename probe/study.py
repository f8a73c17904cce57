"""Counterfactual studies end to end: capture pairs, compare them, test across pairs, report.

A pair run is an ordinary run file whose examples carry ``meta`` with ``pair_id``, ``side``
(``original`` / ``counterfactual``), ``set`` (``pairs`` for the studied pairs, ``baseline``
for a contrast set) and the pair's ``kind``, ``target``, ``group`` and other fields. Everything
after the capture reads only the run, so ``probe analyze RUN.h5`` recomputes every table and
figure without the model.

Tests per metric, layer and head (``stats.csv``):

- cue metrics: paired against the same quantity at the same positions of the other side
  (the positional baseline in :mod:`probe.compare`);
- other metrics, when a baseline set is present: paired against the baseline pair whose
  ``group`` names the studied pair (e.g. the word swap of the same original), when at least
  10 such matches exist; otherwise unpaired against all baseline pairs;
- q-values: Benjamini-Hochberg over the layer x head tests of each metric (``q``) and over
  every test in the table (``q_all``).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import compare as cmp
from .align import align
from .errors import InputError
from .stats import benjamini_hochberg, bootstrap_ci, nanmean, paired_test, unpaired_test

STUDY_COMPONENTS = ["pattern", "value_weighted", "z"]
MIN_MATCHED_GROUPS = 10

# metrics shown in the summary and as heatmaps, with how to read them
HEADLINE = {
    "mean_attention_diff": "mean |attention change| on matched tokens",
    "attention_js_divergence": "Jensen-Shannon divergence of attention rows (nats)",
    "value_weighted_diff": "mean |value-weighted attention change|",
    "value_output_correlation": "correlation of per-head outputs z",
    "cue_attention_in": "attention mass to the cue",
    "cue_value_share": "cue's share of value-weighted attention",
}


def pair_texts(sets: dict) -> tuple[list[str], list[dict]]:
    """Texts and per-example metadata for every pair of every set (original, then counterfactual)."""
    texts, metas = [], []
    for set_name, pairs in sets.items():
        for p in pairs:
            for side, text in (("original", p.original), ("counterfactual", p.counterfactual)):
                texts.append(text)
                metas.append({"pair_id": p.id, "side": side, "set": set_name, "kind": p.kind,
                              "target": p.target, "group": p.group, **p.meta})
    return texts, metas


def capture_pairs(probe, sets: dict, out, **options):
    """Capture both sides of every pair into the run file ``out``; returns the opened run."""
    texts, metas = pair_texts(sets)
    return probe.run(texts, out=out, meta=metas, **options)


@dataclass
class PairTable:
    """Per-pair metrics of one set: ``metrics[name]`` is ``[pair, layer, head]`` (NaN: n/a)."""

    set: str
    ids: list[str]
    info: list[dict]
    layers: tuple[int, ...]
    #: (original, counterfactual) example positions of each pair in the capture
    positions: list[tuple[int, int]] = field(default_factory=list)
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def _group_examples(capture) -> dict[str, dict[str, dict]]:
    """set -> pair_id -> {side: example index}; in order of first appearance."""
    sets: dict[str, dict[str, dict]] = {}
    for i, meta in enumerate(capture.metas()):
        if "pair_id" not in meta or "side" not in meta:
            raise InputError(f"example {i} of the run has no pair_id/side metadata: this is "
                             "not a pair run (capture pairs with probe negation/counterfactual)")
        sets.setdefault(meta.get("set", "pairs"), {}).setdefault(str(meta["pair_id"]), {})[meta["side"]] = i
    return sets


def pair_tables(capture, *, metrics=cmp.METRICS, special=None) -> dict[str, PairTable]:
    """A :class:`PairTable` per set of a pair capture (live or stored)."""
    layers = tuple(capture.layers)
    tables = {}
    for set_name, pairs in _group_examples(capture).items():
        ids, info, rows, positions = [], [], [], []
        for pid, sides in pairs.items():
            if set(sides) != {"original", "counterfactual"}:
                continue  # an unfinished run may hold one side only
            orig, cf = capture[sides["original"]], capture[sides["counterfactual"]]
            alignment = align(orig.tokens, cf.tokens, target=cf.meta.get("target"))
            rows.append(cmp.compare_pair(orig, cf, alignment, layers=layers, metrics=metrics,
                                         special=special))
            ids.append(pid)
            positions.append((sides["original"], sides["counterfactual"]))
            meta = {k: v for k, v in cf.meta.items() if k not in ("side", "set")}
            info.append({"pair_id": pid, "original": orig.text, "counterfactual": cf.text, **meta,
                         **alignment.describe(orig.tokens, cf.tokens)})
        if not rows:
            continue
        shape = next(iter(rows[0].values())).shape
        names = sorted({k for r in rows for k in r})
        table = PairTable(set_name, ids, info, layers, positions)
        for name in names:
            table.metrics[name] = np.stack([r.get(name, np.full(shape, np.nan)) for r in rows])
        tables[set_name] = table
    return tables


def _matched_groups(main: PairTable, baseline: PairTable):
    """Index arrays (main rows, baseline rows) of baseline pairs whose group is a main pair."""
    where = {pid: i for i, pid in enumerate(main.ids)}
    rows_main, rows_base = [], []
    for j, meta in enumerate(baseline.info):
        group = meta.get("group")
        if group is not None and str(group) in where and where[str(group)] not in rows_main:
            rows_main.append(where[str(group)])
            rows_base.append(j)
    return np.array(rows_main, dtype=int), np.array(rows_base, dtype=int)


def study_statistics(main: PairTable, baseline: PairTable | None = None, *,
                     n_resamples: int = 1000, seed: int = 0) -> list[dict]:
    """Rows of ``stats.csv``: one per metric x layer x head (see the module docstring)."""
    rows = []
    for metric in [m for m in cmp.METRICS if m in main.metrics]:
        values = main.metrics[metric]
        low, high = bootstrap_ci(values, n_resamples=n_resamples, seed=seed)
        mean = nanmean(values)
        result, base_name, base_mean = None, "", np.full(mean.shape, np.nan)
        if f"{metric}_baseline" in main.metrics:
            other = main.metrics[f"{metric}_baseline"]
            result = paired_test(values, other, seed=seed)
            base_name, base_mean = "same positions, other side", nanmean(other)
        elif baseline is not None and metric in baseline.metrics:
            rm, rb = _matched_groups(main, baseline)
            if len(rm) >= MIN_MATCHED_GROUPS:
                result = paired_test(values[rm], baseline.metrics[metric][rb], seed=seed)
                base_name = f"{baseline.set} pairs of the same original ({len(rm)} matched)"
                base_mean = nanmean(baseline.metrics[metric][rb])
            else:
                result = unpaired_test(values, baseline.metrics[metric], seed=seed)
                base_name = f"{baseline.set} pairs (unpaired)"
                base_mean = nanmean(baseline.metrics[metric])
        n = (~np.isnan(values)).sum(0)
        q = benjamini_hochberg(result.pvalue) if result is not None else np.full(mean.shape, np.nan)
        for li, layer in enumerate(main.layers):
            for head in range(values.shape[2]):
                row = {"metric": metric, "layer": layer, "head": head, "n": int(n[li, head]),
                       "mean": mean[li, head], "ci_low": low[li, head], "ci_high": high[li, head],
                       "baseline": base_name, "baseline_mean": base_mean[li, head]}
                if result is not None:
                    row.update({"difference": result.mean_difference[li, head],
                                "effect_size": result.effect_size[li, head],
                                "statistic": result.statistic[li, head],
                                "p": result.pvalue[li, head], "q": q[li, head],
                                "test": f"{'paired' if 'unpaired' not in base_name else 'unpaired'} "
                                        f"{result.method}"})
                rows.append(row)
    p_all = np.array([r.get("p", np.nan) for r in rows], dtype=float)
    q_all = benjamini_hochberg(p_all)
    for row, qa in zip(rows, q_all):
        row["q_all"] = qa
        row["significant"] = bool(row.get("q", np.nan) <= 0.05)
    return rows


STATS_COLUMNS = ["metric", "layer", "head", "n", "mean", "ci_low", "ci_high", "baseline",
                 "baseline_mean", "difference", "effect_size", "statistic", "p", "q", "q_all",
                 "test", "significant"]


def _fmt(value):
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{float(value):.6g}"
    return value


def write_csv(path, rows, columns) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})


def _per_pair_rows(table: PairTable):
    names = [m for m in table.metrics]
    for i, pid in enumerate(table.ids):
        for li, layer in enumerate(table.layers):
            for head in range(table.metrics[names[0]].shape[2]):
                yield {"set": table.set, "pair_id": pid, "kind": table.info[i].get("kind"),
                       "layer": layer, "head": head,
                       **{m: table.metrics[m][i, li, head] for m in names}}


@dataclass
class StudyResult:
    tables: dict[str, PairTable]
    stats: list[dict]
    out_dir: Path
    files: list[str]
    timings: dict[str, float]


def analyze(capture, out_dir, *, main_set: str = "pairs", baseline_set: str | None = "baseline",
            n_resamples: int = 1000, seed: int = 0, figures: bool = True,
            example_pair: str | None = None, title: str = "Counterfactual study",
            special=None) -> StudyResult:
    """Tables, statistics, figures and summary of a pair capture (live or stored) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = {}
    t0 = time.perf_counter()
    if special is None and hasattr(capture, "attrs"):
        special = capture.attrs.get("special_tokens") or None
    tables = pair_tables(capture, special=special)
    timings["per-pair metrics"] = time.perf_counter() - t0
    if main_set not in tables:
        raise InputError(f"the capture holds no complete pairs of set {main_set!r} "
                         f"(sets: {', '.join(tables) or 'none'})")
    main = tables[main_set]
    baseline = tables.get(baseline_set) if baseline_set else None
    t0 = time.perf_counter()
    stats = study_statistics(main, baseline, n_resamples=n_resamples, seed=seed)
    timings["statistics"] = time.perf_counter() - t0
    files = []
    write_csv(out_dir / "stats.csv", stats, STATS_COLUMNS)
    files.append(str(out_dir / "stats.csv"))
    metric_names = sorted({m for t in tables.values() for m in t.metrics})
    write_csv(out_dir / "pairs.csv", (r for t in tables.values() for r in _per_pair_rows(t)),
              ["set", "pair_id", "kind", "layer", "head", *metric_names])
    files.append(str(out_dir / "pairs.csv"))
    info_cols = ["set", "pair_id", "kind", "target", "group", "original", "counterfactual",
                 "n_matched", "inserted", "deleted", "replaced", "cue_tokens", "cue_side", "cue_source"]
    write_csv(out_dir / "pair_alignments.csv",
              ({"set": t.set, **info} for t in tables.values() for info in t.info), info_cols)
    files.append(str(out_dir / "pair_alignments.csv"))
    if figures:
        t0 = time.perf_counter()
        files += _figures(capture, main, stats, out_dir, example_pair)
        timings["figures"] = time.perf_counter() - t0
    summary = _summary(main, baseline, stats, title, capture)
    (out_dir / "summary.md").write_text(summary, encoding="utf-8")
    files.append(str(out_dir / "summary.md"))
    return StudyResult(tables, stats, out_dir, files, timings)


def _grid(stats, metric, field_name, layers, n_heads):
    grid = np.full((len(layers), n_heads), np.nan)
    sig = np.zeros((len(layers), n_heads), bool)
    for row in stats:
        if row["metric"] == metric:
            li = layers.index(row["layer"])
            grid[li, row["head"]] = row.get(field_name, np.nan)
            sig[li, row["head"]] = row["significant"]
    return grid, sig


def _figures(capture, main: PairTable, stats, out_dir: Path, example_pair) -> list[str]:
    from . import plots

    fig_dir = out_dir / "figures"
    fig_dir.mkdir(exist_ok=True)
    layers = list(main.layers)
    n_heads = next(iter(main.metrics.values())).shape[2]
    files = []
    for metric, label in HEADLINE.items():
        if metric not in main.metrics:
            continue
        has_test = any(r["metric"] == metric and "p" in r for r in stats)
        field_name = "difference" if has_test else "mean"
        grid, sig = _grid(stats, metric, field_name, layers, n_heads)
        title = f"{metric}: " + ("difference from baseline" if has_test else "mean over pairs")
        fig = plots.metric_heatmap(grid, sig if has_test else None, title, label=label,
                                   center=0.0 if has_test else None)
        files += plots.save(fig, fig_dir / f"heatmap_{metric}")
    series = {}
    for metric in ("cue_attention_in", "cue_attention_out"):
        for suffix in ("", "_baseline"):
            name = metric + suffix
            if name in main.metrics:
                per_pair = np.nanmean(main.metrics[name], axis=2)  # mean over heads: [pair, layer]
                low, high = bootstrap_ci(per_pair)
                series[name] = (nanmean(per_pair), (low, high))
    if series:
        files += plots.save(plots.cue_by_layer(layers, series), fig_dir / "cue_attention_by_layer")
    # one pair, at the head that changes most on average
    grid, _ = _grid(stats, "mean_attention_diff", "mean", layers, n_heads)
    if np.isfinite(grid).any():
        li, head = np.unravel_index(np.nanargmax(grid), grid.shape)
        if example_pair is not None and example_pair not in main.ids:
            raise InputError(f"--example-pair {example_pair!r} is not a pair id of the study")
        index = main.ids.index(example_pair) if example_pair is not None else 0
        orig, cf = (capture[i] for i in main.positions[index])
        fig = plots.pair_figure(orig, cf, layers[li], int(head),
                                title=f"pair {main.ids[index]}: {orig.text!r} vs {cf.text!r}")
        files += plots.save(fig, fig_dir / f"pair_{main.ids[index]}_layer{layers[li]}_head{head}")
    return files


def _summary(main: PairTable, baseline, stats, title, capture) -> str:
    lines = [f"# {title}", ""]
    attrs = getattr(capture, "attrs", {}) or {}
    if attrs:
        lines.append(f"Model: `{attrs.get('model')}` ({attrs.get('model_type')}), run created "
                     f"{attrs.get('created')}, probe {attrs.get('probe_version')}.")
    kinds = {}
    for info in main.info:
        kinds[info.get("kind")] = kinds.get(info.get("kind"), 0) + 1
    lines.append(f"Pairs: {len(main)} in set `{main.set}` "
                 f"({', '.join(f'{k}: {v}' for k, v in sorted(kinds.items(), key=lambda kv: -kv[1]))})"
                 + (f"; baseline set `{baseline.set}`: {len(baseline)} pairs." if baseline else "."))
    cue_sources = {}
    for info in main.info:
        cue_sources[info.get("cue_source") or "none"] = cue_sources.get(info.get("cue_source") or "none", 0) + 1
    lines.append(f"Cue tokens found by: {', '.join(f'{k} {v}' for k, v in cue_sources.items())}.")
    lines += ["", "Tests are two-sided; q is Benjamini-Hochberg over the layer x head tests of "
              "each metric. Effect size: Cohen's d (d_z for paired tests). See stats.csv for "
              "every metric, layer and head.", ""]
    for metric, label in HEADLINE.items():
        rows = [r for r in stats if r["metric"] == metric and "p" in r]
        if not rows:
            continue
        sig = [r for r in rows if r["significant"]]
        lines.append(f"## {metric}: {label}")
        lines.append("")
        lines.append(f"Baseline: {rows[0]['baseline']}. Significant heads: {len(sig)} of {len(rows)}.")
        top = sorted(sig, key=lambda r: -abs(r["effect_size"]))[:5]
        if top:
            lines += ["", "| layer | head | mean (95% CI) | baseline mean | difference | effect size | q |",
                      "|---|---|---|---|---|---|---|"]
            for r in top:
                lines.append(f"| {r['layer']} | {r['head']} | {r['mean']:.4g} ({r['ci_low']:.4g}, "
                             f"{r['ci_high']:.4g}) | {r['baseline_mean']:.4g} | {r['difference']:+.4g} "
                             f"| {r['effect_size']:+.2f} | {r['q']:.2g} |")
        lines.append("")
    return "\n".join(lines) + "\n"


def study_dir_run(out_dir) -> Path:
    """Where a study keeps its run file."""
    return Path(out_dir) / "run.h5"


def write_settings(out_dir, settings: dict) -> None:
    with open(os.path.join(out_dir, "settings.json"), "w", encoding="utf-8") as f:
        json.dump(settings, f, indent=2, default=str)
