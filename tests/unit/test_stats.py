"""Statistics: hand-checked values, agreement with scipy, and calibration by simulation."""

from __future__ import annotations

import warnings
from itertools import product

import numpy as np
import pytest
from scipy import stats as sps

from probe.errors import InputError
from probe.stats import (benjamini_hochberg, bootstrap_ci, cluster_means, cluster_test,
                         cluster_unpaired_test, paired_test, unpaired_test)


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


# ---------------------------------------------------------------------------------------------
# cluster-level statistics


def _simulate_clustered(rng, n_clusters, n_studies, cells=(6, 12), max_size=8, cluster_sd=1.0,
                        pair_sd=0.5):
    """Many null studies in one array: ``values[pair slot, study, layer, head]`` and labels.

    Each cluster owns ``max_size`` pair slots; per study a cluster has 1..max_size pairs (the
    other slots NaN), a random effect per cell (sd ``cluster_sd``) and pair noise (``pair_sd``).
    Studies lie along a trailing axis, so one call tests every cell of every study.
    """
    sizes = rng.integers(1, max_size + 1, (n_clusters, n_studies))
    labels = np.repeat(np.arange(n_clusters), max_size)
    slot = np.tile(np.arange(max_size), n_clusters)
    effect = rng.normal(0, cluster_sd, (n_clusters, n_studies) + cells)
    values = np.repeat(effect, max_size, axis=0)
    values += rng.normal(0, pair_sd, values.shape)
    values[slot[:, None] >= np.repeat(sizes, max_size, axis=0)] = np.nan
    return values, labels


def _hand_cluster_means(values, clusters):
    labels = list(dict.fromkeys(clusters))
    rows = []
    for label in labels:
        members = values[[c == label for c in clusters]]
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            rows.append(np.nanmean(members, axis=0))
    return np.array(rows), labels


def _per_study_bh(p):
    """BH within each study (axis 0 of p = study)."""
    return np.array([benjamini_hochberg(study) for study in p])


def test_cluster_means_by_hand():
    values = np.array([[1.0, np.nan],
                       [3.0, 4.0],
                       [5.0, np.nan],
                       [np.nan, np.nan],
                       [2.0, 8.0]])
    means, counts, labels = cluster_means(values, ["s1", "s2", "s1", "s3", "s2"])
    assert labels == ["s1", "s2", "s3"]
    np.testing.assert_array_equal(counts, [[2, 0], [2, 2], [0, 0]])
    np.testing.assert_array_equal(means, [[3.0, np.nan], [2.5, 6.0], [np.nan, np.nan]])
    assert counts.dtype.kind == "i"
    with pytest.raises(InputError, match="one label per pair"):
        cluster_means(values, ["s1", "s2"])


def test_one_pair_per_cluster_equals_ttest_1samp_and_pair_bootstrap():
    rng = np.random.default_rng(21)
    x = rng.normal(0.3, 1, (40, 3, 4))
    r = cluster_test(x, [f"c{i}" for i in range(40)])
    ref = sps.ttest_1samp(x, 0.0, axis=0)
    np.testing.assert_allclose(r.estimate, x.mean(0))
    np.testing.assert_allclose(r.p, ref.pvalue, rtol=1e-10)
    np.testing.assert_allclose(r.log10_p, np.log10(ref.pvalue), rtol=1e-8)
    np.testing.assert_allclose(r.effect_size, x.mean(0) / x.std(0, ddof=1))
    assert (r.test == "t over cluster means").all() and (r.n_clusters == 40).all()
    assert (r.n_pairs == 40).all()
    # each pair its own cluster: the cluster bootstrap is the pair bootstrap, draw for draw
    low, high = bootstrap_ci(x)
    np.testing.assert_allclose(r.ci_low, low)
    np.testing.assert_allclose(r.ci_high, high)


def test_exact_sign_flip_equals_enumeration_and_ci_resamples_clusters():
    rng = np.random.default_rng(22)
    clusters = [0, 0, 1, 2, 2, 2, 3, 4, 4, 5, 6, 6, 7]
    x = rng.normal(0.8, 1, (len(clusters), 2, 2))
    x[[3, 4, 5], 1, 1] = np.nan  # cluster 2 has no value in cell (1, 1): 7 clusters there
    x[0, 0, 1] = np.nan  # cluster 0 keeps one pair in cell (0, 1)
    r = cluster_test(x, clusters)
    means, _ = _hand_cluster_means(x, clusters)
    for cell in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        m = means[(slice(None),) + cell]
        m = m[~np.isnan(m)]
        signs = np.array(list(product((1, -1), repeat=len(m))))
        observed = abs(m.sum())
        expected_p = np.mean(np.abs(signs @ m) >= observed - 1e-9)
        assert r.p[cell] == pytest.approx(expected_p, rel=1e-12)
        assert r.p[cell] >= 2 / 2 ** len(m)
        assert r.estimate[cell] == pytest.approx(m.mean())
        assert r.n_clusters[cell] == len(m)
        assert r.test[cell] == "exact sign-flip over clusters"
        # the CI is the percentile bootstrap of the cluster means (the same draws)
        low, high = bootstrap_ci(m[:, None])
        assert (r.ci_low[cell], r.ci_high[cell]) == pytest.approx((low[0], high[0]))
    assert r.n_clusters[1, 1] == 7 and r.n_pairs[1, 1] == len(clusters) - 3
    assert r.n_pairs[0, 1] == len(clusters) - 1


def test_monte_carlo_sign_flip_between_16_and_30_clusters():
    rng = np.random.default_rng(23)
    m = rng.normal(0.4, 1, 18)
    r = cluster_test(m[:, None], list(range(18)), n_permutations=4000)
    signs = ((np.arange(2 ** 18)[:, None] >> np.arange(18)) & 1) * 2.0 - 1
    exact = np.mean(np.abs(signs @ m) >= abs(m.sum()) - 1e-9)
    assert r.test[0] == "sign-flip over clusters (4000 permutations)"
    assert (r.p[0] * 4001) == pytest.approx(round(r.p[0] * 4001))  # (b + 1) / (m + 1)
    assert abs(r.p[0] - exact) < 4 * np.sqrt(exact * (1 - exact) / 4000) + 1e-3


@pytest.mark.parametrize("n_clusters", [8, 35])
def test_duplicated_pairs_change_only_n_pairs(n_clusters):
    rng = np.random.default_rng(n_clusters)
    clusters = list(rng.integers(0, n_clusters, 3 * n_clusters))
    clusters[:n_clusters] = range(n_clusters)  # every cluster present
    x = rng.normal(0.3, 1, (len(clusters), 2, 3))
    base = cluster_test(x, clusters)
    target = clusters[5]
    rows = [i for i, c in enumerate(clusters) if c == target]
    duplicated = cluster_test(np.concatenate([x, x[rows], x[rows]]),
                              clusters + [target] * (2 * len(rows)))
    for field in ("estimate", "p", "log10_p", "effect_size", "ci_low", "ci_high"):
        np.testing.assert_allclose(getattr(duplicated, field), getattr(base, field), rtol=1e-12)
    np.testing.assert_array_equal(duplicated.n_clusters, base.n_clusters)
    np.testing.assert_array_equal(duplicated.test, base.test)
    np.testing.assert_array_equal(duplicated.n_pairs, base.n_pairs + 2 * len(rows))
    # whereas the pair-level test counts the copies as evidence
    naive = paired_test(np.concatenate([x, x[rows], x[rows]])).pvalue
    assert not np.allclose(naive, paired_test(x).pvalue)


def test_extreme_and_degenerate_cells_never_give_impossible_numbers():
    rng = np.random.default_rng(24)
    n = 40
    noise = rng.normal(0, 1, n)
    noise = (noise - noise.mean()) / noise.std(ddof=1)
    x = np.zeros((n, 7))
    x[:, 0] = 1 + noise * np.sqrt(n) / 1000  # t = 1000
    x[:, 6] = 1 + noise * np.sqrt(n) / 1e10  # t = 1e10: 2 * sf underflows to 0
    x[:, 1] = 1 + noise * np.sqrt(n) / 80  # t = 80
    x[:, 2] = 2.0  # zero spread, nonzero mean
    x[:, 3] = 0.0  # all zero
    x[:, 4] = np.nan
    x[:2, 4] = [1.0, 3.0]  # two clusters: d_z undefined
    x[:, 5] = np.nan
    x[0, 5] = 1.0  # one cluster: untestable
    r = cluster_test(x, list(range(n)), n_permutations=999)
    t1000 = (np.log(2) + sps.t.logsf(1000, n - 1)) / np.log(10)
    assert r.p[0] > 0 and r.log10_p[0] == pytest.approx(t1000) and r.log10_p[0] < -80
    assert 2 * sps.t.sf(1e10, n - 1) == 0 and r.p[6] == np.finfo(float).tiny
    # far tail: log10 p keeps falling as t^-df (t 1e10 -> 1e8 raises it by 2 * 39 decades)
    assert np.isfinite(r.log10_p[6]) and r.log10_p[6] < np.log10(np.finfo(float).tiny) - 50
    far = (np.log(2) + sps.t.logsf(1e8, n - 1)) / np.log(10)
    assert r.log10_p[6] == pytest.approx(far - 2 * (n - 1), abs=1e-3)
    t80 = (np.log(2) + sps.t.logsf(80, n - 1)) / np.log(10)
    assert r.log10_p[1] == pytest.approx(t80) and r.log10_p[1] < -40  # -44 at df 39
    assert r.p[2] == pytest.approx(1 / 1000) and r.test[2] == "sign-flip over clusters (999 permutations)"
    assert np.isnan(r.effect_size[2])
    assert r.p[3] == 1.0 and r.log10_p[3] == 0.0 and np.isnan(r.effect_size[3])
    assert r.p[4] == pytest.approx(0.5) and np.isnan(r.effect_size[4]) and r.n_clusters[4] == 2
    assert np.isnan(r.p[5]) and r.test[5] == "" and r.estimate[5] == 1.0 and np.isnan(r.ci_low[5])
    for field in ("estimate", "ci_low", "ci_high", "effect_size", "p", "log10_p"):
        assert not np.isinf(getattr(r, field)).any(), field
    assert (r.p[[0, 1, 2, 3, 4, 6]] > 0).all()
    # small n, zero spread: exact sign flip, p = 2 / 2^n
    small = cluster_test(np.full((5, 1), 3.0), list("abcde"))
    assert small.p[0] == pytest.approx(2 / 32) and np.isnan(small.effect_size[0])
    with pytest.raises(InputError, match="infinite"):
        cluster_test(np.array([1.0, np.inf]), [0, 1])


def test_vectorised_cells_match_cells_tested_alone():
    rng = np.random.default_rng(25)
    clusters = list(rng.integers(0, 20, 60))
    x = rng.normal(0.2, 1, (60, 5))
    x[rng.random(x.shape) < 0.3] = np.nan  # a different validity mask in every cell
    together = cluster_test(x, clusters, n_permutations=2000)
    for k in range(5):
        alone = cluster_test(x[:, k], clusters, n_permutations=2000)
        assert together.p[k] == pytest.approx(float(alone.p), rel=1e-12)
        assert together.ci_low[k] == pytest.approx(float(alone.ci_low), rel=1e-12)
        assert together.test[k] == alone.test


def test_null_calibration_with_clustered_data():
    """60 clusters of 1..8 pairs, cluster sd 1, pair sd 0.5, no effect: 200 studies x 72 cells."""
    rng = np.random.default_rng(26)
    values, labels = _simulate_clustered(rng, 60, 200)
    naive = paired_test(values)  # pairs as if independent
    r = cluster_test(values, labels)
    naive_rate, rate = (naive.pvalue < 0.05).mean(), (r.p < 0.05).mean()
    coverage = ((r.ci_low <= 0) & (0 <= r.ci_high)).mean()
    print(f"60 clusters: naive FPR {naive_rate:.3f}, cluster FPR {rate:.4f}, CI coverage {coverage:.4f}")
    assert naive.method == "t" and naive_rate > 0.08
    assert (r.test == "t over cluster means").all()
    assert 0.03 <= rate <= 0.07
    assert _per_study_bh(r.p).__lt__(0.05).mean() <= 0.05
    assert 0.90 <= coverage <= 0.98


def test_null_calibration_with_few_clusters_exact():
    rng = np.random.default_rng(27)
    values, labels = _simulate_clustered(rng, 10, 200)
    naive = paired_test(values)
    r = cluster_test(values, labels, n_resamples=200)
    naive_rate, rate = (naive.pvalue < 0.05).mean(), (r.p < 0.05).mean()
    print(f"10 clusters: naive FPR {naive_rate:.3f}, cluster FPR {rate:.4f}")
    assert naive_rate > 0.08
    assert (r.test == "exact sign-flip over clusters").all()
    assert 0.03 <= rate <= 0.07
    assert _per_study_bh(r.p).__lt__(0.05).mean() <= 0.05


def test_planted_effect_of_one_sd_is_found():
    rng = np.random.default_rng(28)
    values, labels = _simulate_clustered(rng, 60, 50)
    planted = [(1, 3), (4, 0), (5, 11)]
    for layer, head in planted:
        values[:, :, layer, head] += 1.0
    q = _per_study_bh(cluster_test(values, labels, n_resamples=100).p)
    found = np.array([[q[s][cell] < 0.05 for cell in planted] for s in range(50)])
    assert found.all(1).mean() >= 0.8
    others = np.ones((6, 12), bool)
    for cell in planted:
        others[cell] = False
    assert (q[:, others] < 0.05).mean() <= 0.05


def test_cluster_unpaired_welch_matches_scipy_on_cluster_means():
    rng = np.random.default_rng(29)
    clusters_a = list(rng.integers(0, 40, 120))
    clusters_a[:40] = range(40)
    clusters_b = [f"b{c}" for c in rng.integers(0, 35, 90)]
    clusters_b[:35] = [f"b{c}" for c in range(35)]
    a = rng.normal(0.5, 1, (120, 2, 3))
    b = rng.normal(0.0, 2, (90, 2, 3))
    r = cluster_unpaired_test(a, clusters_a, b, clusters_b)
    ma, _ = _hand_cluster_means(a, clusters_a)
    mb, _ = _hand_cluster_means(b, clusters_b)
    ref = sps.ttest_ind(ma, mb, axis=0, equal_var=False)
    np.testing.assert_allclose(r.p, ref.pvalue, rtol=1e-10)
    np.testing.assert_allclose(r.estimate, ma.mean(0) - mb.mean(0))
    pooled = np.sqrt((39 * ma.var(0, ddof=1) + 34 * mb.var(0, ddof=1)) / 73)
    np.testing.assert_allclose(r.effect_size, (ma.mean(0) - mb.mean(0)) / pooled)
    assert (r.n_clusters == 75).all() and (r.n_pairs == 210).all()
    assert (r.test == "Welch t over cluster means").all()
    assert ((r.ci_low < r.estimate) & (r.estimate < r.ci_high)).all()
    # zero spread on both sides, different means: permutation p, never 0; d NaN
    flat = cluster_unpaired_test(np.ones((40, 1)), range(40), np.zeros((40, 1)), range(40),
                                 n_permutations=999)
    assert flat.p[0] == pytest.approx(1 / 1000) and np.isnan(flat.effect_size[0])
    assert flat.test[0] == "label permutation over clusters (999 permutations)"


@pytest.mark.parametrize("sizes", [(40, 30), (10, 8)])
def test_cluster_unpaired_null_calibration(sizes):
    rng = np.random.default_rng(sizes[0])
    a, labels_a = _simulate_clustered(rng, sizes[0], 100)
    b, labels_b = _simulate_clustered(rng, sizes[1], 100)
    r = cluster_unpaired_test(a, labels_a, b, labels_b, n_resamples=100, n_permutations=1000)
    rate = (r.p < 0.05).mean()
    print(f"unpaired {sizes}: cluster FPR {rate:.4f}")
    assert 0.03 <= rate <= 0.07
    assert _per_study_bh(r.p).__lt__(0.05).mean() <= 0.05
    if min(sizes) >= 30:
        assert (r.test == "Welch t over cluster means").all()
        naive = unpaired_test(a, b).pvalue  # Welch over pairs (the small case would loop per cell)
        print(f"unpaired {sizes}: naive FPR {(naive < 0.05).mean():.3f}")
        assert (naive < 0.05).mean() > 0.08
    else:
        assert (r.test == "label permutation over clusters (1000 permutations)").all()


def test_pair_level_tests_never_give_p_zero_or_inf_effect():
    constant = np.full((40, 2), 1.5)
    constant[:, 1] = 0.0
    r = paired_test(constant, n_permutations=999)
    assert r.pvalue[0] == pytest.approx(1 / 1000) and r.pvalue[1] == 1.0
    assert np.isnan(r.effect_size).all() and not np.isinf(r.statistic).any()
    huge = np.random.default_rng(30).normal(1e6, 1e-3, (60, 1))
    r = paired_test(huge)
    assert r.pvalue[0] > 0 and np.isfinite(r.effect_size[0])
    u = unpaired_test(np.ones((40, 1)), np.zeros((35, 1)), n_permutations=999)
    assert u.pvalue[0] == pytest.approx(1 / 1000) and np.isnan(u.effect_size[0])
    same = unpaired_test(np.ones((40, 1)), np.ones((35, 1)))
    assert same.pvalue[0] == 1.0 and np.isnan(same.effect_size[0])
