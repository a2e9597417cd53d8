"""Paired comparisons of two systems scored on the same queries.

Two encoders, two metrics or two spaces evaluated on one set of queries give
*paired* per-query outcomes; comparing their marginal figures as if they came
from independent samples wastes the pairing (and, with several captions per
image, the captions of one image are not independent either). This module
holds the statistics for such comparisons; it needs NumPy and SciPy only.

- :func:`mcnemar`: McNemar's test on per-query 0/1 outcomes (hit@K). Exact
  two-sided binomial test when few pairs are discordant, else the chi-square
  statistic with continuity correction (Edwards 1948), as statsmodels'
  ``mcnemar`` and R's ``mcnemar.test`` compute them. With cluster ids (the
  captions of one image), the clustered McNemar test of Durkalski et al.
  (2003).
- :func:`paired_bootstrap` / :func:`paired_bootstrap_many`: the difference
  ``mean(b) - mean(a)`` (**b minus a**: positive when system ``b`` scores
  higher) with a percentile 95% interval, resampling queries, or whole
  clusters, jointly for both systems.
- :func:`holm`: Holm's step-down adjustment of a family of p-values.

Sign and direction conventions: ``a`` is the reference system, ``b`` the one
compared with it. ``n01`` counts queries that ``a`` misses and ``b`` hits,
``n10`` queries that ``a`` hits and ``b`` misses; the bootstrap difference is
``b - a``.

References: A. L. Edwards (1948), Psychometrika 13:185-187; V. L. Durkalski,
Y. Y. Palesch, S. R. Lipsitz, P. F. Rust (2003), "Analysis of clustered
matched-pair data", Statistics in Medicine 22:2417-2428; S. Holm (1979),
Scandinavian Journal of Statistics 6:65-70.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from mmalign import seeding

METHOD_EXACT = "exact binomial"
METHOD_CHI2_CC = "chi2 cc"
METHOD_CLUSTERED = "clustered (Durkalski)"

# Resampling counts are built this many cells (resamples x units) at a time,
# so memory stays at about 8 bytes x this number whatever n_boot and n are.
_CELLS_PER_CHUNK = 1 << 18  # 2 MiB of counts: the bincount stays in cache


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test of two systems' 0/1 outcomes on the same queries.

    Attributes:
        n: number of queries (paired outcomes).
        n01: queries that ``a`` misses (0) and ``b`` hits (1).
        n10: queries that ``a`` hits (1) and ``b`` misses (0).
        statistic: for ``"exact binomial"``, ``min(n01, n10)`` (the binomial
            count whose two-sided tail is the p-value, as statsmodels reports
            it); for ``"chi2 cc"``, ``(|n01 - n10| - 1)^2 / (n01 + n10)``; for
            ``"clustered (Durkalski)"``, ``(sum_k d_k)^2 / sum_k d_k^2`` with
            ``d_k = n10_k - n01_k`` in cluster ``k``. 0 when no pair is
            discordant.
        p_value: two-sided p-value of "both systems have the same hit rate"
            (1 when no pair is discordant).
        method: ``"exact binomial"``, ``"chi2 cc"`` or ``"clustered (Durkalski)"``.
        n_clusters: number of independent units: the clusters when cluster
            ids were given, else ``n`` (every query its own unit).
    """

    n: int
    n01: int
    n10: int
    statistic: float
    p_value: float
    method: str
    n_clusters: int


def _binary(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(
            f"{name} must be one-dimensional (one outcome per query), got shape {x.shape}"
        )
    binary = (x == 0) | (x == 1)
    if not binary.all():
        raise ValueError(
            f"{name} must hold 0/1 outcomes per query (hit@K); found e.g. {x[~binary][:5]}"
        )
    return x.astype(np.int64)


def _cluster_codes(clusters: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    """(code in 0..G-1 of each query's cluster, G), codes in sorted id order."""
    clusters = np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(
            f"clusters must give one cluster id per query: shape {clusters.shape}, expected ({n},)"
        )
    if clusters.dtype.kind == "f" and np.isnan(clusters).any():
        raise ValueError("clusters contains NaN ids; give every query the id of its cluster")
    _, codes = np.unique(clusters, return_inverse=True)
    codes = codes.reshape(-1)
    return codes, int(codes.max()) + 1 if n else 0


def mcnemar(
    a: np.ndarray,
    b: np.ndarray,
    clusters: np.ndarray | None = None,
    exact_below: int = 25,
) -> McNemarResult:
    """McNemar's test that systems ``a`` and ``b`` have the same hit rate.

    Args:
        a: 0/1 outcome per query of system ``a`` (e.g. hit@K), shape (n,).
        b: 0/1 outcome of system ``b`` on the same queries, in the same order.
        clusters: optional cluster id per query (e.g. the image id of each
            caption). Queries of one cluster are not assumed independent.
        exact_below: without clusters, use the exact binomial test when the
            number of discordant pairs ``n01 + n10`` is below this, else the
            continuity-corrected chi-square.

    Without clusters the test conditions on the ``n01 + n10`` discordant
    pairs: under the null each is ``a``-miss/``b``-hit with probability 1/2.
    The exact p-value is ``min(1, 2 P(X <= min(n01, n10)))``, X ~
    Binomial(n01 + n10, 1/2); the chi-square one is the upper tail of
    chi2(1 df) at ``(|n01 - n10| - 1)^2 / (n01 + n10)`` (not clamped at 0, as in
    statsmodels and R, so ``n01 == n10`` gives a statistic of
    ``1 / (n01 + n10)`` rather than 0).

    With clusters, Durkalski et al. (2003): with ``d_k = n10_k - n01_k`` the
    difference of discordant counts in cluster ``k``,
    ``X^2 = (sum_k d_k)^2 / sum_k d_k^2`` referred to chi2(1 df); no
    continuity correction and no exact variant (the test is asymptotic in the
    number of clusters). With one query per cluster it equals the
    uncorrected McNemar chi-square ``(n01 - n10)^2 / (n01 + n10)``.
    """
    a_ = _binary(a, "a")
    b_ = _binary(b, "b")
    if a_.shape != b_.shape:
        raise ValueError(f"a and b must score the same queries: shapes {a_.shape} and {b_.shape}")
    n = len(a_)
    miss_hit = (a_ == 0) & (b_ == 1)
    hit_miss = (a_ == 1) & (b_ == 0)
    n01, n10 = int(miss_hit.sum()), int(hit_miss.sum())
    discordant = n01 + n10

    if clusters is not None:
        codes, n_clusters = _cluster_codes(clusters, n)
        d = np.bincount(codes, weights=hit_miss.astype(np.float64) - miss_hit, minlength=n_clusters)
        denominator = float(np.sum(d**2))
        if denominator == 0:  # every cluster balanced (or no discordant pair): no evidence
            return McNemarResult(n, n01, n10, 0.0, 1.0, METHOD_CLUSTERED, n_clusters)
        statistic = float(np.sum(d)) ** 2 / denominator
        p = float(special.chdtrc(1, statistic))  # chi2(1 df) upper tail
        return McNemarResult(n, n01, n10, statistic, p, METHOD_CLUSTERED, n_clusters)

    if discordant < exact_below:
        if discordant == 0:
            return McNemarResult(n, n01, n10, 0.0, 1.0, METHOD_EXACT, n)
        smaller = min(n01, n10)
        p = min(1.0, 2.0 * float(special.bdtr(smaller, discordant, 0.5)))  # Binomial cdf
        return McNemarResult(n, n01, n10, float(smaller), p, METHOD_EXACT, n)
    statistic = (abs(n01 - n10) - 1) ** 2 / discordant
    p = float(special.chdtrc(1, statistic))  # chi2(1 df) upper tail
    return McNemarResult(n, n01, n10, float(statistic), p, METHOD_CHI2_CC, n)


def _resampling_counts(rng: np.random.Generator, n_resamples: int, n_units: int) -> np.ndarray:
    """(n_resamples, n_units) float64: how often each unit is drawn per resample.

    Each row is one bootstrap resample: ``n_units`` draws with replacement.
    """
    draws = rng.integers(0, n_units, size=(n_resamples, n_units))
    draws += (np.arange(n_resamples) * n_units)[:, None]
    counts = np.bincount(draws.reshape(-1), minlength=n_resamples * n_units)
    return counts.reshape(n_resamples, n_units).astype(np.float64)


def paired_bootstrap_many(
    a: Mapping[str, np.ndarray],
    b: Mapping[str, np.ndarray],
    n_boot: int,
    seed: int,
    clusters: np.ndarray | None = None,
    stat: str = "mean",
) -> dict[str, tuple[float, float, float]]:
    """Paired bootstrap of ``mean(b[m]) - mean(a[m])`` for every measure ``m``.

    Args:
        a: per-query values of system ``a``, one array of shape (n,) per
            measure (hit@K as 0/1, reciprocal rank, nDCG, ...). Keys are free
            (e.g. ``"hit@1"``, ``"mrr"``, or one key per pair of systems).
        b: the same measures of system ``b`` on the same n queries, same keys.
        n_boot: number of bootstrap resamples (0 gives NaN bounds).
        seed: seed of the resampling (``numpy.random.default_rng``).
        clusters: optional cluster id per query; whole clusters are then
            resampled (a cluster bootstrap: all captions of an image together).
        stat: the statistic compared; only ``"mean"`` (the mean over queries).

    Returns:
        ``{m: (estimate, low, high)}``: ``estimate = mean(b[m]) - mean(a[m])``
        over all n queries (**b minus a**; positive when ``b`` scores
        higher), and the 2.5th and 97.5th percentiles of the same difference
        over the resamples (percentile 95% interval). Every measure uses the
        same resamples, and each resample takes the same queries for ``a``
        and ``b`` (that is what makes it paired). Under clusters each
        resample draws as many clusters as there are, with replacement, and
        the difference is the mean over all queries of the drawn clusters
        (clusters of unequal size weigh by their size, as in the estimate).
        With ``n_boot == 0`` or fewer than 2 units the bounds are NaN.
    """
    if stat != "mean":
        raise ValueError(f"stat={stat!r} is not supported; only 'mean' (mean over queries)")
    if set(a) != set(b):
        raise ValueError(f"a and b must name the same measures: {sorted(a)} vs {sorted(b)}")
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    names = list(a)
    if not names:
        return {}
    columns = []
    n = len(np.asarray(a[names[0]]))
    for m in names:
        a_m = np.asarray(a[m], dtype=np.float64)
        b_m = np.asarray(b[m], dtype=np.float64)
        if a_m.shape != (n,) or b_m.shape != (n,):
            raise ValueError(
                f"measure {m!r}: a and b must be 1-D over the same {n} queries, "
                f"got shapes {a_m.shape} and {b_m.shape}"
            )
        if not (np.isfinite(a_m).all() and np.isfinite(b_m).all()):
            raise ValueError(f"measure {m!r} has non-finite per-query values; drop or fill them")
        columns.append(b_m - a_m)
    if n == 0:
        raise ValueError("no queries to compare")
    diff = np.stack(columns, axis=1)  # (n, measures): per-query b - a
    estimate = diff.mean(axis=0)

    if clusters is None:
        unit_sums, unit_sizes = diff, np.ones(n)
    else:
        codes, n_units = _cluster_codes(clusters, n)
        unit_sums = np.stack(
            [np.bincount(codes, weights=col, minlength=n_units) for col in diff.T], axis=1
        )
        unit_sizes = np.bincount(codes, minlength=n_units).astype(np.float64)
    n_units = len(unit_sizes)
    if n_boot == 0 or n_units < 2:
        return {m: (float(e), np.nan, np.nan) for m, e in zip(names, estimate, strict=True)}

    rng = seeding.rng(seed)
    boot = np.empty((n_boot, len(names)))
    chunk = max(1, _CELLS_PER_CHUNK // n_units)
    for lo in range(0, n_boot, chunk):
        hi = min(n_boot, lo + chunk)
        counts = _resampling_counts(rng, hi - lo, n_units)
        boot[lo:hi] = (counts @ unit_sums) / (counts @ unit_sizes)[:, None]
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    return {
        m: (float(e), float(lo_), float(hi_))
        for m, e, lo_, hi_ in zip(names, estimate, low, high, strict=True)
    }


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    n_boot: int,
    seed: int,
    clusters: np.ndarray | None = None,
    stat: str = "mean",
) -> tuple[float, float, float]:
    """(``mean(b) - mean(a)``, 2.5th, 97.5th percentile) by a paired bootstrap.

    **b minus a**: positive when system ``b`` scores higher. One measure at a
    time; see :func:`paired_bootstrap_many` (which this calls) for the
    details and for several measures on the same resamples.
    """
    return paired_bootstrap_many(
        {"value": a}, {"value": b}, n_boot=n_boot, seed=seed, clusters=clusters, stat=stat
    )["value"]


def holm(p_values: Sequence[float], alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Holm's step-down adjustment of one family of p-values.

    Args:
        p_values: raw p-values of the family's tests, in any order. NaN
            entries (tests that could not be run) are not part of the family:
            they come back as NaN adjusted p-values, not rejected, and do not
            count towards the family size m.
        alpha: family-wise error rate.

    Returns:
        (adjusted, reject), both in the input order. With the m finite
        p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, the adjusted
        value of ``p_(i)`` is ``min(1, max_{j <= i} (m - j + 1) p_(j))``;
        ``reject`` is ``adjusted <= alpha`` (as statsmodels' ``multipletests``
        with ``method="holm"``).
    """
    p = np.asarray(p_values, dtype=np.float64).reshape(-1)
    adjusted = np.full(p.shape, np.nan)
    reject = np.zeros(p.shape, dtype=bool)
    finite = ~np.isnan(p)
    outside = finite & ((p < 0) | (p > 1))
    if outside.any():
        raise ValueError(f"p-values must lie in [0, 1] (or be NaN); got {p[outside]}")
    valid = np.flatnonzero(finite)
    m = len(valid)
    if m == 0:
        return adjusted, reject
    order = valid[np.argsort(p[valid], kind="stable")]
    steps = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted[order] = np.minimum(steps, 1.0)
    reject[valid] = adjusted[valid] <= alpha
    return adjusted, reject
