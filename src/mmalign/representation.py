"""How aligned two embedding spaces are, item by item (beyond the paper).

Row ``i`` of ``text`` (n x d_t) and of ``image`` (n x d_i) describe the same
item; the two dimensions may differ (MiniLM 384-d against EfficientNet
1280-d, no adapter). Every measure compares the *similarity structure* of the
two spaces over the same items, so no shared coordinate system is needed.

- **Linear CKA** (Kornblith et al. 2019): with linear Gram matrices
  ``K = X X^T``, ``L = Y Y^T`` and ``H = I - 11^T / n``,
  ``CKA = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``, ``HSIC(K, L) = tr(K H L H)``
  (the ``1 / (n - 1)^2`` cancels). Equivalently ``||Y_c^T X_c||_F^2 /
  (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with column-centred features. In [0, 1];
  1 for spaces equal up to rotation and isotropic scaling. Its population
  value is ``||S_xy||_F^2 / (||S_xx||_F ||S_yy||_F)`` with the (cross-)
  covariance matrices ``S``. The plain (biased) estimator is positive even
  for independent spaces (about ``d / n`` for wide random features);
  ``unbiased=True`` uses the unbiased HSIC of Song et al. (2012), whose
  expectation is 0 for independent spaces::

      HSIC_u(K, L) = [tr(K~ L~) + 1^T K~ 1 1^T L~ 1 / ((n-1)(n-2)) - 2/(n-2) 1^T K~ L~ 1]
                     / (n (n - 3)),    K~ = K with its diagonal set to 0.

- **Mutual k-NN** (Huh et al. 2024, "The Platonic Representation
  Hypothesis"): rows L2-normalised, each item's k nearest neighbours by
  cosine (itself excluded) in each space; the score is the mean over items of
  ``|N_text(i) & N_image(i)| / k``. In [0, 1]; about ``k / (n - 1)`` for
  unrelated spaces.
- **CKNNA** (same paper): CKA restricted to mutual neighbours. With ``K``,
  ``L`` the cosine Grams, ``M_K`` the k-NN mask of ``K`` (row i marks i's k
  nearest, the diagonal excluded) and ``M = M_K * M_L``,
  ``CKNNA = s(K, L) / sqrt(s(K, K) s(L, L))`` where ``s(K, L) = HSIC_u(M * K,
  M * L)`` (``s(K, K)`` uses ``M_K``), as the authors' reference code
  (github.com/minyoungg/platonic-rep, ``metrics.py``: ``cknna`` with
  ``unbiased=True``) computes it; that code adds 1e-6 to the denominator, kept
  here so the numbers are comparable.

**Chance.** Each measure is recomputed with the pairing shuffled (the image
rows permuted, ``permutations`` seeded times): ``chance_mean`` and
``chance_std`` are what an unrelated pairing of the same two clouds scores,
and ``z = (value - chance_mean) / chance_std``.

**Interval: a delete-d jackknife over half-samples** (Shao & Wu 1989, Ann.
Statist. 17, 1176-1197; subsets drawn at random as in Shao 1989, JASA 84,
114-119). With ``d = floor(n / 2)`` and ``m = n - d``: ``S`` (the config's
``bootstrap``) seeded subsets of ``m`` of the ``n`` items, each drawn without
replacement and independently of the others; every measure is recomputed on
every subset from the Gram sub-matrices, with the same ``k``. With
``theta_n`` the value on all ``n`` items and ``theta_s`` its values on the
subsets::

    SE^2 = (m / d) * var(theta_s)   (ddof 1),
    interval = theta_n -/+ t(0.975, S - 1) * SE.

Subsets on which a measure is undefined (a zero denominator) are left out and
``S`` counts the others. The choices, and why:

- *Without replacement.* A bootstrap resample repeats items, and a repeated
  item is its own nearest neighbour at cosine 1 (inflating mutual k-NN and
  CKNNA) and a duplicated row of both Grams (inflating CKA). A subset never
  holds an item twice. Items repeated in the data itself (identical rows)
  stay what they are, distinct items with equal rows, in the full sample and
  in every subset; their ties in the k-NN masks go to the lower index both
  times (subsets keep the items' order).
- *Rescaled.* Over random m-subsets of the sample, ``theta_s`` varies about
  ``theta_n`` by about ``sigma^2 (1/m - 1/n) = sigma^2 d / (m n)`` when
  ``Var(theta_n) = sigma^2 / n``, so ``(m / d) var(theta_s)`` estimates
  ``Var(theta_n)``. (The previous scheme, unrescaled 2.5-97.5th percentiles of
  80% subsets, is half as wide as it should be, ``sqrt(0.2 / 0.8)``; it
  covered the population CKA in 0.65 of the coverage test's 150 datasets.)
- *Consistent.* Shao & Wu prove the delete-d jackknife variance consistent
  for smooth functions of means (CKA is a ratio of U-statistics) with any
  ``d`` such that ``n - d`` grows, and, for statistics as rough as sample
  quantiles (the k-NN masks are rank-based), when ``d / sqrt(n)`` and
  ``n - d`` both grow; half-samples meet both.
- *k kept.* Mutual k-NN is ``1 / (n k)`` times a sum of ``n k`` pair
  indicators, so its variance has a pair-level term of about ``2 p / (n k)``,
  ``p`` the overlap share. With ``k`` fixed and ``p`` well above chance that
  term shrinks like ``1 / m`` on the subsets, as the rescaling assumes;
  scaling ``k`` with ``m`` would make it grow like ``1 / m^2`` and overstate
  the variance. Simulated (Gaussian latent model, n = 150-300, k = 10),
  interval widths over the Monte-Carlo 95% range of the estimator: 1.12-1.24
  with half-samples and ``k`` kept; 1.4-1.55 with ``k`` scaled; 1.25-1.42
  with 0.8 n or 0.9 n subsets. Half-samples with ``k`` kept are the
  narrowest that cover.
- *Conservative near chance.* Where the spaces are close to unrelated,
  ``p`` is itself about ``k / n`` and the pair-level term falls like
  ``1 / n^2``; the half-sample rescaling overstates such a term threefold, so
  the intervals of mutual k-NN and CKNNA (and of CKA near 0, whose unbiased
  HSIC is then a degenerate U-statistic) are up to ``sqrt(3)`` too wide:
  simulated 1.5-1.9 times the Monte-Carlo range, coverage 0.97-1.0. Jackknife
  variances err upwards in general (Efron & Stein 1981, Ann. Statist. 9,
  586-596).
- *t quantile.* ``S`` subsets estimate the jackknife variance with
  ``S - 1`` degrees of freedom; the t quantile absorbs that Monte-Carlo noise
  (1.2% wider than the normal quantile at ``S = 100``).

What the interval covers (each statement is tested by simulation in
``tests/test_alignment_coverage.py``):

- Unbiased CKA (the default): the population linear CKA
  ``||S_xy||_F^2 / (||S_xx||_F ||S_yy||_F)`` (the estimator's own ratio bias is
  ``O(1 / n)``). Tested: 0.947 of 150 datasets of 200 pairs. Measured once
  at the default size: 0.94 and 0.97 of 150 datasets of 1,000 pairs (CKA
  0.75 and 0.18), 0.93 of 60 with 384-d and 1280-d features on a 64-d latent.
- Biased CKA (``unbiased=False``): not the population value. The interval
  is centred on a value whose bias (about ``d / n`` for ``d`` wide noisy
  features) it does not remove, so it aims at the estimator's expectation at
  this ``n``, and reaches it only roughly: with 64-d and 96-d noise at
  n = 150 it covered that expectation 0.89-0.92 and the population value
  0.05-0.07 (its standard errors 0.89 of the estimates' spread). Use the
  unbiased default for intervals.
- Mutual k-NN and CKNNA: no population value is known; both depend on ``n``
  and ``k``. The interval covers ``E[theta_{n,k}]``, the estimator's
  expectation over fresh samples of ``n`` pairs from the same population
  with the same ``k``. Tested against the mean of 400 independent draws:
  0.96 (mutual k-NN) and 0.95 (CKNNA) of 100 datasets of 150 pairs, k = 10.
  (The previous mutual k-NN interval, a bootstrap of the per-item overlaps
  with the sample's neighbourhoods fixed, has no estimand of its own: given
  the sample, the mean of those overlaps is the value itself. As an interval
  for ``E[theta_{n,k}]`` it covered 0.77 of the same datasets, and the
  previous CKNNA interval 0.80.)

The sample: ``representation_measures`` measures a seeded sample of
``min(sample, n)`` pairs, and the interval is that of a draw of that many
pairs, not of the whole dataset's value.

Everything runs on Gram matrices computed once per sample, in float64; the
subsets and shuffled pairings take sub-matrices of them, in batches.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from mmalign import seeding
from mmalign.config import schema_defaults
from mmalign.layout import SIMILARITY_MEASURES

log = logging.getLogger(__name__)

LEVEL = 0.95
# Elements of one (m x m) matrix per batch of subsets or permutations: batches
# of a few million float64 keep the temporaries near 100 MB whatever n is.
BATCH_ELEMENTS = 2_000_000


# ---- Gram matrices and HSIC (every function takes a batch: leading axes) ----------------


def gram(x: np.ndarray, normalize: bool = False) -> np.ndarray:
    """``X X^T`` in float64 (rows L2-normalised first when ``normalize``)."""
    x = np.asarray(x, dtype=np.float64)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def _diagonal(k: np.ndarray) -> np.ndarray:
    return np.diagonal(k, axis1=-2, axis2=-1)


def _trace_of_product(k: np.ndarray, l: np.ndarray) -> np.ndarray:  # noqa: E741
    """``tr(K L)`` over the leading axes (``sum_ij K_ij L_ji``)."""
    return np.einsum("...ij,...ji->...", k, l)


def _double_centre(k: np.ndarray) -> np.ndarray:
    """``H K H`` (each matrix of the batch)."""
    centred = k - k.mean(-2, keepdims=True) - k.mean(-1, keepdims=True)
    return centred + k.mean((-2, -1), keepdims=True)


def _hsic_biased(k: np.ndarray, l: np.ndarray) -> np.ndarray:  # noqa: E741
    return _trace_of_product(_double_centre(k), l)


def _hsic_unbiased(k: np.ndarray, l: np.ndarray) -> np.ndarray:  # noqa: E741
    """Song et al.'s HSIC_u without copying the matrices: the zeroed diagonals
    are subtracted from the trace and from the row and column sums."""
    n = k.shape[-1]
    dk, dl = _diagonal(k), _diagonal(l)
    trace = _trace_of_product(k, l) - np.einsum("...i,...i->...", dk, dl)  # tr(K~ L~)
    col_k = k.sum(-2) - dk  # 1^T K~
    row_l = l.sum(-1) - dl  # L~ 1
    sums = col_k.sum(-1) * row_l.sum(-1) / ((n - 1) * (n - 2))
    cross = 2.0 * np.einsum("...i,...i->...", col_k, row_l) / (n - 2)  # 2/(n-2) 1^T K~ L~ 1
    return (trace + sums - cross) / (n * (n - 3))


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """``tr(K H L H)`` (no ``1 / (n - 1)^2``: it cancels in every ratio here)."""
    return float(_hsic_biased(k, l))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012)'s unbiased HSIC (see the module docstring); needs n >= 4.
    ``K``, ``L`` need not be symmetric (CKNNA's masked kernels are not)."""
    n = len(k)
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 items, got {n}")
    return float(_hsic_unbiased(k, l))


def _ratio(numerator: np.ndarray, product: np.ndarray, epsilon: float = 0.0) -> np.ndarray:
    """``numerator / (sqrt(product) + epsilon)``, NaN where ``product <= 0``."""
    with np.errstate(invalid="ignore", divide="ignore"):
        root = np.sqrt(np.where(product > 0, product, np.nan))
        return numerator / (root + epsilon)


def _cka(k: np.ndarray, l: np.ndarray, unbiased: bool) -> np.ndarray:  # noqa: E741
    hsic = _hsic_unbiased if unbiased else _hsic_biased
    return _ratio(hsic(k, l), hsic(k, k) * hsic(l, l))


def cka_from_grams(k: np.ndarray, l: np.ndarray, unbiased: bool = False) -> float:  # noqa: E741
    """Linear CKA from the two linear Gram matrices (NaN for a zero denominator)."""
    return float(_cka(k, l, unbiased))


def linear_cka(x: np.ndarray, y: np.ndarray, unbiased: bool = False) -> float:
    """Linear CKA between two spaces of the same items (any two dimensions)."""
    _check_pairs(x, y)
    return cka_from_grams(gram(x), gram(y), unbiased)


# ---- nearest neighbours ---------------------------------------------------------------


def knn_mask(similarity: np.ndarray, k: int) -> np.ndarray:
    """Boolean, the shape of ``similarity`` (n x n, or a batch of them): row i
    marks the k most similar items to i, itself excluded; ties go to the lower
    index. (A partition finds each row's k-th largest value; everything above it
    is in, and the ties at it fill the rest in index order.)"""
    n = similarity.shape[-1]
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    distance = -similarity  # a copy: the diagonal can be overwritten
    index = np.arange(n)
    distance[..., index, index] = np.inf
    kth = np.partition(distance, k - 1, axis=-1)[..., k - 1 : k]
    closer = distance < kth
    tied = distance == kth
    room = k - closer.sum(-1, keepdims=True)
    return closer | (tied & (np.cumsum(tied, axis=-1, dtype=np.int32) <= room))


def _knn_measures(
    cosine_text: np.ndarray, cosine_image: np.ndarray, k: int, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Mutual k-NN and/or CKNNA (those of ``names``) from one pair of masks."""
    mask_t, mask_i = knn_mask(cosine_text, k), knn_mask(cosine_image, k)
    mutual = mask_t & mask_i
    out = {}
    if "mutual_knn" in names:
        out["mutual_knn"] = mutual.sum((-2, -1)) / (k * cosine_text.shape[-1])
    if "cknna" in names:
        kl = _hsic_unbiased(mutual * cosine_text, mutual * cosine_image)
        kk = _hsic_unbiased(mask_t * cosine_text, mask_t * cosine_text)
        ll = _hsic_unbiased(mask_i * cosine_image, mask_i * cosine_image)
        out["cknna"] = _ratio(kl, kk * ll, 1e-6)
    return out


def mutual_knn_from_grams(k_text: np.ndarray, k_image: np.ndarray, k: int) -> float:
    """Mutual k-NN overlap from the two cosine Gram matrices."""
    return float(_knn_measures(k_text, k_image, k, ["mutual_knn"])["mutual_knn"])


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Mean share of each item's k nearest neighbours (cosine) that the two spaces share."""
    _check_pairs(x, y)
    return mutual_knn_from_grams(gram(x, True), gram(y, True), k)


def cknna_from_grams(k_text: np.ndarray, k_image: np.ndarray, k: int) -> float:
    """CKNNA from the two cosine Gram matrices (the authors' unbiased variant)."""
    return float(_knn_measures(k_text, k_image, k, ["cknna"])["cknna"])


def cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Centred kernel alignment over mutual k-nearest neighbours (Huh et al. 2024)."""
    _check_pairs(x, y)
    return cknna_from_grams(gram(x, True), gram(y, True), k)


def _check_pairs(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(
            f"alignment needs two matrices with one row per item, got {x.shape} and {y.shape}"
        )


# ---- samples, subsets and shuffled pairings ------------------------------------------------


@dataclass(frozen=True)
class Grams:
    """The Gram matrices a sample needs: linear (CKA) and cosine (the k-NN
    measures); each n x n, or a batch (B x m x m) of sub-samples."""

    linear_text: np.ndarray
    linear_image: np.ndarray
    cosine_text: np.ndarray
    cosine_image: np.ndarray

    @classmethod
    def of(cls, text: np.ndarray, image: np.ndarray) -> Grams:
        return cls(gram(text), gram(image), gram(text, True), gram(image, True))

    @property
    def n_items(self) -> int:
        return int(self.linear_text.shape[-1])

    def take(
        self,
        rows: np.ndarray,
        image_rows: np.ndarray | None = None,
        linear: bool = True,
        cosine: bool = True,
    ) -> Grams:
        """The Grams of the items ``rows``, the image side taken at ``image_rows``
        (a shuffled pairing) when given: sub-matrices, no recomputation. Either
        may be one index vector (m,) or a batch of them (B x m). ``linear`` /
        ``cosine`` false: those two fields are left empty (0 x 0), for a caller
        that needs only CKA or only the k-NN measures."""
        n = self.n_items
        at_text = _flat_index(rows, n)
        at_image = at_text if image_rows is None else _flat_index(image_rows, n)
        empty = np.zeros((0, 0))
        return Grams(
            np.take(self.linear_text, at_text) if linear else empty,
            np.take(self.linear_image, at_image) if linear else empty,
            np.take(self.cosine_text, at_text) if cosine else empty,
            np.take(self.cosine_image, at_image) if cosine else empty,
        )


def _flat_index(rows: np.ndarray, n: int) -> np.ndarray:
    """Positions in a flattened n x n matrix of its sub-matrix at ``rows`` (one
    index vector or a batch): ``np.take`` with them is ``g[rows][:, rows]``,
    several times faster than two-axis fancy indexing."""
    rows = np.asarray(rows, dtype=np.intp)
    return rows[..., :, None] * n + rows[..., None, :]


# A measure of one sample's Grams (a 0-d array) or of each of a batch (shape B).
Measure = Callable[[Grams], np.ndarray]


def evaluate(
    grams: Grams, k: int, unbiased: bool, names: Sequence[str] = SIMILARITY_MEASURES
) -> dict[str, np.ndarray]:
    """The measures ``names`` of one sample (0-d arrays) or of each of a batch
    (shape B); mutual k-NN and CKNNA share their k-NN masks."""
    out = {}
    if "cka" in names:
        out["cka"] = _cka(grams.linear_text, grams.linear_image, unbiased)
    knn = [name for name in names if name != "cka"]
    if knn:
        out |= _knn_measures(grams.cosine_text, grams.cosine_image, k, knn)
    return {name: out[name] for name in names}


def measure_functions(k: int, unbiased: bool) -> dict[str, Measure]:
    """Each measure of :data:`SIMILARITY_MEASURES` as a function of a sample's :class:`Grams`
    (one sample or a batch, as :func:`evaluate`)."""
    return {
        name: (lambda g, name=name: evaluate(g, k, unbiased, [name])[name])
        for name in SIMILARITY_MEASURES
    }


def _batch_size(m: int) -> int:
    return max(1, BATCH_ELEMENTS // (m * m))


def permutation_values(
    measure: Measure, grams: Grams, n_permutations: int, seed: int
) -> np.ndarray:
    """``measure`` with the pairing shuffled, once per seeded permutation
    (``seeding.rng(seed).permutation(n)``, drawn in turn)."""
    rng = seeding.rng(seed)
    n = grams.n_items
    permutations = np.array([rng.permutation(n) for _ in range(n_permutations)], dtype=np.intp)
    batches = np.array_split(permutations, max(1, -(-n_permutations // _batch_size(n))))
    # The text side stays whole and broadcasts against each batch of image sides.
    values = []
    for p in batches:
        if len(p):
            at = _flat_index(p, n)
            shuffled = Grams(grams.linear_text, np.take(grams.linear_image, at),
                             grams.cosine_text, np.take(grams.cosine_image, at))  # fmt: skip
            values.append(np.asarray(measure(shuffled)))
    return np.concatenate(values) if values else np.zeros(0)


# ---- the interval -------------------------------------------------------------------------


@dataclass(frozen=True)
class JackknifeInterval:
    """One measure's delete-d jackknife (see the module docstring): ``value`` on
    all ``n`` items, ``se`` its standard error, ``low``/``high`` the 95% interval;
    ``subsets`` counts the subsets on which the measure was defined."""

    value: float
    se: float
    low: float
    high: float
    subsets: int


def half_sample_size(n: int) -> int:
    """``m = n - d`` with ``d = floor(n / 2)``: the delete-d subsets' size."""
    return n - n // 2


def half_sample_subsets(n: int, n_subsets: int, seed: int) -> np.ndarray:
    """``n_subsets`` x ``m`` item indices: each row a seeded draw of
    :func:`half_sample_size` items without replacement, in increasing order."""
    rng = seeding.rng(seed)
    order = np.argsort(rng.random((n_subsets, n)), axis=1)
    return np.sort(order[:, : half_sample_size(n)], axis=1)


def jackknife_intervals(
    grams: Grams,
    k: int,
    unbiased: bool,
    n_subsets: int,
    seed: int,
    names: Sequence[str] = SIMILARITY_MEASURES,
) -> dict[str, JackknifeInterval]:
    """The delete-d jackknife of each measure of ``names`` over
    :func:`half_sample_subsets` (the module docstring gives the formula and what
    it covers). ``se``, ``low`` and ``high`` are NaN when fewer than two subsets
    are usable, or the subsets are too small for the measure (``m < 4``, or
    ``m < k + 1`` for the k-NN measures)."""
    n = grams.n_items
    values = {name: float(v) for name, v in evaluate(grams, k, unbiased, names).items()}
    m, d = half_sample_size(n), n // 2
    usable = [name for name in names if m >= (4 if name == "cka" else max(4, k + 1))]
    per_subset: dict[str, list[np.ndarray]] = {name: [] for name in usable}
    if usable and n_subsets >= 2:
        subsets = half_sample_subsets(n, n_subsets, seed)
        for rows in np.array_split(subsets, max(1, -(-n_subsets // _batch_size(m)))):
            knn = any(name != "cka" for name in usable)
            sub = grams.take(rows, linear="cka" in usable, cosine=knn)
            for name, v in evaluate(sub, k, unbiased, usable).items():
                per_subset[name].append(v)
    out = {}
    for name in names:
        found = np.concatenate(per_subset.get(name) or [np.zeros(0)])
        found = found[np.isfinite(found)]
        value = values[name]
        if len(found) < 2 or not math.isfinite(value):
            out[name] = JackknifeInterval(value, math.nan, math.nan, math.nan, len(found))
            continue
        se = math.sqrt(m / d * float(np.var(found, ddof=1)))
        half = float(stats.t.ppf(0.5 + LEVEL / 2, len(found) - 1)) * se
        out[name] = JackknifeInterval(value, se, value - half, value + half, len(found))
    return out


def describe_interval(n: int, n_subsets: int) -> str:
    """The ``interval`` string of ``alignment.json``: the method, exactly."""
    m, d = half_sample_size(n), n // 2
    return (
        f"95% delete-d jackknife (Shao & Wu 1989) over {n_subsets} seeded half-samples: "
        f"subsets of m = {m} of the n = {n} items without replacement (d = {d}), k kept; "
        f"SE^2 = (m/d) var(subset values); value -/+ t(0.975, subsets - 1) SE. Covers the "
        "population CKA (unbiased CKA) and the estimator's expectation at this n and k "
        "(mutual k-NN, CKNNA); see mmalign.representation"
    )


# ---- the measures of one pair of spaces -------------------------------------------------


_DEFAULTS = schema_defaults("alignment")


@dataclass(frozen=True)
class RepresentationOptions:
    """The ``alignment`` config (see the schema: the defaults are its); ``bootstrap``
    is the number of delete-d jackknife subsets (the key keeps its old name)."""

    sample: int = _DEFAULTS["sample"]
    k: int = _DEFAULTS["k"]
    permutations: int = _DEFAULTS["permutations"]
    bootstrap: int = _DEFAULTS["bootstrap"]
    unbiased: bool = _DEFAULTS["unbiased"]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> RepresentationOptions:
        return cls(**{name: cfg[name] for name in cls.__dataclass_fields__})


def representation_measures(
    text: np.ndarray, image: np.ndarray, opts: RepresentationOptions, seed: int
) -> dict[str, Any]:
    """Every measure on a seeded sample of ``min(sample, n)`` pairs, each with its
    delete-d jackknife interval (:func:`jackknife_intervals`; ``se`` its standard
    error, ``ci_subsets`` the subsets it used) and permutation baseline
    (JSON-ready)."""
    _check_pairs(text, image)
    n = len(text)
    rng = seeding.rng(seed, "alignment")
    rows = np.sort(rng.choice(n, min(opts.sample, n), replace=False))
    size = len(rows)
    out: dict[str, Any] = {
        "n_items": size,
        "k": opts.k,
        "dim_text": int(text.shape[1]),
        "dim_image": int(image.shape[1]),
        "unbiased": opts.unbiased,
        "interval": describe_interval(size, opts.bootstrap)
        if opts.bootstrap >= 2
        else f"none ({opts.bootstrap} jackknife subsets; at least 2 are needed)",
        "interval_subsets": opts.bootstrap,
        "interval_subset_size": half_sample_size(size),
    }
    # The k-NN measures need k + 1 items, the unbiased HSIC 4 (a tiny dataset: n/a).
    min_items = max(opts.k + 1, 4)
    if size < min_items:
        out["note"] = f"n/a: {size} pairs; k = {opts.k} needs at least {min_items}"
        log.warning("%s", out["note"])
        return out | {name: None for name in SIMILARITY_MEASURES}
    grams = Grams.of(text[rows], image[rows])
    intervals = jackknife_intervals(
        grams, opts.k, opts.unbiased, opts.bootstrap, seeding.int_seed(seed, "alignment/jackknife")
    )
    for name, measure in measure_functions(opts.k, opts.unbiased).items():
        jk = intervals[name]
        chance = permutation_values(
            measure,
            grams,
            opts.permutations,
            seeding.int_seed(seed, "alignment/permutations", name),
        )
        std = float(np.std(chance, ddof=1)) if len(chance) > 1 else math.nan
        z = (jk.value - float(np.mean(chance))) / std if std > 0 else None
        out[name] = {
            "value": _finite(jk.value),
            "ci_low": _finite(jk.low),
            "ci_high": _finite(jk.high),
            "se": _finite(jk.se),
            "ci_subsets": jk.subsets,
            "chance_mean": _finite(float(np.mean(chance))),
            "chance_std": _finite(std),
            "chance_values": [_finite(float(v)) for v in chance],
            "z": _finite(z) if z is not None else None,
        }
    return out


def _finite(value: float) -> float | None:
    """JSON has no NaN: ``None`` instead."""
    return float(value) if value is not None and math.isfinite(value) else None


# ---- the rule ---------------------------------------------------------------------------


def representation_job(
    embeddings_dir: str | Path,
    heads: str | Path | None,
    cfg: dict[str, Any],
    learn_cfg: dict[str, Any],
    seed: int,
    threads: int,
    out_json: str | Path,
    label: dict[str, str],
) -> dict[str, Any]:
    """The ``alignment`` rule: the measures of one (dataset, encoder) in up to three
    spaces. ``raw``: a seeded sample of every first-caption pair; ``test_raw``:
    the learned stage's test split (the same pairs and seed as ``learn``);
    ``test_align``: that split in the shared space of the trained ``align``
    heads (``heads``: their safetensors file; ``None`` when the variant is off).
    """
    from threadpoolctl import threadpool_limits

    from mmalign.embed import Embeddings
    from mmalign.geometry import matched_pairs
    from mmalign.io import write_json
    from mmalign.learn.align import aligned_test_split

    opts = RepresentationOptions.from_config(cfg)
    emb = Embeddings.load(embeddings_dir)
    pairs = matched_pairs(emb)
    todo: dict[str, tuple[np.ndarray, np.ndarray]] = {"raw": (pairs.text, pairs.image)}
    if heads:
        raw, aligned = aligned_test_split(emb, heads, learn_cfg, seed, where=str(embeddings_dir))
        todo["test_raw"] = (raw.text, raw.image)
        todo["test_align"] = (aligned.text, aligned.image)
    spaces = {}
    with threadpool_limits(limits=max(1, threads)):
        for space, (text, image) in todo.items():
            spaces[space] = found = representation_measures(text, image, opts, seed)
            log.info("%s (%d pairs): %s", space, found["n_items"], ", ".join(
                f"{m} {found[m]['value']:.3f} (chance {found[m]['chance_mean']:.3f})"
                for m in SIMILARITY_MEASURES
                if found[m] and found[m]["value"] is not None))  # fmt: skip
    summary = {**label, "spaces": spaces, "config": cfg}
    write_json(summary, out_json)
    return summary
