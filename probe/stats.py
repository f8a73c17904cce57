"""Statistics across pairs: pure functions, vectorised over every trailing axis (layer x head).

Samples lie along axis 0 (``[pair, layer, head]`` or any ``[pair, ...]``); NaN entries (a pair
without a cue, a constant pattern) are left out cell by cell.

Pairs are rarely independent: pairs that share an original sentence or a template form a
*cluster*, and a test that counts pairs as independent finds effects that are not there. The
cluster functions take the cluster label of every pair, average within clusters first and test
across clusters (each cluster weighs the same, whatever its number of pairs):

- :func:`cluster_means`: ``[cluster, ...]`` means and counts (one matrix product).
- :func:`cluster_test`: one-sample test of the mean of cluster means: exact sign flips for
  n_clusters <= 16, Monte Carlo sign flips below 30, Student t from 30 on; cluster bootstrap CI.
- :func:`cluster_unpaired_test`: difference of two independent sets of clusters: label
  permutation below 30 clusters a side, Welch t from 30 on; cluster bootstrap CI.

The older pair-level functions (each pair its own cluster) remain for their callers:

- :func:`bootstrap_ci`: percentile bootstrap of the mean, resampling pairs.
- :func:`paired_test`: sign-flip test on ``a - b``: exact over all 2^n sign vectors for
  n <= 16, Monte Carlo sign flips for n < 30, paired t-test (Student) from n = 30 on.
- :func:`unpaired_test`: label permutation for small samples, Welch's t-test otherwise.
- :func:`benjamini_hochberg`: FDR q-values across all tests given.

No function reports a p of 0 (t-test p-values are floored at the smallest normal float, and
``log10_p`` comes from the log survival function so it stays finite far below that) or an
infinite effect size (NaN where the spread is zero).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.normal(0.5, 1, (200, 2, 3)); b = rng.normal(0, 1, (200, 2, 3))
>>> r = paired_test(a, b)
>>> r.pvalue.shape, bool((r.pvalue < 0.05).all()), r.method
((2, 3), True, 't')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable, Iterator, Sequence

import numpy as np
from scipy import special
from scipy import stats as sps

from probe.errors import InputError

EXACT_MAX_N = 16
PERMUTATION_MAX_N = 30
P_FLOOR = np.finfo(np.float64).tiny  # smallest p reported: a p of 0 is never true
DEGENERATE_RTOL = 1e-12  # an sd below this times |mean| counts as zero spread
TIE_RTOL = 1e-9  # resampled statistics this close (relative to the data's scale) tie
CHUNK_ELEMENTS = 1 << 22  # cap on [resample, cell] blocks held at once (32 MiB)

TEST_EXACT = "exact sign-flip over clusters"
TEST_T = "t over cluster means"
TEST_WELCH = "Welch t over cluster means"


def _test_sign_flip(m: int) -> str:
    return f"sign-flip over clusters ({m} permutations)"


def _test_label_permutation(m: int) -> str:
    return f"label permutation over clusters ({m} permutations)"


@dataclass
class TestResult:
    """Per-cell results of a two-sided test (arrays of the trailing shape)."""

    __test__ = False  # not a pytest test class

    statistic: np.ndarray  # t statistic (NaN where the spread is zero)
    pvalue: np.ndarray
    mean_difference: np.ndarray
    effect_size: np.ndarray  # Cohen's d_z (paired) or d with pooled sd (unpaired); never inf
    n: np.ndarray
    method: str


@dataclass
class ClusterResult:
    """Per-cell results of a cluster-level test (arrays of the trailing shape, e.g. [layer, head])."""

    __test__ = False  # not a pytest test class

    estimate: np.ndarray  # mean over clusters of the cluster means (each cluster weighs the same)
    ci_low: np.ndarray  # percentile cluster bootstrap of the estimate (NaN below 2 clusters)
    ci_high: np.ndarray
    effect_size: np.ndarray  # d_z (one sample) or Cohen's d with pooled sd; NaN, never inf
    p: np.ndarray  # two-sided p of estimate == 0; never 0; NaN below 2 clusters
    log10_p: np.ndarray  # finite where p underflows (from the log survival function)
    n_pairs: np.ndarray  # pairs with a value in the cell
    n_clusters: np.ndarray  # clusters with at least one value in the cell
    test: np.ndarray  # per-cell test name; "" where too few clusters to test


# ---------------------------------------------------------------------------------------------
# helpers


def _cells(values, name: str = "values") -> tuple[np.ndarray, tuple[int, ...]]:
    """``values[pair, ...]`` as float ``[pair, cell]`` and the trailing shape."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0:
        raise InputError(f"{name}: expected an array [pair, ...], found a scalar; "
                         "put the samples along axis 0")
    if np.isinf(values).any():
        raise InputError(f"{name}: expected finite values or NaN, found {int(np.isinf(values).sum())} "
                         "infinite entries; replace them with NaN to leave them out")
    return values.reshape(values.shape[0], -1), values.shape[1:]


def _cluster_codes(clusters: Sequence[Hashable], n_pairs: int) -> tuple[np.ndarray, list]:
    """Integer code per pair (labels in order of first appearance) and the labels."""
    labels = list(clusters)
    if len(labels) != n_pairs:
        raise InputError(f"clusters: expected one label per pair ({n_pairs}), found {len(labels)}; "
                         "pass a sequence as long as axis 0 of the values")
    index: dict = {}
    codes = np.fromiter((index.setdefault(label, len(index)) for label in labels), dtype=np.int64,
                        count=n_pairs)
    return codes, list(index)


def _mask_groups(valid: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(mask [row], cells)`` for each distinct validity column of ``valid [row, cell]``."""
    rows, n_cells = valid.shape
    if n_cells == 0:
        return
    if rows == 0:
        yield np.zeros(0, dtype=bool), np.arange(n_cells)
        return
    packed = np.ascontiguousarray(np.packbits(valid, axis=0).T)  # one byte string per cell
    keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    bounds = np.flatnonzero(np.diff(inverse[order])) + 1
    for cell, cells in zip(first, np.split(order, bounds)):
        yield valid[:, cell], cells


def _chunks(n_cells: int, n_rows: int) -> Iterator[slice]:
    step = max(1, CHUNK_ELEMENTS // max(n_rows, 1))
    for start in range(0, n_cells, step):
        yield slice(start, min(start + step, n_cells))


def _describe(means: np.ndarray, valid: np.ndarray):
    """n, mean and sd (ddof=1) over rows of ``means [row, cell]`` where ``valid``."""
    n = valid.sum(0)
    filled = np.where(valid, means, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, filled.sum(0) / np.maximum(n, 1), np.nan)
        dev = np.where(valid, means - mean, 0.0)
        sd = np.where(n > 1, np.sqrt((dev ** 2).sum(0) / np.maximum(n - 1, 1)), np.nan)
    return n, mean, sd


def _degenerate(sd: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """True where the spread is zero for practical purposes (d or t would be inf or huge noise)."""
    with np.errstate(invalid="ignore"):
        scale = np.maximum(np.abs(np.nan_to_num(estimate)), 1e-300)
        return ~(sd > DEGENERATE_RTOL * scale)


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


def _t_pvalues(t: np.ndarray, df: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided p (floored at :data:`P_FLOOR`) and log10 p from the log survival function."""
    log_sf = _t_log_sf(t, df)
    p = np.clip(2 * np.exp(log_sf), P_FLOOR, 1.0)
    log10_p = np.minimum((np.log(2) + log_sf) / np.log(10), 0.0)
    return p, log10_p


def _sign_vectors(n: int) -> np.ndarray:
    """All 2^(n-1) sign vectors with a + first: |sum| is symmetric, so half of them suffice."""
    rest = (np.arange(2 ** (n - 1))[:, None] >> np.arange(n - 1)) & 1
    return np.hstack([np.ones((rest.shape[0], 1)), 1.0 - 2.0 * rest])


def _sign_flip_p(means: np.ndarray, valid: np.ndarray, cells: np.ndarray, n_permutations: int,
                 seed: int) -> np.ndarray:
    """Two-sided sign-flip p of the mean of ``means[valid]`` for each of ``cells``.

    Cells sharing a validity mask share one matrix product ``signs @ means``. Exact over all
    sign vectors up to :data:`EXACT_MAX_N` rows (p counts the observed one, so p >= 2/2^n);
    Monte Carlo beyond, with p = (b + 1) / (m + 1). Each mask group draws from a fresh
    ``default_rng(seed)``, so a cell's p does not depend on which other cells are tested with it.
    """
    p = np.full(len(cells), np.nan)
    for mask, group in _mask_groups(valid[:, cells]):
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
        for part in _chunks(data.shape[1], signs.shape[0]):
            null = np.abs(signs @ data[:, part])
            hits[part] = (null >= observed[part] - tolerance[part]).sum(0)
        p[group] = hits / signs.shape[0] if exact else (hits + 1) / (n_permutations + 1)
    return p


def _label_permutation_p(a: np.ndarray, valid_a: np.ndarray, b: np.ndarray, valid_b: np.ndarray,
                         cells: np.ndarray, n_permutations: int, seed: int) -> np.ndarray:
    """Two-sided label-permutation p of mean(a) - mean(b), p = (b + 1) / (m + 1), per cell.

    Cells sharing both validity masks share one matrix product ``weights @ pooled`` where each
    row of weights gives 1/n_a to a random n_a of the pooled rows and -1/n_b to the rest.
    """
    p = np.full(len(cells), np.nan)
    rows_a = a.shape[0]
    both = np.vstack([valid_a[:, cells], valid_b[:, cells]])
    for mask, group in _mask_groups(both):
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
        for part in _chunks(pooled.shape[1], n_permutations):
            null = np.abs(weights @ pooled[:, part])
            hits[part] = (null >= observed[part] - tolerance[part]).sum(0)
        p[group] = (hits + 1) / (n_permutations + 1)
    return p


def _multinomial_counts(n: int, n_resamples: int, rng: np.random.Generator, chunk: int = 250):
    """``[resample, n]`` counts of n draws with replacement (the stream :func:`bootstrap_ci` uses)."""
    parts = [rng.multinomial(n, np.full(n, 1.0 / n), size=min(chunk, n_resamples - start))
             for start in range(0, n_resamples, chunk)]
    return np.vstack(parts).astype(np.float64)


def _percentiles(resampled: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1 - level) / 2
    cells_first = np.ascontiguousarray(resampled.T)  # partitioning contiguous rows is faster
    low, high = np.percentile(cells_first, [100 * alpha, 100 * (1 - alpha)], axis=1)
    return low, high


def _bootstrap_one(means, valid, n_resamples, level, seed):
    """Percentile bootstrap of the mean of cluster means, resampling the valid clusters."""
    low, high = np.full(means.shape[1], np.nan), np.full(means.shape[1], np.nan)
    for mask, group in _mask_groups(valid):
        n = int(mask.sum())
        if n < 2:
            continue
        counts = _multinomial_counts(n, n_resamples, np.random.default_rng(seed)) / n
        data = means[mask][:, group]
        for part in _chunks(len(group), n_resamples):
            low[group[part]], high[group[part]] = _percentiles(counts @ data[:, part], level)
    return low, high


def _bootstrap_two(a, valid_a, b, valid_b, n_resamples, level, seed):
    """Percentile bootstrap of mean(a) - mean(b), resampling clusters within each side."""
    low, high = np.full(a.shape[1], np.nan), np.full(a.shape[1], np.nan)
    rows_a = a.shape[0]
    for mask, group in _mask_groups(np.vstack([valid_a, valid_b])):
        na, nb = int(mask[:rows_a].sum()), int(mask[rows_a:].sum())
        if na < 2 or nb < 2:
            continue
        rng = np.random.default_rng(seed)
        counts_a = _multinomial_counts(na, n_resamples, rng) / na
        counts_b = _multinomial_counts(nb, n_resamples, rng) / nb
        xa, xb = a[mask[:rows_a]][:, group], b[mask[rows_a:]][:, group]
        for part in _chunks(len(group), n_resamples):
            diff = counts_a @ xa[:, part] - counts_b @ xb[:, part]
            low[group[part]], high[group[part]] = _percentiles(diff, level)
    return low, high


# ---------------------------------------------------------------------------------------------
# cluster-level statistics


def cluster_means(values, clusters: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray, list]:
    """Mean of each cluster per cell: ``(means [cluster, ...], counts [cluster, ...], labels)``.

    Clusters are ordered by first appearance in ``clusters``; a cluster without a value in a
    cell has mean NaN and count 0 there. One matrix product of a one-hot ``[cluster, pair]``
    matrix with the NaN-zeroed values (and with the validity mask, for the counts).

    >>> import numpy as np
    >>> means, counts, labels = cluster_means(np.array([1.0, 3.0, np.nan, 10.0]), ["x", "x", "y", "z"])
    >>> means.tolist(), counts.tolist(), labels
    ([2.0, nan, 10.0], [2, 0, 1], ['x', 'y', 'z'])
    """
    flat, shape = _cells(values)
    codes, labels = _cluster_codes(clusters, flat.shape[0])
    onehot = np.zeros((len(labels), flat.shape[0]))
    onehot[codes, np.arange(flat.shape[0])] = 1.0
    valid = ~np.isnan(flat)
    counts = onehot @ valid
    sums = onehot @ np.where(valid, flat, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
    return (means.reshape((len(labels),) + shape), np.rint(counts).astype(np.int64).reshape(
        (len(labels),) + shape), labels)


def cluster_test(values, clusters: Sequence[Hashable], *, n_resamples: int = 1000,
                 n_permutations: int = 20000, level: float = 0.95, seed: int = 0) -> ClusterResult:
    """Two-sided test of ``mean over clusters of the cluster means == 0``, per cell.

    ``values[pair, ...]`` (NaN: no value), ``clusters``: one hashable label per pair. Per cell,
    with n the clusters that have a value there: exact sign flips over all 2^n sign vectors for
    n <= 16, ``n_permutations`` Monte Carlo sign flips (p = (b+1)/(m+1)) below 30, Student t on
    the cluster means from 30 on (p floored at the smallest normal float). Cluster means with
    zero spread and a nonzero mean get the sign-flip p whatever n (t would be infinite); an
    all-zero cell gets p = 1; n < 2 gets p NaN and test "". CI: percentile bootstrap
    resampling clusters (NaN below 2 clusters). effect_size: d_z = estimate / sd of cluster
    means, NaN below 3 clusters or at zero spread.

    >>> import numpy as np
    >>> x = np.array([1.0, 1.2, 2.0, 2.0, 2.0, 0.5, 1.5])   # 4 clusters, one of them tripled
    >>> r = cluster_test(x, ["a", "a", "b", "b", "b", "c", "d"])
    >>> float(r.estimate), float(r.p), int(r.n_clusters), int(r.n_pairs), str(r.test)
    (1.275, 0.125, 4, 7, 'exact sign-flip over clusters')
    """
    means, counts, _ = cluster_means(values, clusters)
    shape = means.shape[1:]
    flat = means.reshape(means.shape[0], -1)
    valid = counts.reshape(counts.shape[0], -1) > 0
    n, estimate, sd = _describe(flat, valid)
    degenerate = _degenerate(sd, estimate)
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = np.where((n >= 3) & ~degenerate, estimate / sd, np.nan)
    p = np.full(flat.shape[1], np.nan)
    log10_p = np.full(flat.shape[1], np.nan)
    test = np.full(flat.shape[1], "", dtype=object)

    use_t = (n >= PERMUTATION_MAX_N) & ~degenerate
    if use_t.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            t = estimate[use_t] / (sd[use_t] / np.sqrt(n[use_t]))
        p[use_t], log10_p[use_t] = _t_pvalues(t, n[use_t] - 1)
        test[use_t] = TEST_T
    flip = np.flatnonzero((n >= 2) & ~use_t)
    if flip.size:
        p[flip] = _sign_flip_p(flat, valid, flip, n_permutations, seed)
        with np.errstate(divide="ignore"):
            log10_p[flip] = np.log10(p[flip])
        test[flip] = np.where(n[flip] <= EXACT_MAX_N, TEST_EXACT, _test_sign_flip(n_permutations))

    low, high = _bootstrap_one(flat, valid, n_resamples, level, seed)
    n_pairs = counts.reshape(counts.shape[0], -1).sum(0)
    return ClusterResult(estimate.reshape(shape), low.reshape(shape), high.reshape(shape),
                         effect.reshape(shape), p.reshape(shape), log10_p.reshape(shape),
                         n_pairs.reshape(shape), n.reshape(shape),
                         test.astype(str).reshape(shape))


def cluster_unpaired_test(a, clusters_a: Sequence[Hashable], b, clusters_b: Sequence[Hashable], *,
                          n_resamples: int = 1000, n_permutations: int = 20000, level: float = 0.95,
                          seed: int = 0) -> ClusterResult:
    """Two-sided test of equal means of two independent sets of clusters, per cell.

    estimate = mean of a's cluster means - mean of b's. Per cell: Welch t over the cluster
    means when both sides have >= 30 clusters there, label permutation of the cluster means
    (``n_permutations``, p = (b+1)/(m+1)) otherwise or when the pooled spread is zero; p NaN
    and test "" where a side has fewer than 2 clusters. effect_size: Cohen's d with the pooled
    sd of cluster means (NaN at zero spread). CI: percentile bootstrap resampling clusters
    within each side. n_pairs and n_clusters add both sides.

    >>> import numpy as np
    >>> r = cluster_unpaired_test(np.array([3.0, 3.2, 4.0, 3.9]), [0, 0, 1, 2],
    ...                           np.array([1.0, 1.1, 0.9]), [5, 6, 7], n_permutations=999)
    >>> round(float(r.estimate), 2), float(r.p) < 0.2, int(r.n_clusters), str(r.test)
    (2.67, True, 6, 'label permutation over clusters (999 permutations)')
    """
    means_a, counts_a, _ = cluster_means(a, clusters_a)
    means_b, counts_b, _ = cluster_means(b, clusters_b)
    if means_a.shape[1:] != means_b.shape[1:]:
        raise InputError(f"expected a and b with the same trailing shape, found {means_a.shape[1:]} "
                         f"and {means_b.shape[1:]}; compare the same cells (layer x head) on both sides")
    shape = means_a.shape[1:]
    fa, fb = means_a.reshape(means_a.shape[0], -1), means_b.reshape(means_b.shape[0], -1)
    va = counts_a.reshape(counts_a.shape[0], -1) > 0
    vb = counts_b.reshape(counts_b.shape[0], -1) > 0
    na, mean_a, sd_a = _describe(fa, va)
    nb, mean_b, sd_b = _describe(fb, vb)
    estimate = mean_a - mean_b
    testable = (na >= 2) & (nb >= 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.sqrt(((na - 1) * sd_a ** 2 + (nb - 1) * sd_b ** 2) / (na + nb - 2))
        pooled = np.where(testable, pooled, np.nan)
        degenerate = _degenerate(pooled, estimate)
        effect = np.where(testable & ~degenerate, estimate / pooled, np.nan)
    p = np.full(fa.shape[1], np.nan)
    log10_p = np.full(fa.shape[1], np.nan)
    test = np.full(fa.shape[1], "", dtype=object)

    use_t = testable & (np.minimum(na, nb) >= PERMUTATION_MAX_N) & ~degenerate
    if use_t.any():
        ea, eb = sd_a[use_t] ** 2 / na[use_t], sd_b[use_t] ** 2 / nb[use_t]
        t = estimate[use_t] / np.sqrt(ea + eb)
        df = (ea + eb) ** 2 / (ea ** 2 / (na[use_t] - 1) + eb ** 2 / (nb[use_t] - 1))
        p[use_t], log10_p[use_t] = _t_pvalues(t, df)
        test[use_t] = TEST_WELCH
    permute = np.flatnonzero(testable & ~use_t)
    if permute.size:
        p[permute] = _label_permutation_p(fa, va, fb, vb, permute, n_permutations, seed)
        log10_p[permute] = np.log10(p[permute])
        test[permute] = _test_label_permutation(n_permutations)

    low, high = _bootstrap_two(fa, va, fb, vb, n_resamples, level, seed)
    n_pairs = counts_a.reshape(counts_a.shape[0], -1).sum(0) + counts_b.reshape(counts_b.shape[0], -1).sum(0)
    return ClusterResult(estimate.reshape(shape), low.reshape(shape), high.reshape(shape),
                         effect.reshape(shape), p.reshape(shape), log10_p.reshape(shape),
                         n_pairs.reshape(shape), (na + nb).reshape(shape),
                         test.astype(str).reshape(shape))


# ---------------------------------------------------------------------------------------------
# pair-level statistics (each pair its own cluster), kept for their callers


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
    n, mean, sd = _describe(flat, valid)
    degenerate = _degenerate(sd, mean)
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
        pvalue[use_t] = _t_pvalues(t[use_t], n[use_t] - 1)[0]
    flip = np.flatnonzero((n > 0) & ~use_t)
    if flip.size:
        pvalue[flip] = _sign_flip_p(flat, valid, flip, n_permutations, seed)
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
        degenerate = _degenerate(pooled, ma - mb) & (na + nb > 2)
        t = np.where(degenerate, np.nan, t)
        d = np.where(degenerate, np.nan, (ma - mb) / pooled)
        pvalue = np.where(np.isnan(t), np.nan, _t_pvalues(t, df)[0])
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
