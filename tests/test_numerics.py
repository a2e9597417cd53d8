"""Numerics: Euclidean ranking stays exact when the embeddings sit in a narrow cone
(a common offset far larger than their spread), checked against float64 SciPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mmalign.metrics import Scorer
from mmalign.retrieval import Task, relevant_ranks, topk, topk_both_directions


def narrow_cone(
    n: int, d: int, offset: float, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Gallery rows ``offset * (1 + 0.1 z) + N(0, 1)`` (one offset vector, per-coordinate
    spread 1) and queries ``gallery + noise * N(0, 1)``, both float32."""
    rng = np.random.default_rng(seed)
    centre = offset * (1.0 + 0.1 * rng.normal(size=d))
    gallery = (centre + rng.normal(size=(n, d))).astype(np.float32)
    queries = (gallery + noise * rng.normal(size=(n, d))).astype(np.float32)
    return queries, gallery


def float64_ranks(distances: np.ndarray) -> np.ndarray:
    """1-based rank of gallery item i for query i: ascending distance, ties by lower index."""
    order = np.argsort(distances, axis=1, kind="stable")
    return 1 + np.argmax(order == np.arange(len(distances))[:, None], axis=1)


@pytest.fixture(scope="module")
def cone() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Offset/spread 1000 in 768-d; noise 5 keeps the task non-trivial (float64 hit@1 < 1).
    q, g = narrow_cone(1000, 768, offset=1000.0, noise=5.0)
    return q, g, cdist(q.astype(np.float64), g.astype(np.float64))


def test_the_cone_defeats_the_uncentred_float32_expansion(
    cone: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """The test data has teeth: 2 <q, g> - |g|^2 - |q|^2 in float32 (NumPy) loses
    the top-1 for several percent of the queries."""
    q, g, exact = cone
    naive = 2 * q @ g.T - (g * g).sum(1)[None, :] - (q * q).sum(1)[:, None]
    disagree = float(np.mean(naive.argmax(1) != exact.argmin(1)))
    assert disagree > 0.02, disagree


def test_euclidean_ranks_in_a_narrow_cone_equal_float64(
    cone: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    q, g, exact = cone
    scorer = Scorer("euclidean", torch.from_numpy(g))
    expected = float64_ranks(exact)
    assert 0.9 < np.mean(expected == 1) < 1.0  # non-trivial in float64 too
    task = Task.one_to_one(q, g)
    for block_mb in (0.5, 256):  # several blocks, or one
        np.testing.assert_array_equal(relevant_ranks(scorer, task, block_mb), expected)
    values, indices = topk(scorer, q, k=3)
    np.testing.assert_array_equal(indices, np.argsort(exact, axis=1, kind="stable")[:, :3])
    # The reported values are the true distances to float32 precision.
    picked = np.take_along_axis(exact, indices, axis=1)
    np.testing.assert_allclose(-values, picked, rtol=2e-6)


def test_both_directions_in_a_narrow_cone_equal_float64() -> None:
    q, g = narrow_cone(300, 768, offset=1000.0, noise=5.0, seed=1)
    exact = cdist(q.astype(np.float64), g.astype(np.float64))
    (rv, ri), (cv, ci) = topk_both_directions(Scorer("euclidean", torch.from_numpy(g)), q, k=2)
    np.testing.assert_array_equal(ri, np.argsort(exact, axis=1, kind="stable")[:, :2])
    np.testing.assert_array_equal(ci, np.argsort(exact.T, axis=1, kind="stable")[:, :2])
    np.testing.assert_allclose(-rv, np.sort(exact, axis=1)[:, :2], rtol=2e-6)
    np.testing.assert_allclose(-cv, np.sort(exact.T, axis=1)[:, :2], rtol=2e-6)


def test_euclidean_values_are_exact_near_the_origin_and_far_from_it() -> None:
    q, g = narrow_cone(50, 32, offset=0.0, noise=1.0, seed=2)
    shift = np.float32(3000.0)
    out = torch.empty(50, 50)
    for qs, gs in ((q, g), (q + shift, g + shift)):
        scorer = Scorer("euclidean", torch.from_numpy(gs))
        values = scorer.values(scorer.block(torch.from_numpy(qs), out)).numpy()
        reference = -cdist(qs.astype(np.float64), gs.astype(np.float64))
        np.testing.assert_allclose(values, reference, rtol=2e-6)
        np.testing.assert_array_equal(values.argmax(1), reference.argmax(1))
