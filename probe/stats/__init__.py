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

Modules, one job each (an arrow: may import; every module may import numpy, scipy and
``probe.errors``, and none imports the rest of probe)::

    results.py        TestResult and ClusterResult, the result types        (none of these)
    cells.py          values as [row, cell], cluster codes, validity-mask groups, chunks,
                      mean and sd per cell, the zero-spread rule             (none of these)
    pvalues.py        t p-values that never reach 0; sign-flip and label-permutation
                      p-values, vectorised over cells                       -> cells
    bootstrap.py      percentile bootstrap intervals, resampling clusters   -> cells
    cluster_tests.py  cluster_means, cluster_test, cluster_unpaired_test, smallest_p
                                                 -> cells, pvalues, bootstrap, results
    pair_tests.py     bootstrap_ci, paired_test, unpaired_test (pairs as clusters of one)
                                                 -> cells, pvalues, results
    fdr.py            benjamini_hochberg                                     (none of these)

Everything public is importable from ``probe.stats`` itself.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> a = rng.normal(0.5, 1, (200, 2, 3)); b = rng.normal(0, 1, (200, 2, 3))
>>> r = paired_test(a, b)
>>> r.pvalue.shape, bool((r.pvalue < 0.05).all()), r.method
((2, 3), True, 't')
"""

from .cluster_tests import cluster_means, cluster_test, cluster_unpaired_test, smallest_p
from .fdr import benjamini_hochberg
from .pair_tests import bootstrap_ci, paired_test, unpaired_test
from .results import ClusterResult, TestResult

__all__ = [
    "ClusterResult", "TestResult", "benjamini_hochberg", "bootstrap_ci", "cluster_means",
    "cluster_test", "cluster_unpaired_test", "paired_test", "smallest_p", "unpaired_test",
]
