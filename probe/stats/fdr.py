"""Multiple-comparison correction: Benjamini-Hochberg false discovery rate.

One job: q-values from p-values. Imports numpy only.
"""

from __future__ import annotations

import numpy as np


def benjamini_hochberg(pvalues) -> np.ndarray:
    """Benjamini-Hochberg q-values over every entry given (NaN stays NaN).

    >>> benjamini_hochberg([0.01, 0.04, 0.03, 0.5]).round(3).tolist()
    [0.04, 0.053, 0.053, 0.5]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    flat = p.ravel()
    ok = ~np.isnan(flat)
    q = np.full(flat.shape, np.nan)
    m = int(ok.sum())
    if m:
        order = np.argsort(flat[ok])
        ranked = flat[ok][order] * m / np.arange(1, m + 1)
        ranked = np.minimum.accumulate(ranked[::-1])[::-1]
        out = np.empty(m)
        out[order] = np.minimum(ranked, 1.0)
        q[ok] = out
    return q.reshape(p.shape)
