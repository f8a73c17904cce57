"""Pattern-metric reports over a capture or stored run: the engine of ``probe metrics``.

Writes, into an output folder:

- ``example_metrics.csv``: one row per example x layer x head with every metric of
  :data:`probe.metrics.PROFILE`, the sink token and the example's metadata field(s);
- ``head_summary.csv``: per layer x head, the mean of each metric over examples and the head's
  class (:func:`probe.metrics.classify_heads`);
- ``by_{field}.csv`` for each ``group_by`` field: per group x layer x head, the means;
- ``token_importance.csv``: per example and token, raw, value-weighted and rollout importance.

Imports numpy, :mod:`probe.captures`, :mod:`probe.errors`, :mod:`probe.metrics` and
:mod:`probe.outputs` (and, inside functions, :mod:`probe.export`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import metrics as M
from .captures import require_every_head
from .errors import InputError
from .outputs import csv_rows, write_csv


class Means:
    """NaN-aware running means of ``[layer, head]`` arrays, per name: flat memory in N."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.n = 0

    def add(self, values: dict[str, np.ndarray]) -> None:
        self.n += 1
        for name in M.PROFILE:
            v = np.asarray(values[name], dtype=np.float64)
            ok = ~np.isnan(v)
            if name not in self.sums:
                self.sums[name], self.counts[name] = np.zeros(v.shape), np.zeros(v.shape)
            self.sums[name] += np.where(ok, v, 0.0)
            self.counts[name] += ok

    def profile(self) -> dict[str, np.ndarray]:
        with np.errstate(invalid="ignore", divide="ignore"):
            return {n: np.where(self.counts[n] > 0, self.sums[n] / self.counts[n], np.nan)
                    for n in self.sums}


def write_report(capture, out_dir, *, group_by=(), window: int = 1, fmt: str = "csv") -> list[str]:
    """Write the CSV tables of the module docstring for ``capture`` into ``out_dir``, in one
    streaming pass over the examples (memory does not grow with their number). ``fmt="parquet"``
    writes the same tables as ``.parquet`` files at full precision (:mod:`probe.export`).

    >>> import tempfile
    >>> from probe.captures import Capture, CapturedBatch
    >>> batch = CapturedBatch({"blocks.0.attn.pattern": np.full((2, 1, 3, 3), 1 / 3)},
    ...                       [(0, 3), (0, 3)], [["the", "cat", "."], ["a", "dog", "."]],
    ...                       meta=[{"kind": "x"}, {"kind": "y"}])
    >>> capture = Capture([batch.example(i, index=i) for i in range(2)], batch.keys)
    >>> [f.rsplit("/", 1)[1] for f in write_report(capture, tempfile.mkdtemp(), group_by=["kind"])]
    ['example_metrics.csv', 'token_importance.csv', 'head_summary.csv', 'by_kind.csv']
    """
    out_dir = Path(out_dir)
    require_every_head(capture, "probe metrics")
    if fmt not in ("csv", "parquet"):
        raise InputError(f"table format must be csv or parquet, not {fmt!r}")
    layers = list(capture.layers)
    has_vw = any(k.endswith((".value_weighted", ".value_norm")) for k in capture.keys)
    methods = ("raw", "value_weighted", "rollout") if has_vw else ("raw", "rollout")
    if fmt == "csv":
        rows_to, table_to, ext = csv_rows, write_csv, ".csv"
    elif fmt == "parquet":
        from functools import partial

        from .export import parquet_rows, pyarrow, write_parquet

        pyarrow()  # a missing extra is an error before any work
        numeric = (*M.PROFILE, *methods)
        rows_to, table_to = partial(parquet_rows, numeric=numeric), partial(write_parquet, numeric=numeric)
        ext = ".parquet"
    out_dir.mkdir(parents=True, exist_ok=True)
    overall, groups = Means(), {field: {} for field in group_by}
    files = [str(out_dir / f"example_metrics{ext}"), str(out_dir / f"token_importance{ext}")]
    with rows_to(files[0], ["example", "layer", "head", *group_by, "sink_token", *M.PROFILE]) as metric_row, \
            rows_to(files[1], ["example", "position", "token", *methods]) as token_row:
        for ex in capture:
            values = M.example_metrics(ex, layers, window)
            overall.add(values)
            labels = {g: ex.meta.get(g, "") for g in group_by}
            for field, label in labels.items():
                groups[field].setdefault(str(label), Means()).add(values)
            for li, layer in enumerate(layers):
                for head in range(values["entropy"].shape[1]):
                    metric_row({"example": ex.index, "layer": layer, "head": head, **labels,
                                **{n: values[n][li, head] for n in values}})
            importance = {m: M.token_importance(ex, m) for m in methods}
            for t, token in enumerate(ex.tokens):
                token_row({"example": ex.index, "position": t, "token": token,
                           **{m: v[t] for m, v in importance.items()}})
    profile = overall.profile()
    classes = M.classify_heads(profile)
    n_heads = classes.shape[1]
    files.append(str(out_dir / f"head_summary{ext}"))
    table_to(files[-1], ({"layer": layer, "head": head, "class": classes[li, head],
                           **{n: profile[n][li, head] for n in M.PROFILE}}
                          for li, layer in enumerate(layers) for head in range(n_heads)),
              ["layer", "head", "class", *M.PROFILE])
    for field in group_by:
        rows = []
        for label in sorted(groups[field]):
            means = groups[field][label]
            prof = means.profile()
            rows += [{field: label, "n": means.n, "layer": layer, "head": head,
                      **{n: prof[n][li, head] for n in M.PROFILE}}
                     for li, layer in enumerate(layers) for head in range(n_heads)]
        files.append(str(out_dir / f"by_{field}{ext}"))
        table_to(files[-1], rows, [field, "n", "layer", "head", *M.PROFILE])
    return files
