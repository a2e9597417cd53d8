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
  1 for spaces equal up to rotation and isotropic scaling. The plain
  (biased) estimator is positive even for independent spaces (about
  ``d / n`` for wide random features); ``unbiased=True`` uses the unbiased
  HSIC of Song et al. (2012), whose expectation is 0 for independent spaces::

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

**Interval.** A resample with replacement repeats items, and a repeated item
is its own nearest neighbour, which would inflate the k-NN measures; so each
measure gets the interval that suits it (``bootstrap`` seeded resamples, 2.5th
and 97.5th percentiles): mutual k-NN, a bootstrap of the per-item overlaps
with the neighbourhoods of the whole sample fixed (the interval of the mean
over items); CKA and CKNNA, subsets of 80% of the items drawn without
replacement, k scaled by 0.8 (an approximate, subsampling interval: neither
is a mean over items, and repeated items would also inflate CKA). The biased
CKA estimator depends on n, so its interval is off-centre; the default is
the unbiased one, whose interval is centred.

Everything runs on Gram matrices computed once per sample (O(n^2) per
measure after that), in float64.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

MEASURES = ("cka", "mutual_knn", "cknna")
SUBSAMPLE_FRACTION = 0.8


# ---- Gram matrices and HSIC --------------------------------------------------------


def gram(x: np.ndarray, normalize: bool = False) -> np.ndarray:
    """``X X^T`` in float64 (rows L2-normalised first when ``normalize``)."""
    x = np.asarray(x, dtype=np.float64)
    if normalize:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x @ x.T


def _double_centre(k: np.ndarray) -> np.ndarray:
    """``H K H``."""
    return k - k.mean(0, keepdims=True) - k.mean(1, keepdims=True) + k.mean()


def hsic_biased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """``tr(K H L H)`` (no ``1 / (n - 1)^2``: it cancels in every ratio here)."""
    return float(np.sum(_double_centre(k) * l.T))


def hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012)'s unbiased HSIC (see the module docstring); needs n >= 4.
    ``K``, ``L`` need not be symmetric (CKNNA's masked kernels are not)."""
    n = len(k)
    if n < 4:
        raise ValueError(f"the unbiased HSIC needs at least 4 items, got {n}")
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    trace = np.sum(kt * lt.T)
    sums = kt.sum() * lt.sum() / ((n - 1) * (n - 2))
    cross = 2.0 * float(kt.sum(0) @ lt.sum(1)) / (n - 2)  # 1^T K~ L~ 1
    return float((trace + sums - cross) / (n * (n - 3)))


def cka_from_grams(k: np.ndarray, l: np.ndarray, unbiased: bool = False) -> float:  # noqa: E741
    """Linear CKA from the two linear Gram matrices."""
    hsic = hsic_unbiased if unbiased else hsic_biased
    denominator = hsic(k, k) * hsic(l, l)
    if denominator <= 0:
        return math.nan
    return hsic(k, l) / math.sqrt(denominator)


def linear_cka(x: np.ndarray, y: np.ndarray, unbiased: bool = False) -> float:
    """Linear CKA between two spaces of the same items (any two dimensions)."""
    _check_pairs(x, y)
    return cka_from_grams(gram(x), gram(y), unbiased)


# ---- nearest neighbours ---------------------------------------------------------------


def knn_mask(similarity: np.ndarray, k: int) -> np.ndarray:
    """Boolean (n x n): row i marks the k most similar items to i, itself excluded;
    ties go to the lower index."""
    n = len(similarity)
    if not 1 <= k < n:
        raise ValueError(f"k must be in [1, n - 1] = [1, {n - 1}], got {k}")
    s = similarity.copy()
    np.fill_diagonal(s, -np.inf)
    nearest = np.argsort(-s, axis=1, kind="stable")[:, :k]
    mask = np.zeros((n, n), dtype=bool)
    np.put_along_axis(mask, nearest, True, axis=1)
    return mask


def mutual_knn_from_grams(k_text: np.ndarray, k_image: np.ndarray, k: int) -> float:
    """Mutual k-NN overlap from the two cosine Gram matrices."""
    both = knn_mask(k_text, k) & knn_mask(k_image, k)
    return float(both.sum(1).mean() / k)


def mutual_knn(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Mean share of each item's k nearest neighbours (cosine) that the two spaces share."""
    _check_pairs(x, y)
    return mutual_knn_from_grams(gram(x, True), gram(y, True), k)


def cknna_from_grams(k_text: np.ndarray, k_image: np.ndarray, k: int) -> float:
    """CKNNA from the two cosine Gram matrices (the authors' unbiased variant)."""
    mask_t, mask_i = knn_mask(k_text, k), knn_mask(k_image, k)
    mutual = mask_t & mask_i
    kl = hsic_unbiased(mutual * k_text, mutual * k_image)
    kk = hsic_unbiased(mask_t * k_text, mask_t * k_text)
    ll = hsic_unbiased(mask_i * k_image, mask_i * k_image)
    product = kk * ll
    return kl / (math.sqrt(product) + 1e-6) if product > 0 else math.nan


def cknna(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Centred kernel alignment over mutual k-nearest neighbours (Huh et al. 2024)."""
    _check_pairs(x, y)
    return cknna_from_grams(gram(x, True), gram(y, True), k)


def _check_pairs(x: np.ndarray, y: np.ndarray) -> None:
    if x.ndim != 2 or y.ndim != 2 or len(x) != len(y):
        raise ValueError(
            f"alignment needs two matrices with one row per item, got {x.shape} and {y.shape}"
        )


# ---- chance and intervals -------------------------------------------------------------


@dataclass(frozen=True)
class Grams:
    """The Gram matrices a sample needs: linear (CKA) and cosine (the k-NN measures)."""

    linear_text: np.ndarray
    linear_image: np.ndarray
    cosine_text: np.ndarray
    cosine_image: np.ndarray

    @classmethod
    def of(cls, text: np.ndarray, image: np.ndarray) -> Grams:
        return cls(gram(text), gram(image), gram(text, True), gram(image, True))

    def take(self, rows: np.ndarray, image_rows: np.ndarray | None = None) -> Grams:
        """The Grams of the items ``rows``, the image side taken at ``image_rows``
        (a shuffled pairing) when given: a sub-matrix, no recomputation."""
        j = rows if image_rows is None else image_rows
        return Grams(
            self.linear_text[np.ix_(rows, rows)],
            self.linear_image[np.ix_(j, j)],
            self.cosine_text[np.ix_(rows, rows)],
            self.cosine_image[np.ix_(j, j)],
        )


Measure = Callable[[Grams], float]


def measure_functions(k: int, unbiased: bool) -> dict[str, Measure]:
    """Each measure of :data:`MEASURES` as a function of a sample's :class:`Grams`."""
    return {
        "cka": lambda g: cka_from_grams(g.linear_text, g.linear_image, unbiased),
        "mutual_knn": lambda g: mutual_knn_from_grams(g.cosine_text, g.cosine_image, k),
        "cknna": lambda g: cknna_from_grams(g.cosine_text, g.cosine_image, k),
    }


def permutation_values(
    measure: Measure, grams: Grams, n_permutations: int, seed: int
) -> np.ndarray:
    """``measure`` with the pairing shuffled, once per seeded permutation."""
    rng = np.random.default_rng(seed)
    n = len(grams.linear_text)
    rows = np.arange(n)
    return np.array([measure(grams.take(rows, rng.permutation(n))) for _ in range(n_permutations)])


def _percentiles(values: list[float]) -> tuple[float, float]:
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def interval(
    name: str, grams: Grams, k: int, unbiased: bool, n_resamples: int, seed: int
) -> tuple[float, float]:
    """The 95% interval of measure ``name`` (see the module docstring): a bootstrap
    of the per-item overlaps, neighbourhoods fixed, for mutual k-NN; subsets of
    :data:`SUBSAMPLE_FRACTION` of the items (k scaled by the same fraction) for
    CKA and CKNNA. NaNs when ``n_resamples`` is 0."""
    if n_resamples == 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    n = len(grams.linear_text)
    if name == "mutual_knn":
        both = knn_mask(grams.cosine_text, k) & knn_mask(grams.cosine_image, k)
        per_item = both.sum(1) / k
        return _percentiles([per_item[rng.integers(0, n, n)].mean() for _ in range(n_resamples)])
    size = int(SUBSAMPLE_FRACTION * n)
    k_sub = max(1, round(SUBSAMPLE_FRACTION * k))
    if size < max(k_sub + 1, 4):
        return math.nan, math.nan
    values = []
    for _ in range(n_resamples):
        sub = grams.take(np.sort(rng.choice(n, size, replace=False)))
        values.append(
            cka_from_grams(sub.linear_text, sub.linear_image, unbiased)
            if name == "cka"
            else cknna_from_grams(sub.cosine_text, sub.cosine_image, k_sub)
        )
    return _percentiles(values)


# ---- the measures of one pair of spaces -------------------------------------------------


@dataclass(frozen=True)
class AlignmentOptions:
    """The ``alignment`` config (see the schema)."""

    sample: int = 1000
    k: int = 10
    permutations: int = 10
    bootstrap: int = 100
    unbiased: bool = True

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> AlignmentOptions:
        return cls(**{name: cfg[name] for name in cls.__dataclass_fields__})


def alignment_measures(
    text: np.ndarray, image: np.ndarray, opts: AlignmentOptions, seed: int
) -> dict[str, Any]:
    """Every measure on a seeded sample of ``min(sample, n)`` pairs, each with its
    interval and permutation baseline (JSON-ready)."""
    _check_pairs(text, image)
    n = len(text)
    rng = np.random.default_rng([seed, zlib.crc32(b"alignment")])
    rows = np.sort(rng.choice(n, min(opts.sample, n), replace=False))
    size = len(rows)
    out: dict[str, Any] = {
        "n_items": size,
        "k": opts.k,
        "dim_text": int(text.shape[1]),
        "dim_image": int(image.shape[1]),
        "unbiased": opts.unbiased,
        "interval": f"2.5-97.5th percentiles over {opts.bootstrap} resamples (see "
        "mmalign.alignment.interval)",
    }
    # The k-NN measures need k + 1 items, the unbiased HSIC 4 (a tiny dataset: n/a).
    min_items = max(opts.k + 1, 4)
    if size < min_items:
        out["note"] = f"n/a: {size} pairs; k = {opts.k} needs at least {min_items}"
        log.warning("%s", out["note"])
        return out | {name: None for name in MEASURES}
    grams = Grams.of(text[rows], image[rows])
    for number, (name, measure) in enumerate(measure_functions(opts.k, opts.unbiased).items()):
        value = measure(grams)
        chance = permutation_values(measure, grams, opts.permutations, seed + 1000 * number)
        low, high = interval(name, grams, opts.k, opts.unbiased, opts.bootstrap,
                             seed + 1000 * number + 1)  # fmt: skip
        std = float(np.std(chance, ddof=1)) if len(chance) > 1 else math.nan
        z = (value - float(np.mean(chance))) / std if std > 0 else None
        out[name] = {
            "value": _finite(value),
            "ci_low": _finite(low),
            "ci_high": _finite(high),
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


def alignment_job(
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

    opts = AlignmentOptions.from_config(cfg)
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
            spaces[space] = found = alignment_measures(text, image, opts, seed)
            log.info("%s (%d pairs): %s", space, found["n_items"], ", ".join(
                f"{m} {found[m]['value']:.3f} (chance {found[m]['chance_mean']:.3f})"
                for m in MEASURES if found[m] and found[m]["value"] is not None))  # fmt: skip
    summary = {**label, "spaces": spaces, "config": cfg}
    write_json(summary, out_json)
    return summary
