"""Tests over clusters: pairs that share an original sentence or a template are averaged first,
and each cluster then weighs the same, whatever its number of pairs.

One job: :func:`cluster_means`, :func:`cluster_test` (one sample) and
:func:`cluster_unpaired_test` (two independent sets of clusters), each with its estimate,
bootstrap CI, effect size, p and the name of the test used per cell. Imports numpy,
``probe.errors`` and the package's ``cells``, ``pvalues``, ``bootstrap`` and ``results``.
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from ..errors import InputError
from .bootstrap import bootstrap_one, bootstrap_two
from .cells import as_cells, cluster_codes, describe, zero_spread
from .pvalues import EXACT_MAX_N, PERMUTATION_MAX_N, label_permutation_p, sign_flip_p, t_pvalues
from .results import ClusterResult

TEST_EXACT = "exact sign-flip over clusters"
TEST_T = "t over cluster means"
TEST_WELCH = "Welch t over cluster means"


def _test_sign_flip(m: int) -> str:
    return f"sign-flip over clusters ({m} permutations)"


def _test_label_permutation(m: int) -> str:
    return f"label permutation over clusters ({m} permutations)"


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
    flat, shape = as_cells(values)
    codes, labels = cluster_codes(clusters, flat.shape[0])
    onehot = np.zeros((len(labels), flat.shape[0]))
    onehot[codes, np.arange(flat.shape[0])] = 1.0
    valid = ~np.isnan(flat)
    counts = onehot @ valid
    sums = onehot @ np.where(valid, flat, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1.0), np.nan)
    return (means.reshape((len(labels),) + shape), np.rint(counts).astype(np.int64).reshape(
        (len(labels),) + shape), labels)


def smallest_p(n_clusters: int) -> float:
    """The smallest p :func:`cluster_test` can give a cell with ``n_clusters`` clusters: NaN
    below 2 (no test), ``2 / 2**n`` for the exact sign flip, 0 from 17 on (no bound at any
    usual level). Below 6 clusters nothing can be significant at 0.05.

    >>> [smallest_p(n) for n in (1, 2, 5, 6, 40)]
    [nan, 0.5, 0.0625, 0.03125, 0.0]
    """
    if n_clusters < 2:
        return float("nan")
    return 2.0 ** (1 - n_clusters) if n_clusters <= EXACT_MAX_N else 0.0


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
    n, estimate, sd = describe(flat, valid)
    degenerate = zero_spread(sd, estimate)
    with np.errstate(invalid="ignore", divide="ignore"):
        effect = np.where((n >= 3) & ~degenerate, estimate / sd, np.nan)
    p = np.full(flat.shape[1], np.nan)
    log10_p = np.full(flat.shape[1], np.nan)
    test = np.full(flat.shape[1], "", dtype=object)

    use_t = (n >= PERMUTATION_MAX_N) & ~degenerate
    if use_t.any():
        with np.errstate(invalid="ignore", divide="ignore"):
            t = estimate[use_t] / (sd[use_t] / np.sqrt(n[use_t]))
        p[use_t], log10_p[use_t] = t_pvalues(t, n[use_t] - 1)
        test[use_t] = TEST_T
    flip = np.flatnonzero((n >= 2) & ~use_t)
    if flip.size:
        p[flip] = sign_flip_p(flat, valid, flip, n_permutations, seed)
        with np.errstate(divide="ignore"):
            log10_p[flip] = np.log10(p[flip])
        test[flip] = np.where(n[flip] <= EXACT_MAX_N, TEST_EXACT, _test_sign_flip(n_permutations))

    low, high = bootstrap_one(flat, valid, n_resamples, level, seed)
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
    na, mean_a, sd_a = describe(fa, va)
    nb, mean_b, sd_b = describe(fb, vb)
    estimate = mean_a - mean_b
    testable = (na >= 2) & (nb >= 2)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.sqrt(((na - 1) * sd_a ** 2 + (nb - 1) * sd_b ** 2) / (na + nb - 2))
        pooled = np.where(testable, pooled, np.nan)
        degenerate = zero_spread(pooled, estimate)
        effect = np.where(testable & ~degenerate, estimate / pooled, np.nan)
    p = np.full(fa.shape[1], np.nan)
    log10_p = np.full(fa.shape[1], np.nan)
    test = np.full(fa.shape[1], "", dtype=object)

    use_t = testable & (np.minimum(na, nb) >= PERMUTATION_MAX_N) & ~degenerate
    if use_t.any():
        ea, eb = sd_a[use_t] ** 2 / na[use_t], sd_b[use_t] ** 2 / nb[use_t]
        t = estimate[use_t] / np.sqrt(ea + eb)
        df = (ea + eb) ** 2 / (ea ** 2 / (na[use_t] - 1) + eb ** 2 / (nb[use_t] - 1))
        p[use_t], log10_p[use_t] = t_pvalues(t, df)
        test[use_t] = TEST_WELCH
    permute = np.flatnonzero(testable & ~use_t)
    if permute.size:
        p[permute] = label_permutation_p(fa, va, fb, vb, permute, n_permutations, seed)
        log10_p[permute] = np.log10(p[permute])
        test[permute] = _test_label_permutation(n_permutations)

    low, high = bootstrap_two(fa, va, fb, vb, n_resamples, level, seed)
    n_pairs = counts_a.reshape(counts_a.shape[0], -1).sum(0) + counts_b.reshape(counts_b.shape[0], -1).sum(0)
    return ClusterResult(estimate.reshape(shape), low.reshape(shape), high.reshape(shape),
                         effect.reshape(shape), p.reshape(shape), log10_p.reshape(shape),
                         n_pairs.reshape(shape), (na + nb).reshape(shape),
                         test.astype(str).reshape(shape))
