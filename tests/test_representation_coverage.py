"""Coverage of the alignment measures' 95% intervals, by simulation against a known truth.

The model: a 4-d Gaussian latent ``z``, ``x = A z + s_x e`` (16-d) and
``y = B z + s_y e'`` (24-d) with independent standard normal noise, so
``S_xx = A A^T + s_x^2 I``, ``S_yy = B B^T + s_y^2 I``, ``S_xy = A B^T`` and the
population linear CKA is ``||S_xy||_F^2 / (||S_xx||_F ||S_yy||_F)``.
Mutual k-NN and CKNNA have no population value; their truth is the Monte-Carlo
mean of the estimator over independent samples of the same size (what the
module docstring says their interval covers).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from mmalign.layout import SIMILARITY_MEASURES
from mmalign.representation import Grams, evaluate, jackknife_intervals

SUBSETS = 100  # the config default (alignment.bootstrap)


@dataclass(frozen=True)
class LatentModel:
    """``x = A z + noise_x e``, ``y = B z + noise_y e'`` with ``z`` ~ N(0, I)."""

    a: np.ndarray  # dim_x x latent
    b: np.ndarray  # dim_y x latent
    noise_x: float
    noise_y: float

    @classmethod
    def seeded(cls, seed: int, noise: float) -> LatentModel:
        """The 4-d latent, 16-d x and 24-d y of the module docstring."""
        rng = np.random.default_rng(seed)
        return cls(rng.normal(size=(16, 4)), rng.normal(size=(24, 4)), noise, 1.5 * noise)

    def draw(self, rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
        """``shape`` = (n,) for one sample or (T, n) for T of them."""
        (dim_x, latent), dim_y = self.a.shape, len(self.b)
        z = rng.normal(size=(*shape, latent))
        x = z @ self.a.T + self.noise_x * rng.normal(size=(*shape, dim_x))
        y = z @ self.b.T + self.noise_y * rng.normal(size=(*shape, dim_y))
        return x, y

    def population_cka(self) -> float:
        """``||S_xy||_F^2 / (||S_xx||_F ||S_yy||_F)`` from the model's covariances."""
        sxx = self.a @ self.a.T + self.noise_x**2 * np.eye(len(self.a))
        syy = self.b @ self.b.T + self.noise_y**2 * np.eye(len(self.b))
        sxy = self.a @ self.b.T
        return float(np.linalg.norm(sxy) ** 2 / (np.linalg.norm(sxx) * np.linalg.norm(syy)))


def batch_grams(x: np.ndarray, y: np.ndarray) -> Grams:
    """Grams of a batch of samples (T x n x d), as ``Grams.of`` builds one."""
    unit_x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    unit_y = y / np.linalg.norm(y, axis=-1, keepdims=True)
    t = lambda a: np.swapaxes(a, -1, -2)  # noqa: E731
    return Grams(x @ t(x), y @ t(y), unit_x @ t(unit_x), unit_y @ t(unit_y))


def monte_carlo(model: LatentModel, n: int, k: int, draws: int, unbiased: bool, seed: int
                ) -> dict[str, np.ndarray]:  # fmt: skip
    """Each measure on ``draws`` independent samples of ``n`` pairs."""
    rng = np.random.default_rng(seed)
    found: dict[str, list[np.ndarray]] = {name: [] for name in SIMILARITY_MEASURES}
    for _ in range(draws // 50):
        for name, values in evaluate(batch_grams(*model.draw(rng, (50, n))), k, unbiased).items():
            found[name].append(values)
    return {name: np.concatenate(v) for name, v in found.items()}


def test_the_analytic_population_cka_matches_a_large_sample() -> None:
    """The truth of the coverage test, checked by the feature form on 200,000 pairs."""
    model = LatentModel.seeded(0, 1.0)
    x, y = model.draw(np.random.default_rng(1), (200_000,))
    xc, yc = x - x.mean(0), y - y.mean(0)
    estimate = np.linalg.norm(yc.T @ xc) ** 2 / (
        np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    )
    assert estimate == pytest.approx(model.population_cka(), abs=0.005)


def test_cka_interval_covers_the_population_cka() -> None:
    """150 datasets of 200 pairs: the unbiased CKA's 95% interval covers the analytic
    value in at least 90% of them (measured: 0.947). The previous scheme (2.5-97.5th
    percentiles of 80% subsets, unrescaled) covered 0.647 on these same datasets."""
    model = LatentModel.seeded(0, 1.0)
    truth = model.population_cka()
    rng = np.random.default_rng(2)
    found = []
    for dataset in range(150):
        x, y = model.draw(rng, (200,))
        found.append(
            jackknife_intervals(Grams.of(x, y), 10, True, SUBSETS, dataset, ["cka"])["cka"]
        )
    value = np.array([f.value for f in found])
    low, high = np.array([f.low for f in found]), np.array([f.high for f in found])
    assert np.all(low < value) and np.all(value < high)
    coverage = np.mean((low <= truth) & (truth <= high))
    assert coverage >= 0.90
    # Calibrated, not merely wide: the standard errors match the spread of the
    # estimates over the datasets, and intervals half as wide (the old scheme's
    # unrescaled spread was sqrt(0.2 / 0.8) = 1/2 of the right one) fail.
    se = np.array([f.se for f in found])
    assert 0.8 < np.mean(se) / np.std(value, ddof=1) < 1.3
    half = np.mean(np.abs(value - truth) <= (high - low) / 4)
    assert half < 0.80


def test_biased_cka_interval_covers_its_expectation_not_the_population_cka() -> None:
    """The plain estimator's interval is centred on a biased value: on wide noisy
    features (64-d and 96-d noise on a 4-d latent, 150 pairs) it misses the
    population value (measured: covers it 0.05) and covers the estimator's own
    expectation at this n (Monte Carlo over 400 draws) only roughly (measured:
    0.90; 0.89 over 400 datasets), as the module docstring says."""
    rng = np.random.default_rng(3)
    wide = LatentModel(
        np.vstack([rng.normal(size=(16, 4)), np.zeros((48, 4))]),
        np.vstack([rng.normal(size=(24, 4)), np.zeros((72, 4))]),
        1.5,
        2.0,
    )
    population = wide.population_cka()
    n = 150
    draws = [batch_grams(*wide.draw(rng, (50, n))) for _ in range(8)]
    expectation = np.mean([evaluate(g, 10, False, ["cka"])["cka"] for g in draws])
    assert expectation > population + 0.05  # the bias the interval does not remove
    covers_expectation, covers_population = [], []
    for dataset in range(100):
        x, y = wide.draw(rng, (n,))
        jk = jackknife_intervals(Grams.of(x, y), 10, False, SUBSETS, dataset, ["cka"])["cka"]
        covers_expectation.append(jk.low <= expectation <= jk.high)
        covers_population.append(jk.low <= population <= jk.high)
    assert np.mean(covers_expectation) >= 0.85
    assert np.mean(covers_population) < 0.2


@pytest.fixture(scope="module")
def knn_simulation() -> dict[str, dict[str, np.ndarray]]:
    """100 datasets of 150 pairs, k = 10 (the default): each k-NN measure's
    intervals and the Monte-Carlo truth E[theta_{150,10}] from 400 more draws."""
    model, n, k = LatentModel.seeded(0, 1.0), 150, 10
    truth = monte_carlo(model, n, k, 400, True, seed=4)
    rng = np.random.default_rng(5)
    rows: dict[str, list[tuple[float, float, float]]] = {"mutual_knn": [], "cknna": []}
    for dataset in range(100):
        x, y = model.draw(rng, (n,))
        grams = Grams.of(x, y)
        for name, jk in jackknife_intervals(grams, k, True, SUBSETS, dataset, list(rows)).items():
            rows[name].append((jk.value, jk.low, jk.high))
    return {name: {"intervals": np.array(v), "draws": truth[name]} for name, v in rows.items()}


@pytest.mark.parametrize("name", ["mutual_knn", "cknna"])
def test_knn_intervals_cover_the_expectation_at_this_n_and_k(
    knn_simulation: dict[str, dict[str, np.ndarray]], name: str
) -> None:
    """Coverage of E[theta_{n,k}] at least 0.90 (measured: mutual k-NN 0.96,
    CKNNA 0.95); the intervals are conservative (1.18 and 1.12 times as wide as
    the Monte-Carlo 95% range) but not vacuous (under twice). On these datasets
    the previous intervals covered 0.77 (mutual k-NN: a bootstrap of per-item
    overlaps, neighbourhoods fixed) and 0.80 (CKNNA: 80% subsets)."""
    sim = knn_simulation[name]
    truth = float(np.mean(sim["draws"]))
    value, low, high = sim["intervals"].T
    assert np.all(low < value) and np.all(value < high)
    assert np.mean((low <= truth) & (truth <= high)) >= 0.90
    monte_carlo_width = np.diff(np.percentile(sim["draws"], [2.5, 97.5]))[0]
    assert 1.0 < np.mean(high - low) / monte_carlo_width < 2.0
