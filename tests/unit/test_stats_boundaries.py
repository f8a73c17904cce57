"""Where probe.stats changes its rule, tested at the boundary itself (issue 14's mutation
checks: flipping any of these comparisons passed every other statistics test).

- cluster_test: exact sign flips up to 16 clusters, Monte Carlo below 30, t from 30 on;
- cluster_unpaired_test: Welch only when both sides have 30 clusters, no test below 2 a side;
- a spread that is zero up to rounding counts as zero (no t, no effect size of 1e16);
- Benjamini-Hochberg counts only the p-values it is given, not NaN entries.
"""

from __future__ import annotations

import numpy as np
import pytest

from probe.stats import benjamini_hochberg, cluster_test, cluster_unpaired_test


def _clusters(n: int, seed: int = 0) -> tuple[np.ndarray, list[int]]:
    """One positive value per cluster, all different."""
    return np.random.default_rng(seed).uniform(1.0, 2.0, n), list(range(n))


@pytest.mark.parametrize("n, test", [
    (16, "exact sign-flip over clusters"),
    (17, "sign-flip over clusters (20000 permutations)"),
    (29, "sign-flip over clusters (20000 permutations)"),
    (30, "t over cluster means"),
])
def test_cluster_test_switches_rule_at_16_and_30_clusters(n, test):
    values, clusters = _clusters(n)
    r = cluster_test(values, clusters, n_resamples=20)
    assert str(r.test) == test
    if n == 16:  # every value positive: only the all-plus vector of 2^15 reaches it
        assert float(r.p) == 2 / 2 ** 16
    elif n == 29:  # Monte Carlo: no random sign vector reaches it, p = (0 + 1) / (20000 + 1)
        assert float(r.p) == 1 / 20001


@pytest.mark.parametrize("na, nb, test", [
    (30, 30, "Welch t over cluster means"),
    (30, 29, "label permutation over clusters (999 permutations)"),
    (29, 30, "label permutation over clusters (999 permutations)"),
    (40, 2, "label permutation over clusters (999 permutations)"),
    (40, 1, ""),
    (1, 40, ""),
])
def test_cluster_unpaired_test_uses_welch_only_when_both_sides_have_30_clusters(na, nb, test):
    a, ca = _clusters(na, seed=1)
    b, _ = _clusters(nb, seed=2)
    r = cluster_unpaired_test(a + 1.0, ca, b, [f"b{i}" for i in range(nb)], n_permutations=999,
                              n_resamples=20)
    assert str(r.test) == test
    assert np.isnan(r.p) == (test == "")  # a side with one cluster: nothing to test


def test_a_spread_of_rounding_error_counts_as_zero():
    values = np.array([0.1 * 3, 0.3] * 20)  # 0.30000000000000004 and 0.3: sd about 3e-17
    assert values.std() > 0
    r = cluster_test(values, list(range(40)), n_resamples=20)
    assert np.isnan(r.effect_size)  # not estimate / 3e-17
    assert str(r.test) == "sign-flip over clusters (20000 permutations)"  # t would be ~1e16
    assert float(r.p) == 1 / 20001


def test_benjamini_hochberg_counts_only_the_p_values_given():
    q = benjamini_hochberg([0.01, np.nan, 0.04, np.nan])
    np.testing.assert_allclose(q[[0, 2]], benjamini_hochberg([0.01, 0.04]))
    np.testing.assert_allclose(q[[0, 2]], [0.02, 0.04])
    assert np.isnan(q[[1, 3]]).all()
