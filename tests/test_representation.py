"""Alignment measures against direct NumPy transcriptions and known cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from mmalign.representation import (
    Grams,
    RepresentationOptions,
    cknna,
    half_sample_subsets,
    hsic_unbiased,
    jackknife_intervals,
    knn_mask,
    linear_cka,
    measure_functions,
    mutual_knn,
    permutation_values,
    representation_measures,
)


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """tr(K H L H) / sqrt(tr(K H K H) tr(L H L H)) with an explicit centring matrix."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T  # noqa: E741
    hsic = lambda a, b: np.trace(a @ h @ b @ h) / (n - 1) ** 2  # noqa: E731
    return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def hsic_unbiased_reference(k: np.ndarray, l: np.ndarray) -> float:  # noqa: E741
    """Song et al. (2012), Theorem 2, term by term with explicit ones vectors."""
    n = len(k)
    kt, lt = k - np.diag(np.diag(k)), l - np.diag(np.diag(l))
    one = np.ones(n)
    return (
        np.trace(kt @ lt)
        + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * one @ kt @ lt @ one
    ) / (n * (n - 3))


def test_cka_equals_the_centring_matrix_formula_and_the_feature_form() -> None:
    x, y = rng().normal(size=(40, 5)), rng(1).normal(size=(40, 9))
    assert linear_cka(x, y) == pytest.approx(cka_reference(x, y), rel=1e-10)
    xc, yc = x - x.mean(0), y - y.mean(0)
    feature_form = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert linear_cka(x, y) == pytest.approx(feature_form, rel=1e-10)


def test_unbiased_hsic_equals_song_et_al() -> None:
    x, y = rng().normal(size=(25, 4)), rng(1).normal(size=(25, 6))
    k, l = x @ x.T, y @ y.T  # noqa: E741
    assert hsic_unbiased(k, l) == pytest.approx(hsic_unbiased_reference(k, l), rel=1e-10)
    masked = k * (rng(2).random((25, 25)) > 0.5)  # not symmetric, as in CKNNA
    assert hsic_unbiased(masked, l) == pytest.approx(hsic_unbiased_reference(masked, l), rel=1e-10)
    with pytest.raises(ValueError, match="at least 4"):
        hsic_unbiased(k[:3, :3], l[:3, :3])


@pytest.mark.parametrize("unbiased", [False, True])
def test_cka_is_one_under_rotation_and_isotropic_scaling(unbiased: bool) -> None:
    x = rng().normal(size=(60, 8))
    q, _ = np.linalg.qr(rng(1).normal(size=(8, 8)))
    assert linear_cka(x, x @ q, unbiased) == pytest.approx(1.0, abs=1e-10)
    assert linear_cka(x, 3.5 * x, unbiased) == pytest.approx(1.0, abs=1e-10)


def test_cka_of_independent_spaces_of_different_dimension() -> None:
    x, y = rng().normal(size=(500, 38)), rng(1).normal(size=(500, 128))
    assert abs(linear_cka(x, y, unbiased=True)) < 0.02
    # The plain estimator's known positive bias for wide random features (~ d / n).
    assert 0.05 < linear_cka(x, y) < 0.5


def test_mutual_knn_known_cases() -> None:
    x = rng().normal(size=(80, 6))
    q, _ = np.linalg.qr(rng(1).normal(size=(6, 6)))
    assert mutual_knn(x, 2.0 * x @ q, 5) == 1.0
    # Shuffled pairing: about k / (n - 1) by chance.
    chance = [mutual_knn(x, x[rng(s).permutation(80)], 5) for s in range(20)]
    assert np.mean(chance) == pytest.approx(5 / 79, abs=0.02)
    # By hand, unit vectors at angles 0, 0.1, 0.3, 1.0, 1.2 (cosine order = angle gaps).
    # k = 1 nearest in a: 0->1, 1->0, 2->1, 3->4, 4->3.
    angles = np.array([0.0, 0.1, 0.3, 1.0, 1.2])
    a = np.stack([np.cos(angles), np.sin(angles)], 1)
    # Items 3 and 4 swap angles: 3->4 and 4->3 still; all five kept.
    assert mutual_knn(a, a[[0, 1, 2, 4, 3]], 1) == 1.0
    # Items 0 and 2 swap angles (0 at 0.3, 2 at 0.0): 0->1, 1->2 (was 0), 2->1: 4 of 5 kept.
    assert mutual_knn(a, a[[2, 1, 0, 3, 4]], 1) == pytest.approx(4 / 5)


def cknna_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """A literal loop transcription of the authors' ``cknna`` (unbiased)."""

    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    kk, ll = unit(x) @ unit(x).T, unit(y) @ unit(y).T
    n = len(x)

    def mask(g: np.ndarray) -> np.ndarray:
        m = np.zeros((n, n))
        for i in range(n):
            others = sorted((j for j in range(n) if j != i), key=lambda j: (-g[i, j], j))
            for j in others[:k]:
                m[i, j] = 1.0
        return m

    def sim(a: np.ndarray, b: np.ndarray) -> float:
        m = mask(a) * mask(b)
        return hsic_unbiased_reference(m * a, m * b)

    return sim(kk, ll) / (np.sqrt(sim(kk, kk) * sim(ll, ll)) + 1e-6)


def test_cknna_against_a_literal_reference_and_known_cases() -> None:
    x, y = rng().normal(size=(30, 4)), rng(1).normal(size=(30, 7))
    noisy = np.hstack([x, x]) + 0.3 * rng(2).normal(size=(30, 8))
    for other in (y, noisy):
        assert cknna(x, other, 5) == pytest.approx(cknna_reference(x, other, 5), rel=1e-9)
    big = rng(3).normal(size=(300, 16))
    assert cknna(big, big, 10) == pytest.approx(1.0, abs=1e-3)  # 1e-6 in the denominator
    assert abs(cknna(big, rng(4).normal(size=(300, 40)), 10)) < 0.05


def test_baseline_and_measures_are_seeded_and_read_against_chance() -> None:
    text = rng().normal(size=(300, 24)).astype(np.float32)
    image = (text @ rng(1).normal(size=(24, 64)) + 0.5 * rng(2).normal(size=(300, 64))).astype(
        np.float32
    )
    measure = measure_functions(5, True)["mutual_knn"]
    grams = Grams.of(text, image)
    first = permutation_values(measure, grams, 5, seed=1)
    assert np.array_equal(first, permutation_values(measure, grams, 5, seed=1))
    assert not np.array_equal(first, permutation_values(measure, grams, 5, seed=2))
    opts = RepresentationOptions(sample=200, k=5, permutations=5, bootstrap=30)
    related = representation_measures(text, image, opts, seed=0)
    json.dumps(related, allow_nan=False)
    assert related == representation_measures(text, image, opts, seed=0)
    assert related["n_items"] == 200 and (related["dim_text"], related["dim_image"]) == (24, 64)
    tiny = representation_measures(text[:5], image[:5], opts, seed=0)
    assert tiny["note"].startswith("n/a: 5 pairs") and tiny["cka"] is None
    assert related["interval"].startswith("95% delete-d jackknife (Shao & Wu 1989) over 30 ")
    assert (
        "subsets of m = 100 of the n = 200 items without replacement (d = 100)"
        in (related["interval"])
    )
    unrelated = representation_measures(text, rng(5).normal(size=(300, 64)), opts, seed=0)
    for name in ("cka", "mutual_knn", "cknna"):
        m = related[name]
        assert m["ci_low"] < m["value"] < m["ci_high"], name
        assert m["ci_subsets"] == 30 and m["se"] > 0, name
        assert m["z"] > 10 and m["value"] > m["chance_mean"] + 0.2, name
        assert abs(unrelated[name]["z"]) < 4, name


def mutual_knn_reference(x: np.ndarray, y: np.ndarray, k: int) -> float:
    """Literal loops: each item's k nearest by cosine (ties to the lower index)."""

    def neighbours(a: np.ndarray) -> list[set[int]]:
        unit = a / np.linalg.norm(a, axis=1, keepdims=True)
        g = unit @ unit.T
        return [set(sorted((j for j in range(len(a)) if j != i), key=lambda j: (-g[i, j], j))[:k])
                for i in range(len(a))]  # fmt: skip

    return float(
        np.mean([len(a & b) / k for a, b in zip(neighbours(x), neighbours(y), strict=True)])
    )


def test_knn_mask_equals_a_stable_sort_with_ties_and_in_batches() -> None:
    """The partition-based mask against argsort(kind="stable"): ties (rounded values,
    duplicated items) go to the lower index, per matrix of a batch."""
    sims = np.round(rng().normal(size=(6, 30, 30)), 1)
    sims[:, :, 4] = sims[:, :, 9]  # items 4 and 9 equally similar to everyone
    for k in (1, 3, 10, 29):
        expected = np.zeros(sims.shape, dtype=bool)
        for b, s in enumerate(sims):
            s = s.copy()
            np.fill_diagonal(s, -np.inf)
            for i, row in enumerate(np.argsort(-s, axis=1, kind="stable")[:, :k]):
                expected[b, i, row] = True
        assert np.array_equal(knn_mask(sims, k), expected), k
        assert np.array_equal(knn_mask(sims[2], k), expected[2]), k


def test_half_samples_hold_each_item_at_most_once() -> None:
    subsets = half_sample_subsets(101, 50, seed=3)
    assert subsets.shape == (50, 51)  # m = n - floor(n / 2)
    assert all(len(set(row)) == 51 and np.all(np.diff(row) > 0) for row in subsets)
    assert np.array_equal(subsets, half_sample_subsets(101, 50, seed=3))
    assert len({tuple(row) for row in subsets}) == 50


def test_jackknife_equals_a_loop_over_the_subsets_with_reference_measures() -> None:
    """SE^2 = (m / d) var(subset values), value -/+ t(0.975, S - 1) SE, each subset's
    value from the literal references (explicit centring matrix, loops)."""
    n, k, subsets = 31, 4, 12
    x = rng().normal(size=(n, 5))
    y = x @ rng(1).normal(size=(5, 7)) + 0.8 * rng(2).normal(size=(n, 7))
    found = jackknife_intervals(Grams.of(x, y), k, False, subsets, seed=7)
    references = {"cka": lambda a, b: cka_reference(a, b),
                  "mutual_knn": lambda a, b: mutual_knn_reference(a, b, k),
                  "cknna": lambda a, b: cknna_reference(a, b, k)}  # fmt: skip
    m, d = 16, 15
    for name, reference in references.items():
        values = [reference(x[r], y[r]) for r in half_sample_subsets(n, subsets, seed=7)]
        se = np.sqrt(m / d * np.var(values, ddof=1))
        half = stats.t.ppf(0.975, subsets - 1) * se
        value = reference(x, y)
        jk = found[name]
        assert (jk.value, jk.se, jk.subsets) == pytest.approx((value, se, subsets), rel=1e-8)
        assert (jk.low, jk.high) == pytest.approx((value - half, value + half), rel=1e-8)
    assert np.isnan(jackknife_intervals(Grams.of(x, y), 20, True, subsets, 7)["cknna"].se)
    assert np.isnan(jackknife_intervals(Grams.of(x, y), k, True, 1, 7)["cka"].low)


def test_permutation_values_equal_one_reference_per_permutation() -> None:
    x, y = rng().normal(size=(40, 6)), rng(1).normal(size=(40, 9))
    grams = Grams.of(x, y)
    perms = np.random.default_rng(4)
    expected = [cka_reference(x, y[perms.permutation(40)]) for _ in range(5)]
    found = permutation_values(measure_functions(5, False)["cka"], grams, 5, seed=4)
    assert found == pytest.approx(expected, rel=1e-9)
    perms = np.random.default_rng(4)
    expected = [mutual_knn_reference(x, y[perms.permutation(40)], 5) for _ in range(5)]
    found = permutation_values(measure_functions(5, False)["mutual_knn"], grams, 5, seed=4)
    assert found == pytest.approx(expected, rel=1e-12)
