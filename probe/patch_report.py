"""Tables and figures of a patching sweep: per-kind cluster statistics, per-pair effects, the
heatmap, effects by position, and the join of causal with correlational (study) effects.

Statistics are those of the negation study (:mod:`probe.study`): per kind, the normalised
effects of the pairs are tested over clusters (:func:`probe.stats.cluster_test`: mean of
cluster means, cluster-bootstrap CI, sign-flip or t over clusters), and ``q`` is
Benjamini-Hochberg over the layer x head tests of one kind. Pairs skipped (no alignment, no
position to patch, duplicate) or flagged (gap too small to normalise by) are not in the tests;
they are listed with their status in ``patch_status.csv``.

Imports numpy, :mod:`probe.errors`, :mod:`probe.stats` and :mod:`probe.study` (inside
functions, scipy.stats and :mod:`probe.plots`).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .errors import InputError
from .stats import benjamini_hochberg, cluster_test
from .study import Against, Contrast, kind_groups as _kind_groups

PATCH_COLUMNS = ["layer", "head", "kind", "n_pairs", "n_clusters", "estimate", "ci_low", "ci_high",
                 "p", "q"]
PAIR_COLUMNS = ["id", "layer", "head", "effect"]
STATUS_COLUMNS = ["id", "kind", "cluster", "status", "gap", "n_positions", "target", "source"]
JOIN_COLUMNS = ["kind", "layer", "head", "correlational_estimate", "correlational_q",
                "causal_estimate", "causal_q"]


def kind_groups(setups, usable: np.ndarray, pooled: bool = False) -> dict[str, np.ndarray]:
    """kind -> boolean pick over pairs (only usable pairs), as the study groups them."""
    return _kind_groups(np.array([s.kind for s in setups], dtype=object), usable, pooled)


def grid(result, columns, shape=None) -> np.ndarray:
    """Effects of head specs as ``[pair, layer, head]`` (NaN where a head was not swept);
    ``shape``: (layers, heads) of the model (default: the largest swept)."""
    heads = [(k, spec) for k, spec in enumerate(result.specs) if k in columns]
    n_layers, n_heads = shape or (1 + max(spec[1] for _, spec in heads),
                                  1 + max(spec[2][0] for _, spec in heads))
    out = np.full((len(result.setups), n_layers, n_heads), np.nan)
    effects = result.effects
    for k, (_, layer, (head,)) in heads:
        out[:, layer, head] = effects[:, k]
    return out


def head_columns(result) -> list[int]:
    return [k for k, (c, _, heads) in enumerate(result.specs) if c != "resid" and len(heads) == 1]


def statistics(values, setups, *, pooled=False, n_resamples=1000, seed=0, head_label=None):
    """Rows of ``patch.csv`` from ``values[pair, layer, head]`` (NaN: not used)."""
    usable = np.isfinite(values).reshape(len(setups), -1).any(1)
    clusters = np.array([s.cluster for s in setups], dtype=object)
    rows, results = [], {}
    for kind, pick in kind_groups(setups, usable, pooled).items():
        r = cluster_test(values[pick], clusters[pick], n_resamples=n_resamples, seed=seed)
        q = benjamini_hochberg(r.p)
        results[kind] = (r, q)
        for layer in range(values.shape[1]):
            for head in range(values.shape[2]):
                if r.n_pairs[layer, head] == 0:
                    continue
                rows.append({"layer": layer, "head": head if head_label is None else head_label,
                             "kind": kind, "n_pairs": int(r.n_pairs[layer, head]),
                             "n_clusters": int(r.n_clusters[layer, head]),
                             "estimate": r.estimate[layer, head], "ci_low": r.ci_low[layer, head],
                             "ci_high": r.ci_high[layer, head], "p": r.p[layer, head],
                             "q": q[layer, head]})
    return rows, results


def pair_rows(result, columns) -> list[dict]:
    effects = result.effects
    rows = []
    for i, s in enumerate(result.setups):
        if result.skipped(i):
            continue
        for k in columns:
            _, layer, heads = result.specs[k]
            rows.append({"id": s.id, "layer": layer, "head": heads[0] if len(heads) == 1 else "all",
                         "effect": effects[i, k]})
    return rows


def status_rows(result, tokenizer) -> list[dict]:
    rows = []
    for i, s in enumerate(result.setups):
        rows.append({"id": s.id, "kind": s.kind, "cluster": s.cluster,
                     "status": result.status(i) or "used", "gap": result.gap[i],
                     "n_positions": len(s.query[0]),
                     "target": " ".join(s.target_tokens), "source": " ".join(s.source_tokens)})
    return rows


def read_study(path, metric: str) -> dict:
    """``(kind, layer, head) -> (estimate, q)`` of a study's ``*_vs_control`` rows for ``metric``."""
    path = Path(path)
    if path.is_dir():
        path = path / "stats.csv"
    if not path.exists():
        raise InputError(f"study table {path} does not exist; give a folder written by probe "
                         "negation/counterfactual (it holds stats.csv)")
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            contrast = Contrast.parse(row.get("contrast") or "")
            if row.get("metric") == metric and contrast and contrast.against is Against.CONTROL:
                num = lambda x: float(x) if x not in ("", None) else np.nan
                out[row["kind"], int(row["layer"]), int(row["head"])] = (num(row["estimate"]), num(row["q"]))
    if not out:
        raise InputError(f"{path} has no *_vs_control rows for metric {metric!r}; pick a metric "
                         "the study tested (e.g. attention_js_divergence)")
    return out


def join_study(rows, study: dict) -> tuple[list[dict], list[dict]]:
    """Joined rows (``JOIN_COLUMNS``) and, per kind, the Spearman correlation of the estimates."""
    from scipy.stats import spearmanr

    joined = []
    for row in rows:
        found = study.get((row["kind"], int(row["layer"]), int(row["head"])))
        if found is None:
            continue
        joined.append({"kind": row["kind"], "layer": row["layer"], "head": row["head"],
                       "correlational_estimate": found[0], "correlational_q": found[1],
                       "causal_estimate": row["estimate"], "causal_q": row["q"]})
    summary = []
    for kind in sorted({r["kind"] for r in joined}):
        a = np.array([r["correlational_estimate"] for r in joined if r["kind"] == kind], dtype=float)
        b = np.array([r["causal_estimate"] for r in joined if r["kind"] == kind], dtype=float)
        ok = np.isfinite(a) & np.isfinite(b)
        rho, p = (spearmanr(a[ok], b[ok]) if ok.sum() >= 3 else (np.nan, np.nan))
        summary.append({"kind": kind, "n_heads": int(ok.sum()), "spearman_rho": float(rho),
                        "p": float(p)})
    return joined, summary


def heatmap(results: dict, title: str):
    """Layer x head heatmaps of the estimates per kind, hatched where q > 0.05, with a colour bar."""
    from .plots import contrast_heatmaps

    panels = {kind: (r.estimate, q < 0.05, "not significant (q > 0.05)") for kind, (r, q) in results.items()}
    return contrast_heatmaps(panels, title, label="normalised effect (fraction of the gap closed)",
                             center=0.0)


def by_position_figure(curves: dict, title: str):
    """Effect by position relative to the edit, one line per head: ``label -> (offsets, mean)``."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4), constrained_layout=True)
    for label, (offsets, mean) in curves.items():
        ax.plot(offsets, mean, marker="o", label=label)
    ax.axhline(0, color="0.6", linewidth=0.8)
    ax.axvline(0, color="0.8", linewidth=0.8, linestyle="--")
    ax.set_xlabel("target position relative to the edit (0: first token after it)")
    ax.set_ylabel("normalised effect (mean over pairs)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return fig


def edit_offsets(setup) -> np.ndarray:
    """Each patched target position relative to the edit: 0 is the first target token after the
    first place where the sides differ (an insertion point or a replaced token)."""
    t, s = setup.query
    keys_t, keys_s = setup.keys
    first = len(setup.target_ids)
    for a, b in zip(keys_t.tolist(), keys_s.tolist()):
        if a != b or setup.target_tokens[a] != setup.source_tokens[b]:
            first = a
            break
    return t - first


def position_curves(result, labels, span: int = 4) -> dict:
    """Mean effect per offset in [-span, span] of a per-position sweep, one curve per spec."""
    effects = result.raw / result.gap[:, None, None]
    effects[result.small_gap] = np.nan
    offsets = np.arange(-span, span + 1)
    curves = {}
    for k, label in enumerate(labels):
        sums, counts = np.zeros(len(offsets)), np.zeros(len(offsets))
        for i, s in enumerate(result.setups):
            if s.status or result.small_gap[i]:
                continue
            for j, off in enumerate(edit_offsets(s)):
                if -span <= off <= span and np.isfinite(effects[i, k, j]):
                    sums[off + span] += effects[i, k, j]
                    counts[off + span] += 1
        with np.errstate(invalid="ignore"):
            curves[label] = (offsets, np.where(counts > 0, sums / np.maximum(counts, 1), np.nan))
    return curves
