"""Statistics: hand-checked values, agreement with scipy, and calibration by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from probe.stats import benjamini_hochberg, bootstrap_ci, paired_test, unpaired_test


def test_bh_matches_hand_computation():
    p = np.array([0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216])
    # hand: p_(i) * m / i, then running minimum from the top
    q = benjamini_hochberg(p)
    expected = np.minimum.accumulate((p * 10 / np.arange(1, 11))[::-1])[::-1]
    np.testing.assert_allclose(q, expected)
    assert (q <= 0.05).sum() == 2
    assert np.isnan(benjamini_hochberg([np.nan, 0.01])[0])


def test_paired_t_matches_scipy_for_large_n():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.2, 1, (60, 3, 4)), rng.normal(0, 1, (60, 3, 4))
    r = paired_test(a, b)
    ref = sps.ttest_rel(a, b, axis=0)
    np.testing.assert_allclose(r.statistic, ref.statistic)
    np.testing.assert_allclose(r.pvalue, ref.pvalue)
    assert r.method == "t" and (r.n == 60).all()


def test_exact_sign_flip_small_sample():
    d = np.array([1.0, 2.0, 3.0, 4.0, 5.0])[:, None]
    r = paired_test(d)
    # all 5 positive: only the all-plus and all-minus of 32 sign vectors reach |mean| 3
    assert r.method == "exact sign-flip"
    assert r.pvalue[0] == pytest.approx(2 / 32)


def test_bootstrap_ci_covers_and_shrinks():
    rng = np.random.default_rng(2)
    x = rng.normal(1.0, 1.0, (400, 2))
    low, high = bootstrap_ci(x, n_resamples=2000)
    assert (low < x.mean(0)).all() and (x.mean(0) < high).all()
    # the percentile interval is close to mean +- 1.96 se
    se = x.std(0, ddof=1) / np.sqrt(400)
    np.testing.assert_allclose(high - low, 2 * 1.96 * se, rtol=0.15)
    with_nan = x.copy()
    with_nan[:10, 0] = np.nan
    low2, high2 = bootstrap_ci(with_nan)
    assert np.isfinite(low2).all()


def test_bootstrap_coverage_by_simulation():
    rng = np.random.default_rng(3)
    x = rng.exponential(1.0, (100, 400))  # 400 independent cells, true mean 1
    low, high = bootstrap_ci(x, n_resamples=1000)
    coverage = ((low <= 1) & (1 <= high)).mean()
    assert 0.90 <= coverage <= 0.98


@pytest.mark.parametrize("n_pairs", [12, 24, 200])
def test_null_pairs_give_few_discoveries(n_pairs):
    """Both sides from one distribution: BH at q=0.05 over 6 layers x 12 heads finds ~nothing."""
    rng = np.random.default_rng(n_pairs)
    share = []
    for rep in range(40 if n_pairs > 12 else 20):
        base = rng.normal(0, 1, (n_pairs, 6, 12))
        a = base + rng.normal(0, 1, base.shape)
        b = base + rng.normal(0, 1, base.shape)
        q = benjamini_hochberg(paired_test(a, b, n_permutations=2000, seed=rep).pvalue)
        share.append((q <= 0.05).mean())
    assert np.mean(share) <= 0.05


def test_planted_heads_are_found():
    rng = np.random.default_rng(7)
    a = rng.normal(0, 1, (150, 6, 12))
    b = a + rng.normal(0, 1, a.shape)
    planted = [(1, 3), (4, 0), (5, 11)]
    for layer, head in planted:
        a[:, layer, head] += 0.6
    q = benjamini_hochberg(paired_test(a, b).pvalue)
    found = set(zip(*np.nonzero(q <= 0.05)))
    assert set(planted) <= found
    assert len(found - set(planted)) <= 2


def test_unpaired_null_calibration_and_power():
    rng = np.random.default_rng(11)
    shares = []
    for rep in range(30):
        a, b = rng.normal(0, 1, (80, 6, 12)), rng.normal(0, 1, (60, 6, 12))
        shares.append((benjamini_hochberg(unpaired_test(a, b).pvalue) <= 0.05).mean())
    assert np.mean(shares) <= 0.05
    a, b = rng.normal(0, 1, (80, 2, 2)), rng.normal(0, 1, (60, 2, 2))
    a[:, 0, 0] += 1.0
    r = unpaired_test(a, b)
    assert r.pvalue[0, 0] < 1e-4 and r.method == "welch t"
    ref = sps.ttest_ind(a, b, axis=0, equal_var=False)
    np.testing.assert_allclose(r.pvalue, ref.pvalue)
    small = unpaired_test(a[:10], b[:8], n_permutations=5000)
    assert small.method == "label permutation" and small.pvalue[0, 0] < 0.1
