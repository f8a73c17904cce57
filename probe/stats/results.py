"""The result types of the tests: per-cell arrays of the trailing shape (e.g. [layer, head]).

One job: say what a test returns. Imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
