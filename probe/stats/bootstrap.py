"""Percentile bootstrap intervals of a mean of cluster means (one side) or of a difference of
two (resampling clusters within each side), vectorised over cells.

One job: confidence intervals by resampling. Imports numpy and ``cells``.
"""

from __future__ import annotations

import numpy as np

from .cells import chunks, mask_groups


def _multinomial_counts(n: int, n_resamples: int, rng: np.random.Generator, chunk: int = 250):
    """``[resample, n]`` counts of n draws with replacement (the stream
    :func:`probe.stats.bootstrap_ci` uses)."""
    parts = [rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_resamples - start))
             for start in range(0, n_resamples, chunk)]
    return np.vstack(parts).astype(np.float64)


def _percentiles(resampled: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1 - level) / 2
    cells_first = np.ascontiguousarray(resampled.T)  # partitioning contiguous rows is faster
    low, high = np.percentile(cells_first, [100 * alpha, 100 * (1 - alpha)], axis=1)
    return low, high


def bootstrap_one(means, valid, n_resamples, level, seed):
    """Percentile bootstrap of the mean of cluster means, resampling the valid clusters."""
    low, high = np.full(means.shape[1], np.nan), np.full(means.shape[1], np.nan)
    for mask, group in mask_groups(valid):
        n = int(mask.sum())
        if n < 2:
            continue
        counts = _multinomial_counts(n, n_resamples, np.random.default_rng(seed)) / n
        data = means[mask][:, group]
        for part in chunks(len(group), n_resamples):
            low[group[part]], high[group[part]] = _percentiles(counts @ data[:, part], level)
    return low, high


def bootstrap_two(a, valid_a, b, valid_b, n_resamples, level, seed):
    """Percentile bootstrap of mean(a) - mean(b), resampling clusters within each side."""
    low, high = np.full(a.shape[1], np.nan), np.full(a.shape[1], np.nan)
    rows_a = a.shape[0]
    for mask, group in mask_groups(np.vstack([valid_a, valid_b])):
        na, nb = int(mask[:rows_a].sum()), int(mask[rows_a:].sum())
        if na < 2 or nb < 2:
            continue
        rng = np.random.default_rng(seed)
        counts_a = _multinomial_counts(na, n_resamples, rng) / na
        counts_b = _multinomial_counts(nb, n_resamples, rng) / nb
        xa, xb = a[mask[:rows_a]][:, group], b[mask[rows_a:]][:, group]
        for part in chunks(len(group), n_resamples):
            diff = counts_a @ xa[:, part] - counts_b @ xb[:, part]
            low[group[part]], high[group[part]] = _percentiles(diff, level)
    return low, high
