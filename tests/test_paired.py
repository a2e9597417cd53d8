"""Paired tests and intervals against statsmodels, hand-worked cases and simulations.

References: statsmodels' ``mcnemar`` and ``multipletests(method="holm")``,
arithmetic written out in the tests, and coverage / size by simulation from
models whose true difference (or null) is known analytically.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests

from mmalign.paired import (
    McNemarResult,
    holm,
    mcnemar,
    paired_bootstrap,
    paired_bootstrap_many,
)


def outcomes(n11: int, n10: int, n01: int, n00: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Per-query 0/1 outcomes (a, b) in a shuffled order with the given 2x2 table.

    ``n10``: a hit, b miss; ``n01``: a miss, b hit.
    """
    a = np.repeat([1, 1, 0, 0], [n11, n10, n01, n00])
    b = np.repeat([1, 0, 1, 0], [n11, n10, n01, n00])
    order = np.random.default_rng(seed).permutation(len(a))
    return a[order], b[order]


def chi2_1df_sf(x: float) -> float:
    """Upper tail of chi-square with 1 df: P(Z^2 > x) = erfc(sqrt(x / 2))."""
    return math.erfc(math.sqrt(x / 2))


# Rows: a hit / a miss; columns: b hit / b miss -> table[0][1] = n10, table[1][0] = n01.
TABLES = [
    (30, 2, 8, 60),
    (50, 25, 10, 15),
    (5, 12, 12, 3),  # balanced discordant pairs
    (100, 40, 22, 38),
    (3, 1, 0, 2),
    (0, 24, 0, 0),  # 24 discordant: still exact at exact_below=25
    (0, 25, 0, 0),  # 25 discordant: chi-square
    (400, 130, 170, 300),
]


@pytest.mark.parametrize("table", TABLES)
def test_mcnemar_matches_statsmodels(table: tuple[int, int, int, int]) -> None:
    n11, n10, n01, n00 = table
    a, b = outcomes(n11, n10, n01, n00)
    sm_table = np.array([[n11, n10], [n01, n00]])

    exact = mcnemar(a, b, exact_below=10**9)
    ref = sm_mcnemar(sm_table, exact=True)
    assert (exact.n, exact.n01, exact.n10, exact.method) == (len(a), n01, n10, "exact binomial")
    assert exact.statistic == ref.statistic
    assert exact.p_value == pytest.approx(ref.pvalue, rel=1e-12, abs=1e-15)

    chi2 = mcnemar(a, b, exact_below=0)
    ref = sm_mcnemar(sm_table, exact=False, correction=True)
    assert chi2.method == "chi2 cc"
    assert chi2.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert chi2.p_value == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-15)

    default = mcnemar(a, b)
    assert default == (exact if n01 + n10 < 25 else chi2)


def test_mcnemar_hand_worked() -> None:
    # n01 = 2, n10 = 8: 10 discordant < 25, exact. P(X <= 2), X ~ Bin(10, 1/2),
    # is (C(10,0) + C(10,1) + C(10,2)) / 2^10 = (1 + 10 + 45) / 1024; two-sided: 112 / 1024.
    result = mcnemar(*outcomes(30, 8, 2, 60))
    assert result == McNemarResult(100, 2, 8, 2.0, result.p_value, "exact binomial", 100)
    assert result.p_value == pytest.approx(112 / 1024, rel=1e-14)

    # n01 = 10, n10 = 25: 35 discordant, chi2 cc = (|10 - 25| - 1)^2 / 35 = 196 / 35 = 5.6.
    result = mcnemar(*outcomes(50, 25, 10, 15))
    assert result.method == "chi2 cc"
    assert result.statistic == pytest.approx(5.6, rel=1e-15)
    assert result.p_value == pytest.approx(chi2_1df_sf(5.6), rel=1e-12)
    assert result.p_value == pytest.approx(0.01796, abs=5e-6)

    # No discordant pair: nothing to test, p = 1.
    assert mcnemar(*outcomes(10, 0, 0, 5)).p_value == 1.0
    assert mcnemar(np.array([], dtype=int), np.array([], dtype=int)).p_value == 1.0


def test_mcnemar_clustered_hand_worked() -> None:
    # cluster "x": (a, b) = (1,0), (1,0), (1,1) -> n10 = 2, n01 = 0, d = 2
    # cluster "y": (1,0), (0,0)                 -> n10 = 1, n01 = 0, d = 1
    # cluster "z": (0,1), (1,1)                 -> n10 = 0, n01 = 1, d = -1
    # X^2 = (2 + 1 - 1)^2 / (2^2 + 1^2 + (-1)^2) = 4 / 6.
    a = np.array([1, 1, 1, 1, 0, 0, 1])
    b = np.array([0, 0, 1, 0, 0, 1, 1])
    clusters = np.array(["x", "x", "x", "y", "y", "z", "z"])
    result = mcnemar(a, b, clusters=clusters)
    assert (result.n, result.n01, result.n10, result.n_clusters) == (7, 1, 3, 3)
    assert result.method == "clustered (Durkalski)"
    assert result.statistic == pytest.approx(4 / 6, rel=1e-15)
    assert result.p_value == pytest.approx(chi2_1df_sf(4 / 6), rel=1e-12)

    # Every cluster balanced (d_k = 0): no evidence, p = 1.
    balanced = mcnemar(
        np.array([1, 0, 1, 1]), np.array([0, 1, 1, 1]), clusters=np.array([1, 1, 2, 2])
    )
    assert (balanced.statistic, balanced.p_value) == (0.0, 1.0)


@pytest.mark.parametrize("table", [t for t in TABLES if t[1] + t[2] > 0])
def test_mcnemar_clustered_reduces_to_uncorrected_with_singletons(
    table: tuple[int, int, int, int],
) -> None:
    a, b = outcomes(*table, seed=1)
    ids = np.random.default_rng(2).permutation(len(a)) * 7 + 3  # unique, unordered ids
    result = mcnemar(a, b, clusters=ids)
    n11, n10, n01, n00 = table
    ref = sm_mcnemar(np.array([[n11, n10], [n01, n00]]), exact=False, correction=False)
    assert result.n_clusters == len(a)
    assert result.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert result.p_value == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-15)


def test_mcnemar_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="0/1"):
        mcnemar(np.array([0, 1, 2]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="0/1"):
        mcnemar(np.array([0.0, np.nan]), np.array([0, 1]))
    with pytest.raises(ValueError, match="same queries"):
        mcnemar(np.array([0, 1]), np.array([0, 1, 1]))
    with pytest.raises(ValueError, match="one cluster id per query"):
        mcnemar(np.array([0, 1]), np.array([1, 1]), clusters=np.array([1]))


# ---- Holm ---------------------------------------------------------------------


def test_holm_hand_worked() -> None:
    # Sorted: 0.005, 0.01, 0.03, 0.04; times m - j + 1 = 4, 3, 2, 1: 0.02, 0.03, 0.06, 0.04;
    # running maximum: 0.02, 0.03, 0.06, 0.06. Back in input order:
    adjusted, reject = holm([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    assert reject.tolist() == [True, False, False, True]

    # NaN is outside the family: m = 2, so 0.01 * 2 = 0.02 and max(0.02, 0.04 * 1) = 0.04.
    adjusted, reject = holm([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(adjusted, [0.02, np.nan, 0.04], rtol=1e-12)
    assert reject.tolist() == [True, False, True]

    # Capped at 1: 0.5 * 2 = 1.0, max(1.0, 0.6) = 1.0.
    np.testing.assert_allclose(holm([0.6, 0.5])[0], [1.0, 1.0])
    assert holm([])[0].shape == (0,)
    assert holm([float("nan")])[1].tolist() == [False]


@pytest.mark.parametrize("alpha", [0.05, 0.1])
def test_holm_matches_statsmodels(alpha: float) -> None:
    rng = np.random.default_rng(3)
    for size in (1, 6, 40):  # few calls: multipletests runs gc.collect() each time
        p = np.concatenate([rng.uniform(0, 0.05, size // 2), rng.uniform(0, 1, size - size // 2)])
        p[rng.integers(0, size)] = p[0]  # a tie
        rng.shuffle(p)
        ref_reject, ref_adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
        adjusted, reject = holm(p, alpha=alpha)
        np.testing.assert_allclose(adjusted, ref_adjusted, rtol=1e-12)
        assert reject.tolist() == ref_reject.tolist()

        with_nan = np.insert(p, [0, size // 2], np.nan)
        adjusted, reject = holm(with_nan, alpha=alpha)
        keep = ~np.isnan(with_nan)
        np.testing.assert_allclose(adjusted[keep], ref_adjusted, rtol=1e-12)
        assert np.isnan(adjusted[~keep]).all() and not reject[~keep].any()
        assert reject[keep].tolist() == ref_reject.tolist()


# ---- paired bootstrap: arithmetic --------------------------------------------


def test_paired_bootstrap_sign_and_degenerate_cases() -> None:
    a = np.array([0, 0, 1, 0, 1, 0, 0, 1.0])
    b = np.array([1, 0, 1, 1, 1, 0, 1, 1.0])
    est, low, high = paired_bootstrap(a, b, n_boot=200, seed=0)
    assert est == pytest.approx(3 / 8)  # b minus a: b hits 6 of 8, a hits 3 of 8
    assert low <= est <= high
    assert paired_bootstrap(b, a, n_boot=200, seed=0)[0] == pytest.approx(-3 / 8)
    assert paired_bootstrap(a, a, n_boot=200, seed=0) == (0.0, 0.0, 0.0)
    # b = a + 1 on every query: every resample's difference is exactly 1.
    assert paired_bootstrap(a, a + 1, n_boot=50, seed=0) == pytest.approx((1.0, 1.0, 1.0))
    est, low, high = paired_bootstrap(a, b, n_boot=0, seed=0)
    assert est == pytest.approx(3 / 8) and np.isnan(low) and np.isnan(high)
    with pytest.raises(ValueError, match="only 'mean'"):
        paired_bootstrap(a, b, n_boot=10, seed=0, stat="median")
    with pytest.raises(ValueError, match="non-finite"):
        paired_bootstrap(a, np.full(8, np.nan), n_boot=10, seed=0)
    with pytest.raises(ValueError, match="same 8 queries"):
        paired_bootstrap(a, b[:5], n_boot=10, seed=0)


def test_paired_bootstrap_many_shares_resamples() -> None:
    rng = np.random.default_rng(4)
    a = {"hit@1": rng.integers(0, 2, 500).astype(float), "mrr": rng.uniform(0, 1, 500)}
    b = {"hit@1": rng.integers(0, 2, 500).astype(float), "mrr": rng.uniform(0, 1, 500)}
    many = paired_bootstrap_many(a, b, n_boot=300, seed=7)
    for m in a:  # the same resamples: equal up to the order of float summation
        assert many[m] == pytest.approx(paired_bootstrap(a[m], b[m], n_boot=300, seed=7), rel=1e-12)
    # A cluster per query is the query bootstrap itself.
    ids = np.arange(500)
    clustered = paired_bootstrap_many(a, b, n_boot=300, seed=7, clusters=ids)
    for m in a:
        assert clustered[m] == pytest.approx(many[m], rel=1e-12)
    with pytest.raises(ValueError, match="same measures"):
        paired_bootstrap_many(a, {"mrr": b["mrr"]}, n_boot=10, seed=0)


def test_paired_bootstrap_width_matches_normal_theory() -> None:
    # Percentile interval of a mean of n iid values ~ estimate -/+ 1.96 sd / sqrt(n).
    rng = np.random.default_rng(5)
    n = 4000
    a = (rng.uniform(size=n) < 0.5).astype(float)
    b = np.where(rng.uniform(size=n) < 0.8, a, 1 - a)  # correlated with a
    d = b - a
    est, low, high = paired_bootstrap(a, b, n_boot=2000, seed=1)
    half = 1.959964 * d.std() / math.sqrt(n)
    assert (high - low) / 2 == pytest.approx(half, rel=0.08)
    assert (high + low) / 2 == pytest.approx(est, abs=0.15 * half)

    # Clusters of unequal size: the cluster-robust (sandwich) standard error of
    # the pooled mean is sqrt(sum_g (S_g - n_g dbar)^2) / N.
    sizes = rng.integers(1, 9, 500)
    clusters = np.repeat(np.arange(500), sizes)
    shift = np.repeat(rng.normal(0, 1, 500), sizes)
    a = rng.normal(0, 1, len(clusters))
    b = a + 0.2 + shift + rng.normal(0, 0.5, len(clusters))
    est, low, high = paired_bootstrap(a, b, n_boot=2000, seed=2, clusters=clusters)
    d = b - a
    assert est == pytest.approx(d.mean(), rel=1e-12)
    sums, counts = np.bincount(clusters, weights=d), np.bincount(clusters)
    se = math.sqrt(np.sum((sums - counts * d.mean()) ** 2)) / len(d)
    assert (high - low) / 2 == pytest.approx(1.959964 * se, rel=0.08)


# ---- coverage and size by simulation -----------------------------------------


def bootstrap_all(a: np.ndarray, b: np.ndarray, clusters: np.ndarray | None = None) -> np.ndarray:
    """(datasets, 3) of (estimate, low, high): one paired bootstrap per row of a and b.

    All datasets go through one call, as measures of one comparison: they share
    the resampling counts (one matrix product). Each interval is still an
    ordinary bootstrap interval of its own dataset; sharing the resamples only
    correlates their Monte Carlo noise a little.
    """
    keys = [str(s) for s in range(len(a))]
    a_, b_ = dict(zip(keys, a, strict=True)), dict(zip(keys, b, strict=True))
    result = paired_bootstrap_many(a_, b_, n_boot=1000, seed=0, clusters=clusters)
    return np.array([result[k] for k in keys])


def coverage(intervals: np.ndarray, truth: float) -> float:
    """Share of (estimate, low, high) rows with low <= truth <= high."""
    return float(np.mean((intervals[:, 1] <= truth) & (truth <= intervals[:, 2])))


def test_paired_bootstrap_covers_hit_difference() -> None:
    # Paired Bernoulli outcomes with P(a) = 0.60, P(b) = 0.65, P(both) = 0.55:
    # cells (11, 10, 01, 00) = (0.55, 0.05, 0.10, 0.30); true difference b - a = 0.05.
    rng = np.random.default_rng(10)
    datasets, n = 1000, 300
    cells = rng.choice(4, size=(datasets, n), p=[0.55, 0.05, 0.10, 0.30])
    a = (cells <= 1).astype(float)
    b = ((cells == 0) | (cells == 2)).astype(float)
    cover = coverage(bootstrap_all(a, b), 0.05)
    assert cover >= 0.90, f"coverage {cover:.3f} of the nominal 95% interval"


def test_paired_bootstrap_covers_mrr_and_ndcg_difference() -> None:
    # Ranks R ~ Geometric(p) on {1, 2, ...}, a and b linked by a Gaussian copula (rho 0.7).
    # E[1/R] = sum_k p q^(k-1) / k = -p ln(p) / (1 - p); binary nDCG@10 of one relevant
    # item is 1 / log2(1 + R) if R <= 10, so E = sum_{k<=10} p q^(k-1) / log2(1 + k).
    p_a, p_b, rho = 0.30, 0.40, 0.7
    rng = np.random.default_rng(11)
    datasets, n = 1000, 300
    z_a = rng.standard_normal((datasets, n))
    z_b = rho * z_a + math.sqrt(1 - rho**2) * rng.standard_normal((datasets, n))

    def ranks(z: np.ndarray, p: float) -> np.ndarray:
        # V = Phi(-z) is uniform; R = ceil(ln V / ln q) has P(R > k) = q^k.
        return np.maximum(1, np.ceil(norm.logcdf(-z) / math.log(1 - p)))

    def ndcg10(r: np.ndarray) -> np.ndarray:
        return np.where(r <= 10, 1 / np.log2(1 + r), 0.0)

    def true_rr(p: float) -> float:
        return -p * math.log(p) / (1 - p)

    def true_ndcg10(p: float) -> float:
        return sum(p * (1 - p) ** (k - 1) / math.log2(1 + k) for k in range(1, 11))

    r_a, r_b = ranks(z_a, p_a), ranks(z_b, p_b)
    for name, values, truth in (
        ("mrr", lambda r: 1 / r, true_rr(p_b) - true_rr(p_a)),
        ("ndcg@10", ndcg10, true_ndcg10(p_b) - true_ndcg10(p_a)),
    ):
        cover = coverage(bootstrap_all(values(r_a), values(r_b)), truth)
        assert cover >= 0.90, f"{name}: coverage {cover:.3f} of the nominal 95% interval"


def clustered_outcomes(
    rng: np.random.Generator, datasets: int, n_clusters: int, size: int, delta: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probit model with a cluster random effect on the level and on the difference.

    a = 1[u_g + v_g + e > 0], b = 1[u_g - v_g + delta + e' > 0], u_g ~ N(0, 1),
    v_g ~ N(0, 1.5^2), e, e' ~ N(0, 1): marginally P(a) = 1/2 and
    P(b) = Phi(delta / sqrt(4.25)). v_g makes b - a strongly correlated within a cluster.
    """
    shape = (datasets, n_clusters, 1)
    u, v = rng.normal(0, 1, shape), rng.normal(0, 1.5, shape)
    e_a = rng.standard_normal((datasets, n_clusters, size))
    e_b = rng.standard_normal((datasets, n_clusters, size))
    a = (u + v + e_a > 0).reshape(datasets, -1).astype(float)
    b = (u - v + delta + e_b > 0).reshape(datasets, -1).astype(float)
    return a, b, np.repeat(np.arange(n_clusters), size)


def test_cluster_bootstrap_covers_where_query_bootstrap_does_not() -> None:
    delta = 0.5
    truth = norm.cdf(delta / math.sqrt(4.25)) - 0.5
    rng = np.random.default_rng(12)
    a, b, clusters = clustered_outcomes(rng, 1000, n_clusters=60, size=5, delta=delta)
    cover_cluster = coverage(bootstrap_all(a, b, clusters=clusters), truth)
    cover_query = coverage(bootstrap_all(a, b), truth)
    message = f"coverage: cluster bootstrap {cover_cluster:.3f}, query bootstrap {cover_query:.3f}"
    assert cover_cluster >= 0.90, message
    assert cover_query < cover_cluster - 0.05, message


def hit_pairs(
    rng: np.random.Generator, sims: int, n: int, p01: float, p10: float
) -> tuple[np.ndarray, np.ndarray]:
    """(sims, n) 0/1 outcomes of a and b with P(a miss, b hit) = p01, P(a hit, b miss) = p10."""
    concordant = (1 - p01 - p10) / 2
    cells = rng.choice(4, size=(sims, n), p=[concordant, p10, p01, concordant])
    return (cells <= 1).astype(int), ((cells == 0) | (cells == 2)).astype(int)


def rejection_rate(results: list[McNemarResult], alpha: float = 0.05) -> float:
    return float(np.mean([r.p_value <= alpha for r in results]))


def test_mcnemar_size_under_the_null_and_power() -> None:
    # P(a miss, b hit) = P(a hit, b miss): the null holds. Three regimes by the
    # expected number of discordant pairs: 9 (exact), 24 (straddles exact_below), 80 (chi2 cc).
    rng = np.random.default_rng(13)
    sims = 3000
    for n, p_disc in ((60, 0.15), (400, 0.06), (400, 0.20)):
        a, b = hit_pairs(rng, sims, n, p_disc / 2, p_disc / 2)
        size = rejection_rate([mcnemar(a[s], b[s]) for s in range(sims)])
        assert size <= 0.07, f"n={n}, P(discordant)={p_disc}: size {size:.4f} at alpha 0.05"
    # And it detects a real difference: 32 vs 8 expected discordant pairs of each kind.
    a, b = hit_pairs(rng, 1000, 400, 0.08, 0.02)
    power = rejection_rate([mcnemar(a[s], b[s]) for s in range(1000)])
    assert power >= 0.85, f"power {power:.3f} at alpha 0.05"


def test_clustered_mcnemar_keeps_its_size_on_clustered_data() -> None:
    rng = np.random.default_rng(14)
    sims = 2000
    a, b, clusters = clustered_outcomes(rng, sims, n_clusters=60, size=5, delta=0.0)
    plain = rejection_rate([mcnemar(a[s], b[s]) for s in range(sims)])
    clustered = rejection_rate([mcnemar(a[s], b[s], clusters=clusters) for s in range(sims)])
    message = f"size at alpha 0.05: clustered {clustered:.4f}, plain {plain:.4f}"
    assert clustered <= 0.07, message
    assert plain >= 0.10 and plain > clustered + 0.05, message
    # And it detects a real difference: delta = 1.5, b - a = Phi(1.5 / sqrt(4.25)) - 1/2 = 0.267.
    a, b, clusters = clustered_outcomes(rng, 1000, n_clusters=60, size=5, delta=1.5)
    power = rejection_rate([mcnemar(a[s], b[s], clusters=clusters) for s in range(1000)])
    assert power >= 0.80, f"clustered power {power:.3f} at alpha 0.05"
