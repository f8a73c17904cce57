"""What a patch sweep found: :class:`SweepResult`, the effects of every patched spec on every
pair, normalised by the pair's gap (NaN where a pair was skipped or its gap too small), with
each pair's status, long-form rows, an optional pandas frame and a notebook summary.

One job: that result. Imports numpy and :mod:`probe.errors` (and pandas, optionally, in
:meth:`SweepResult.to_pandas`); the sweep that fills it is :func:`probe.patch_pairs.sweep`.

>>> import numpy as np
>>> from types import SimpleNamespace as Pair
>>> pairs = [Pair(id="p1", kind="negation", cluster="c1", status=""),
...          Pair(id="p2", kind="negation", cluster="c2", status="no aligned content tokens")]
>>> r = SweepResult(pairs, [("z", 0, (1,))], raw=np.array([[0.3], [np.nan]]),
...                 gap=np.array([0.6, np.nan]), small_gap=np.array([False, False]), metric="logit")
>>> r.effects.tolist(), r.rows()[0]["effect"], r.status(1)
([[0.5], [nan]], 0.5, 'no aligned content tokens')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

#: the status of a used pair whose gap is too small to normalise by (patch_status.csv)
SMALL_GAP = "small gap"


@dataclass
class SweepResult:
    """Effects of a sweep. Arrays are NaN where a pair is skipped or its gap is too small."""

    setups: list                # probe.patch_pairs.PairSetup per pair
    specs: list                 # (component, layer, heads) of each column of raw
    raw: np.ndarray             # [pair, spec]: patched - base
    gap: np.ndarray             # [pair]: source - base
    small_gap: np.ndarray       # [pair] bool
    metric: str

    @property
    def effects(self) -> np.ndarray:
        """Normalised effects [pair, spec]: raw / gap; NaN for skipped or small-gap pairs."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.raw / self.gap[:, None]
        out[self.small_gap] = np.nan
        return out

    def status(self, i: int) -> str:
        """Pair ``i``'s entry in patch_status.csv: why it was skipped, :data:`SMALL_GAP`, or ""
        when used."""
        return self.setups[i].status or (SMALL_GAP if self.flagged(i) else "")

    def skipped(self, i: int) -> bool:
        """Whether pair ``i`` was not patched (no alignment, no position, duplicate, ...)."""
        return bool(self.setups[i].status)

    def flagged(self, i: int) -> bool:
        """Whether pair ``i`` was patched but its gap is too small to normalise by."""
        return not self.skipped(i) and bool(self.small_gap[i])

    def rows(self) -> list[dict]:
        """One row per (pair, spec): id, kind, cluster, status, component, layer, head
        (``all`` for a whole layer), gap, raw and effect (NaN where not normalised)."""
        if self.raw.ndim != 2:
            raise InputError("rows() needs a sweep of whole heads (per_position=False)")
        effects = self.effects
        return [{"id": s.id, "kind": s.kind, "cluster": s.cluster, "status": self.status(i) or "used",
                 "component": component, "layer": layer,
                 "head": heads[0] if len(heads) == 1 else "all",
                 "gap": float(self.gap[i]), "raw": float(self.raw[i, k]), "effect": float(effects[i, k])}
                for i, s in enumerate(self.setups)
                for k, (component, layer, heads) in enumerate(self.specs)]

    def to_pandas(self):
        """:meth:`rows` as a pandas DataFrame (pandas is optional). Per-pair effects are
        descriptive; the tests over clusters are :func:`probe.patch_report.statistics`."""
        try:
            import pandas as pd
        except ImportError:
            raise InputError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame(self.rows())

    def _repr_html_(self) -> str:
        import html

        used = sum(1 for i in range(len(self.setups)) if not self.status(i))
        with np.errstate(all="ignore"):
            mean = np.nanmean(self.effects, axis=0) if used else np.full(len(self.specs), np.nan)
        top = np.argsort(-np.abs(np.nan_to_num(mean)))[:5]
        items = "".join(f"<li>{html.escape(str(self.specs[k][0]))} layer {self.specs[k][1]} "
                        f"head {html.escape(str(self.specs[k][2][0] if len(self.specs[k][2]) == 1 else 'all'))}: "
                        f"mean effect {mean[k]:.3f}</li>" for k in top if np.isfinite(mean[k]))
        return (f"<p>patch sweep ({html.escape(self.metric)}): {used} of {len(self.setups)} pairs "
                f"used, {len(self.specs)} patches; largest mean effects (descriptive):</p><ul>{items}</ul>")
