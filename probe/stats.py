"""Statistics across pairs: pure functions, vectorised over every trailing axis (layer x head).

Samples lie along axis 0 (``[pair, layer, head]`` or any ``[pair, ...]``); NaN entries (a pair
without a cue, a constant pattern) are left out cell by cell.

- :func:`bootstrap_ci`: percentile bootstrap of the mean, resampling pairs.
- :func:`paired_test`: sign-flip test on ``a - b``: exact over all 2^n sign vectors for
  n <= 16, Monte Carlo sign flips for n < 30, paired t-test (Student) from n = 30 on.
- :func:`unpaired_test`: label permutation for small samples, Welch's t-test otherwise.
- :func:`benjamini_hochberg`: FDR q-values across all tests given.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.normal(0.5, 1, (200, 2, 3)); b = rng.normal(0, 1, (200, 2, 3))
>>> r = paired_test(a, b)
>>> r.pvalue.shape, bool((r.pvalue < 0.05).all()), r.method
((2, 3), True, 't')
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product

import numpy as np
from scipy import stats as sps

EXACT_MAX_N = 16
PERMUTATION_MAX_N = 30


@dataclass
class TestResult:
    """Per-cell results of a two-sided test (arrays of the trailing shape)."""

    __test__ = False  # not a pytest test class

    statistic: np.ndarray  # t statistic (or mean difference for permutation tests)
    pvalue: np.ndarray
    mean_difference: np.ndarray
    effect_size: np.ndarray  # Cohen's d_z (paired) or d with pooled sd (unpaired)
    n: np.ndarray
    method: str


def nanmean(values: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.nanmean(values, axis=0) if np.isnan(values).any() else values.mean(axis=0)


def bootstrap_ci(values, *, n_resamples: int = 1000, level: float = 0.95, seed: int = 0,
                 chunk: int = 250):
    """``(low, high)`` percentile bootstrap interval of the mean over axis 0.

    Resamples are drawn as multinomial counts over pairs, so the means of all resamples for
    all cells are one matrix product ``counts @ values``: no loop over pairs or cells.
    NaN samples are excluded per cell (resampled weights renormalised).

    >>> import numpy as np
    >>> low, high = bootstrap_ci(np.arange(100.0)[:, None])
    >>> bool(low[0] < 49.5 < high[0])
    True
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.shape[0]
    flat = values.reshape(n, -1)
    valid = ~np.isnan(flat)
    filled = np.where(valid, flat, 0.0)
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, flat.shape[1]))
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=stop - start).astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            means[start:stop] = (counts @ filled) / (counts @ valid)
    alpha = (1 - level) / 2
    low, high = np.nanpercentile(means, [100 * alpha, 100 * (1 - alpha)], axis=0)
    shape = values.shape[1:]
    return low.reshape(shape), high.reshape(shape)


def _sign_flip_pvalues(d: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """Two-sided sign-flip p-values of the mean of d [n, K] (NaN-free columns)."""
    n = d.shape[0]
    if n <= EXACT_MAX_N:
        signs = np.array(list(product((1.0, -1.0), repeat=n)))
    else:
        rng = np.random.default_rng(seed)
        signs = rng.choice((1.0, -1.0), size=(n_permutations, n))
        signs = np.vstack([np.ones(n), signs])  # the observed assignment counts once
    observed = np.abs(d.mean(0))
    null = np.abs(signs @ d / n)
    return (null >= observed - 1e-12 * np.maximum(observed, 1)).mean(0)


def paired_test(a, b=None, *, n_permutations: int = 20000, seed: int = 0) -> TestResult:
    """Two-sided paired test of ``mean(a - b) = 0`` per cell (``b`` None: test ``a`` itself).

    Pairs where either side is NaN are dropped per cell; the method follows the smallest n.
    """
    a = np.asarray(a, dtype=np.float64)
    d = a - (0.0 if b is None else np.asarray(b, dtype=np.float64))
    shape = d.shape[1:]
    flat = d.reshape(d.shape[0], -1)
    valid = ~np.isnan(flat)
    n = valid.sum(0)
    mean = np.where(n > 0, np.nansum(flat, 0) / np.maximum(n, 1), np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        sd = np.sqrt(np.nansum((flat - mean) ** 2, 0) / np.maximum(n - 1, 1))
        t = mean / (sd / np.sqrt(n))
        dz = mean / sd
    pvalue = np.full(flat.shape[1], np.nan)
    small = n < PERMUTATION_MAX_N
    method = "t"
    if small.any():
        method = "exact sign-flip" if n[small].max() <= EXACT_MAX_N else "permutation sign-flip"
        for k in np.flatnonzero(small & (n > 0)):
            column = flat[valid[:, k], k][:, None]
            pvalue[k] = _sign_flip_pvalues(column, n_permutations, seed)[0]
    large = ~small
    if large.any():
        pvalue[large] = 2 * sps.t.sf(np.abs(t[large]), df=n[large] - 1)
        pvalue[large & (sd == 0)] = np.where(mean[large & (sd == 0)] == 0, 1.0, 0.0)
    return TestResult(t.reshape(shape), pvalue.reshape(shape), mean.reshape(shape),
                      dz.reshape(shape), n.reshape(shape), method)


def unpaired_test(a, b, *, n_permutations: int = 20000, seed: int = 0) -> TestResult:
    """Two-sided test of equal means of two independent samples, per cell."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    shape = a.shape[1:]
    fa, fb = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
    na, nb = (~np.isnan(fa)).sum(0), (~np.isnan(fb)).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ma, mb = np.nanmean(fa, 0), np.nanmean(fb, 0)
        va, vb = np.nanvar(fa, 0, ddof=1), np.nanvar(fb, 0, ddof=1)
        t = (ma - mb) / np.sqrt(va / na + vb / nb)
        df = (va / na + vb / nb) ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
        pooled = np.sqrt(((na - 1) * va + (nb - 1) * vb) / (na + nb - 2))
        d = (ma - mb) / pooled
    pvalue = 2 * sps.t.sf(np.abs(t), df)
    small = np.minimum(na, nb) < PERMUTATION_MAX_N
    method = "welch t"
    if small.any():
        method = "label permutation"
        rng = np.random.default_rng(seed)
        for k in np.flatnonzero(small & (na > 0) & (nb > 0)):
            x, y = fa[~np.isnan(fa[:, k]), k], fb[~np.isnan(fb[:, k]), k]
            both = np.concatenate([x, y])
            perms = np.argsort(rng.random((n_permutations, both.size)), axis=1)
            shuffled = both[perms]
            null = np.abs(shuffled[:, : x.size].mean(1) - shuffled[:, x.size:].mean(1))
            observed = abs(x.mean() - y.mean())
            pvalue[k] = (1 + (null >= observed - 1e-12 * max(observed, 1)).sum()) / (n_permutations + 1)
    return TestResult(t.reshape(shape), pvalue.reshape(shape), (ma - mb).reshape(shape),
                      d.reshape(shape), np.minimum(na, nb).reshape(shape), method)


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
