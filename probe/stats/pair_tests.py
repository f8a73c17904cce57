"""Pair-level statistics, each pair its own cluster, kept for their callers: a bootstrap CI of
the mean, a paired test and an unpaired test.

One job: the tests of :mod:`probe.stats` that count pairs as independent (use the cluster
tests where pairs share a sentence or a template). Imports numpy and the package's ``cells``,
``pvalues`` and ``results``.
"""

from __future__ import annotations

import numpy as np

from .cells import describe, zero_spread
from .pvalues import EXACT_MAX_N, PERMUTATION_MAX_N, sign_flip_p, t_pvalues
from .results import TestResult


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


def paired_test(a, b=None, *, n_permutations: int = 20000, seed: int = 0) -> TestResult:
    """Two-sided paired test of ``mean(a - b) = 0`` per cell (``b`` None: test ``a`` itself).

    Pairs where either side is NaN are dropped per cell; the method follows the smallest n.
    Cells with zero spread get the sign-flip p (never 0; 1 if all differences are 0), and
    statistic and effect size NaN there (not inf).
    """
    a = np.asarray(a, dtype=np.float64)
    d = a - (0.0 if b is None else np.asarray(b, dtype=np.float64))
    shape = d.shape[1:]
    flat = d.reshape(d.shape[0], -1)
    valid = ~np.isnan(flat)
    n, mean, sd = describe(flat, valid)
    degenerate = zero_spread(sd, mean)
    with np.errstate(invalid="ignore", divide="ignore"):
        t = np.where(degenerate, np.nan, mean / (sd / np.sqrt(n)))
        dz = np.where(degenerate, np.nan, mean / sd)
    pvalue = np.full(flat.shape[1], np.nan)
    small = n < PERMUTATION_MAX_N
    method = "t"
    if small.any():
        method = "exact sign-flip" if n[small].max() <= EXACT_MAX_N else "permutation sign-flip"
    use_t = ~small & ~degenerate
    if use_t.any():
        pvalue[use_t] = t_pvalues(t[use_t], n[use_t] - 1)[0]
    flip = np.flatnonzero((n > 0) & ~use_t)
    if flip.size:
        pvalue[flip] = sign_flip_p(flat, valid, flip, n_permutations, seed)
    return TestResult(t.reshape(shape), pvalue.reshape(shape), mean.reshape(shape),
                      dz.reshape(shape), n.reshape(shape), method)


def unpaired_test(a, b, *, n_permutations: int = 20000, seed: int = 0) -> TestResult:
    """Two-sided test of equal means of two independent samples, per cell.

    Cells with zero pooled spread get the label-permutation p (never 0) and statistic and
    effect size NaN (not inf).
    """
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
        degenerate = zero_spread(pooled, ma - mb) & (na + nb > 2)
        t = np.where(degenerate, np.nan, t)
        d = np.where(degenerate, np.nan, (ma - mb) / pooled)
        pvalue = np.where(np.isnan(t), np.nan, t_pvalues(t, df)[0])
    small = np.minimum(na, nb) < PERMUTATION_MAX_N
    method = "welch t"
    if small.any():
        method = "label permutation"
    rng = np.random.default_rng(seed)
    for k in np.flatnonzero((small | degenerate) & (na > 0) & (nb > 0)):
        x, y = fa[~np.isnan(fa[:, k]), k], fb[~np.isnan(fb[:, k]), k]
        both = np.concatenate([x, y])
        perms = np.argsort(rng.random((n_permutations, both.size)), axis=1)
        shuffled = both[perms]
        null = np.abs(shuffled[:, : x.size].mean(1) - shuffled[:, x.size:].mean(1))
        observed = abs(x.mean() - y.mean())
        pvalue[k] = (1 + (null >= observed - 1e-12 * max(observed, 1)).sum()) / (n_permutations + 1)
    return TestResult(t.reshape(shape), pvalue.reshape(shape), (ma - mb).reshape(shape),
                      d.reshape(shape), np.minimum(na, nb).reshape(shape), method)
