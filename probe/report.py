"""Pattern-metric reports over a capture or stored run: the engine of ``probe metrics``.

Writes, into an output folder:

- ``example_metrics.csv``: one row per example x layer x head with every metric of
  :data:`probe.metrics.PROFILE`, the sink token and the example's metadata field(s);
- ``head_summary.csv``: per layer x head, the mean of each metric over examples and the head's
  class (:func:`probe.metrics.classify_heads`);
- ``by_{field}.csv`` for each ``group_by`` field: per group x layer x head, the means;
- ``token_importance.csv``: per example and token, raw, value-weighted and rollout importance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics as M
from .outputs import write_csv


def collect(capture, *, window: int = 1):
    """One pass over the examples: per-example metrics ``{name: [example, layer, head]}``,
    the examples' meta, and rows of token importance (raw, rollout, and value-weighted when
    captured)."""
    has_vw = any(k.endswith((".value_weighted", ".value_norm")) for k in capture.keys)
    methods = ("raw", "rollout", "value_weighted") if has_vw else ("raw", "rollout")
    per_example, metas, importance = [], [], []
    for ex in capture:
        per_example.append(M.example_metrics(ex, capture.layers, window))
        metas.append({"index": ex.index, "text": ex.text, **ex.meta})
        values = {m: M.token_importance(ex, m) for m in methods}
        importance += [{"example": ex.index, "position": t, "token": token,
                        **{m: v[t] for m, v in values.items()}}
                       for t, token in enumerate(ex.tokens)]
    names = list(per_example[0])
    return {n: np.stack([m[n] for m in per_example]) for n in names}, metas, importance


def head_profile(values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with np.errstate(invalid="ignore"):
        return {n: np.nanmean(v, axis=0) for n, v in values.items() if n in M.PROFILE}


def write_report(capture, out_dir, *, group_by=(), window: int = 1) -> list[str]:
    """Write the CSV tables of the module docstring for ``capture`` into ``out_dir``.

    >>> import tempfile
    >>> from probe.captures import Capture, CapturedBatch
    >>> batch = CapturedBatch({"blocks.0.attn.pattern": np.full((2, 1, 3, 3), 1 / 3)},
    ...                       [(0, 3), (0, 3)], [["the", "cat", "."], ["a", "dog", "."]],
    ...                       meta=[{"kind": "x"}, {"kind": "y"}])
    >>> capture = Capture([batch.example(i, index=i) for i in range(2)], batch.keys)
    >>> [f.rsplit("/", 1)[1] for f in write_report(capture, tempfile.mkdtemp(), group_by=["kind"])]
    ['example_metrics.csv', 'head_summary.csv', 'by_kind.csv', 'token_importance.csv']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    values, metas, importance = collect(capture, window=window)
    layers = list(capture.layers)
    n_heads = values["entropy"].shape[2]
    files = []
    rows = []
    for e, meta in enumerate(metas):
        for li, layer in enumerate(layers):
            for head in range(n_heads):
                row = {"example": meta["index"], "layer": layer, "head": head,
                       **{g: meta.get(g, "") for g in group_by}}
                row.update({n: values[n][e, li, head] for n in values})
                rows.append(row)
    cols = ["example", "layer", "head", *group_by, "sink_token", *M.PROFILE]
    write_csv(out_dir / "example_metrics.csv", rows, cols)
    files.append(str(out_dir / "example_metrics.csv"))

    profile = head_profile(values)
    classes = M.classify_heads(profile)
    summary = [{"layer": layer, "head": head, "class": classes[li, head],
                **{n: profile[n][li, head] for n in M.PROFILE}}
               for li, layer in enumerate(layers) for head in range(n_heads)]
    write_csv(out_dir / "head_summary.csv", summary, ["layer", "head", "class", *M.PROFILE])
    files.append(str(out_dir / "head_summary.csv"))

    for field in group_by:
        labels = np.array([str(m.get(field, "")) for m in metas])
        grouped = []
        for label in sorted(set(labels)):
            pick = labels == label
            prof = head_profile({n: v[pick] for n, v in values.items()})
            grouped += [{field: label, "n": int(pick.sum()), "layer": layer, "head": head,
                         **{n: prof[n][li, head] for n in M.PROFILE}}
                        for li, layer in enumerate(layers) for head in range(n_heads)]
        write_csv(out_dir / f"by_{field}.csv", grouped, [field, "n", "layer", "head", *M.PROFILE])
        files.append(str(out_dir / f"by_{field}.csv"))

    methods = [m for m in ("raw", "value_weighted", "rollout") if m in importance[0]]
    write_csv(out_dir / "token_importance.csv", importance, ["example", "position", "token", *methods])
    files.append(str(out_dir / "token_importance.csv"))
    return files
