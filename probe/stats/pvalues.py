"""Two-sided p-values, vectorised over cells: Student t without underflow to 0, and sign-flip
and label-permutation p-values that count the observed assignment.

One job: p-values; which test a cell gets is decided by the callers (the thresholds
:data:`EXACT_MAX_N` and :data:`PERMUTATION_MAX_N` live here). Imports numpy, scipy and
``cells``.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy import stats as sps

from .cells import chunks, mask_groups

EXACT_MAX_N = 16
PERMUTATION_MAX_N = 30
P_FLOOR = np.finfo(np.float64).tiny  # smallest p reported: a p of 0 is never true
TIE_RTOL = 1e-9  # resampled statistics this close (relative to the data's scale) tie


def _t_log_sf(t: np.ndarray, df: np.ndarray) -> np.ndarray:
    """log P(T > t) for Student t, finite however large t is.

    scipy's ``t.logsf`` is the log of ``sf`` and turns -inf once sf underflows (t ~ 1e9 at
    df 39); far in the tail use ``log f(t) + log((df + t^2) / (df t))``, the leading term of
    the tail integral (relative error < 1e-6 where it takes over, at log sf < -600).
    """
    t, df = np.broadcast_arrays(np.abs(np.asarray(t, float)), np.asarray(df, float))
    log_sf = np.asarray(sps.t.logsf(t, df), dtype=float)
    far = (log_sf < -600) & (df > 1) & np.isfinite(t)
    if far.any():
        tf, nu = t[far], df[far]
        log_sf[far] = (special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2)
                       - 0.5 * np.log(nu * np.pi) - (nu - 1) / 2 * np.log1p(tf * tf / nu) - np.log(tf))
    return log_sf


def t_pvalues(t: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p (floored at :data:`P_FLOOR`) and log10 p from the log survival function."""
    log_sf = _t_log_sf(t, df)
    p = np.clip(2 * np.exp(log_sf), P_FLOOR, 1.0)
    log10_p = np.minimum((np.log(2) + log_sf) / np.log(10), 0.0)
    return p, log10_p


def _sign_vectors(n: int) -> np.ndarray:
    """All 2^(n-1) sign vectors with a + first: |sum| is symmetric, so half of them suffice."""
    rest = (np.arange(2 ** (n - 1))[:, None] >> np.arange(n - 1)) & 1
    return np.hstack([np.ones((rest.shape[0], 1)), 1.0 - 2.0 * rest])


def sign_flip_p(means: np.ndarray, valid: np.ndarray, cells: np.ndarray, n_permutations: int,
                seed: int) -> np.ndarray:
    """Two-sided sign-flip p of the mean of ``means[valid]`` for each of ``cells``.

    Cells sharing a validity mask share one matrix product ``signs @ means``. Exact over all
    sign vectors up to :data:`EXACT_MAX_N` rows (p counts the observed one, so p >= 2/2^n);
    Monte Carlo beyond, with p = (b + 1) / (m + 1). Each mask group draws from a fresh
    ``default_rng(seed)``, so a cell's p does not depend on which other cells are tested with it.
    """
    p = np.full(len(cells), np.nan)
    for mask, group in mask_groups(valid[:, cells]):
        n = int(mask.sum())
        if n == 0:
            continue
        data = means[mask][:, cells[group]]  # [n, k]
        exact = n <= EXACT_MAX_N
        if exact:
            signs = _sign_vectors(n)
        else:
            signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_permutations, n))
        observed = np.abs(data.sum(0))
        tolerance = TIE_RTOL * np.abs(data).sum(0)
        hits = np.empty(data.shape[1])
        for part in chunks(data.shape[1], signs.shape[0]):
            null = np.abs(signs @ data[:, part])
            hits[part] = (null >= observed[part] - tolerance[part]).sum(0)
        p[group] = hits / signs.shape[0] if exact else (hits + 1) / (n_permutations + 1)
    return p


def label_permutation_p(a: np.ndarray, valid_a: np.ndarray, b: np.ndarray, valid_b: np.ndarray,
                        cells: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """Two-sided label-permutation p of mean(a) - mean(b), p = (b + 1) / (m + 1), per cell.

    Cells sharing both validity masks share one matrix product ``weights @ pooled`` where each
    row of weights gives 1/n_a to a random n_a of the pooled rows and -1/n_b to the rest.
    """
    p = np.full(len(cells), np.nan)
    rows_a = a.shape[0]
    both = np.vstack([valid_a[:, cells], valid_b[:, cells]])
    for mask, group in mask_groups(both):
        na, nb = int(mask[:rows_a].sum()), int(mask[rows_a:].sum())
        if na == 0 or nb == 0:
            continue
        xa, xb = a[mask[:rows_a]][:, cells[group]], b[mask[rows_a:]][:, cells[group]]
        pooled = np.vstack([xa, xb])  # [na + nb, k]
        keys = np.random.default_rng(seed).random((n_permutations, na + nb))
        cut = np.partition(keys, na - 1, axis=1)[:, na - 1:na]
        weights = np.where(keys <= cut, 1.0 / na, -1.0 / nb)
        observed = np.abs(xa.mean(0) - xb.mean(0))
        tolerance = TIE_RTOL * (np.abs(xa).mean(0) + np.abs(xb).mean(0))
        hits = np.empty(pooled.shape[1])
        for part in chunks(pooled.shape[1], n_permutations):
            null = np.abs(weights @ pooled[:, part])
            hits[part] = (null >= observed[part] - tolerance[part]).sum(0)
        p[group] = (hits + 1) / (n_permutations + 1)
    return p
