"""Retrieval engine and measures against brute-force NumPy/SciPy references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist

from mmalign.embed import Embeddings
from mmalign.metrics import Scorer, neg_chi2, neg_manhattan
from mmalign.retrieval import (
    RetrievalOptions,
    Task,
    bootstrap,
    build_protocol,
    measures_per_query,
    relevant_ranks,
    score_protocol,
    topk,
    topk_both_directions,
)


def reference_scores(q: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """Scores straight from the definitions, in float64."""
    q, g = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        return 1 - cdist(q, g, "cosine")
    if metric == "euclidean":
        return -cdist(q, g, "euclidean")
    if metric == "manhattan":
        return -cdist(q, g, "cityblock")
    den = q[:, None, :] + g[None, :, :]
    den[den == 0] = 1e-12
    return -0.5 * (((q[:, None, :] - g[None, :, :]) ** 2) / den).sum(-1)


def reference_ranks(scores: np.ndarray, rel_ptr: np.ndarray, rel_idx: np.ndarray) -> np.ndarray:
    """Rank by a stable sort: score descending, ties by lower index."""
    ranks = np.empty(len(rel_idx), dtype=np.int64)
    for i in range(len(rel_ptr) - 1):
        order = np.argsort(-scores[i], kind="stable")
        position = np.empty_like(order)
        position[order] = np.arange(1, len(order) + 1)
        for j in range(rel_ptr[i], rel_ptr[i + 1]):
            ranks[j] = position[rel_idx[j]]
    return ranks


def noisy_pairs(n: int, d: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, d)).astype(np.float32)
    return q, (q + noise * rng.normal(size=(n, d))).astype(np.float32)


@pytest.mark.parametrize("metric", ["cosine", "euclidean", "manhattan", "chi2"])
@pytest.mark.parametrize("block_mb", [0.001, 256])  # one row per block, or all at once
def test_ranks_equal_brute_force(metric: str, block_mb: float) -> None:
    q, g = noisy_pairs(60, 16, noise=1.0, seed=1)
    task = Task.one_to_one(q, g)
    ranks = relevant_ranks(Scorer(metric, torch.from_numpy(g)), task, block_mb)
    expected = reference_ranks(reference_scores(q, g, metric), task.rel_ptr, task.rel_idx)
    np.testing.assert_array_equal(ranks, expected)
    assert 1 < ranks.max() <= 60  # a non-trivial ranking


def test_kernels_match_scipy() -> None:
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(7, 33)).astype(np.float32), rng.normal(size=(5, 33)).astype(np.float32)
    np.testing.assert_allclose(neg_manhattan(q, g), reference_scores(q, g, "manhattan"), rtol=1e-5)
    np.testing.assert_allclose(neg_chi2(q, g), reference_scores(q, g, "chi2"), rtol=1e-3, atol=1e-3)
    # Chi-square as written: a zero denominator uses the epsilon, not a NaN.
    zero = np.zeros((1, 3), dtype=np.float32)
    assert neg_chi2(zero, zero)[0, 0] == 0.0
    assert np.isfinite(
        neg_chi2(np.array([[1.0, -1.0]], np.float32), np.array([[-1.0, 1.0]], np.float32))
    ).all()


def test_ties_are_broken_by_lower_index() -> None:
    g = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    q = np.array([[1.0, 0.0]] * 3, dtype=np.float32)
    # Query i's relevant item is gallery row i; rows 0, 1 and 3 are identical.
    task = Task(q, g, np.arange(4), np.array([0, 1, 3]))
    ranks = relevant_ranks(Scorer("cosine", torch.from_numpy(g)), task)
    assert ranks.tolist() == [1, 2, 3]
    _, indices = topk(Scorer("cosine", torch.from_numpy(g)), q[:1], k=2)
    assert indices.tolist() == [[0, 1]]
    _, indices = topk(Scorer("cosine", torch.from_numpy(g)), q[:1], k=10)  # K > gallery
    assert indices.tolist() == [[0, 1, 3, 2]]


def test_identical_spaces_retrieve_perfectly() -> None:
    x = np.random.default_rng(3).normal(size=(50, 8)).astype(np.float32)
    for metric in ("cosine", "euclidean", "manhattan"):
        ranks = relevant_ranks(Scorer(metric, torch.from_numpy(x)), Task.one_to_one(x, x))
        assert (ranks == 1).all(), metric


def test_hand_computed_measures_one_vs_five_relevant() -> None:
    # Query 0: one relevant item at rank 3. Query 1: five relevant at 1, 2, 4, 8, 20.
    rel_ptr = np.array([0, 1, 6])
    ranks = np.array([3, 1, 2, 4, 8, 20])
    m = measures_per_query(ranks, rel_ptr, [1, 5, 10])
    assert m["hit@1"].tolist() == [0.0, 1.0]
    assert m["hit@5"].tolist() == [1.0, 1.0]
    assert m["precision@5"].tolist() == [1 / 5, 3 / 5]
    assert m["precision@10"].tolist() == [1 / 10, 4 / 10]
    assert m["recall@5"].tolist() == [1.0, 3 / 5]
    assert m["recall@10"].tolist() == [1.0, 4 / 5]
    assert m["mrr"].tolist() == [1 / 3, 1.0]
    assert m["median_rank"].tolist() == [3.0, 1.0]
    dcg = 1 + 1 / np.log2(3) + 1 / np.log2(5) + 1 / np.log2(9)
    idcg = sum(1 / np.log2(i + 1) for i in range(1, 6))
    np.testing.assert_allclose(m["ndcg@10"], [1 / np.log2(4), dcg / idcg])


def test_appendix_a_upper_bounds_fall_out_of_the_code() -> None:
    """A perfect ranking on 5-caption data: i2t precision@K = min(1, 5/K), t2i 1/K."""
    ks = [1, 2, 5, 6, 10]
    i2t = measures_per_query(np.array([1, 2, 3, 4, 5]), np.array([0, 5]), ks)
    t2i = measures_per_query(np.array([1]), np.array([0, 1]), ks)
    for k in ks:
        assert i2t[f"precision@{k}"][0] == pytest.approx(min(1.0, 5 / k))
        assert t2i[f"precision@{k}"][0] == pytest.approx(1 / k)


def test_bootstrap_interval_against_a_direct_resampling() -> None:
    values = {"hit@1": np.random.default_rng(4).integers(0, 2, 300).astype(float)}
    est, low, high = bootstrap(values, 2000, seed=0)["hit@1"]
    assert est == values["hit@1"].mean()
    rng = np.random.default_rng(1)
    means = [values["hit@1"][rng.integers(0, 300, 300)].mean() for _ in range(2000)]
    ref_low, ref_high = np.percentile(means, [2.5, 97.5])
    assert abs(low - ref_low) < 0.015 and abs(high - ref_high) < 0.015
    assert bootstrap(values, 2000, 0) == bootstrap(values, 2000, 0)  # seeded


def test_topk_both_directions_equals_two_searches() -> None:
    q, g = noisy_pairs(70, 12, noise=2.0, seed=5)
    for metric in ("cosine", "euclidean", "manhattan"):
        (rv, ri), (cv, ci) = topk_both_directions(
            Scorer(metric, torch.from_numpy(g)), q, k=5, block_mb=0.002
        )
        ref = reference_scores(q, g, metric)
        np.testing.assert_array_equal(ri, np.argsort(-ref, axis=1, kind="stable")[:, :5])
        np.testing.assert_array_equal(ci, np.argsort(-ref.T, axis=1, kind="stable")[:, :5])
        np.testing.assert_allclose(rv, np.sort(ref, axis=1)[:, ::-1][:, :5], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(cv, np.sort(ref.T, axis=1)[:, ::-1][:, :5], rtol=1e-4, atol=1e-4)


def embeddings(n_images: int, captions: int, d: int = 8, noise: float = 0.05) -> Embeddings:
    rng = np.random.default_rng(6)
    image = rng.normal(size=(n_images, d)).astype(np.float32)
    image_row = np.repeat(np.arange(n_images), captions)
    text = (image[image_row] + noise * rng.normal(size=(len(image_row), d))).astype(np.float32)
    split = np.where(np.arange(n_images) % 5 == 0, "test", "train")
    ids = np.array([f"im{i}" for i in range(n_images)])
    texts = pd.DataFrame({
        "image_id": ids[image_row], "caption_idx": np.tile(np.arange(captions), n_images),
        "split": split[image_row], "eval_split": split[image_row], "image_row": image_row,
    })  # fmt: skip
    images = pd.DataFrame({"image_id": ids, "split": split, "eval_split": split})
    return Embeddings(image, text, images, texts, {})


def test_multicaption_protocol_on_a_flickr_like_split() -> None:
    emb = embeddings(40, captions=5)
    opts = RetrievalOptions(bootstrap=0, metrics=("cosine",))
    protocol = build_protocol(emb, "multicaption", opts)
    assert protocol.t2i.n_queries == 40 and protocol.i2t.n_queries == 8  # 8 test images x 5
    assert np.diff(protocol.i2t.rel_ptr).tolist() == [5] * 8
    frame = score_protocol(emb, "multicaption", opts, "flickr", "toy").set_index(
        ["direction", "measure", "k"]
    )
    # Near-identical captions: everything relevant comes first.
    assert frame.loc[("i2t", "precision", 5), "value"] == 1.0
    assert frame.loc[("i2t", "precision", 10), "value"] == 0.5
    assert frame.loc[("t2i", "precision", 5), "value"] == pytest.approx(0.2)
    assert frame.loc[("t2i", "hit", 1), "value"] == 1.0


def test_subset_is_seeded_and_mismatch_is_not_a_crash() -> None:
    emb = embeddings(60, captions=1)
    a = build_protocol(emb, "subset", RetrievalOptions(subset_size=10, seed=1))
    b = build_protocol(emb, "subset", RetrievalOptions(subset_size=10, seed=1))
    c = build_protocol(emb, "subset", RetrievalOptions(subset_size=10, seed=2))
    assert a.image_rows.tolist() == b.image_rows.tolist() != c.image_rows.tolist()
    wide = Embeddings(np.hstack([emb.image, emb.image]), emb.text, emb.images, emb.texts, {})
    frame = score_protocol(wide, "full", RetrievalOptions(bootstrap=0), "d", "e")
    assert frame["value"].isna().all()
    assert frame["note"].str.contains("16-d vs text 8-d").all()


def test_calibrated_cosines() -> None:
    emb = embeddings(60, captions=1, noise=0.5)
    # A shared offset makes every pair look similar; centring removes it.
    shifted = Embeddings(emb.image + 5, emb.text + 5, emb.images, emb.texts, {})
    opts = RetrievalOptions(bootstrap=0, subset_size=20)  # the other 40 feed the query bank
    frame = score_protocol(shifted, "subset", opts, "d", "e").set_index(
        ["direction", "metric", "measure", "k"]
    )
    for metric in ("cosine", "centered_cosine", "csls", "qbnorm"):
        assert frame.loc[("t2i", metric, "hit", 10), "value"] > 0.5, metric
    centred_t = shifted.text - shifted.text.mean(0)
    centred_i = shifted.image - shifted.image.mean(0)
    cos = 1 - cdist(centred_t, centred_i, "cosine")
    assert cos[~np.eye(60, dtype=bool)].mean() < 0  # non-matching pairs: negative on average
    raw = 1 - cdist(shifted.text, shifted.image, "cosine")
    assert raw[~np.eye(60, dtype=bool)].mean() > 0.9


def lexsort_topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Each row's k best columns: value descending, lower index first among ties."""
    columns = np.arange(scores.shape[1])
    return np.array([np.lexsort((columns, -row))[:k] for row in scores])


@pytest.mark.parametrize("k", [1, 3, 10, 40])
def test_block_topk_engines_break_ties_by_index(k: int) -> None:
    """The numba kernels (CPU) and the torch ops (any device) give the lexsort top-k
    on scores with many exact ties, row by row and, across blocks, column by column."""
    from mmalign.retrieval import _block_topk, _columns_topk, _cpu_block_topk, _merge_columns

    rng = np.random.default_rng(k)
    scores = rng.integers(-3, 4, size=(23, 31)).astype(np.float32)  # 7 values: ties everywhere
    top = min(k, 31)
    for values, indices in (_cpu_block_topk(torch.from_numpy(scores), k),
                            _block_topk(torch.from_numpy(scores), k, 0)):  # fmt: skip
        np.testing.assert_array_equal(indices.numpy(), lexsort_topk(scores, top))
        np.testing.assert_array_equal(values.numpy(), -np.sort(-scores, axis=1)[:, :top])
    expected = lexsort_topk(scores.T, min(k, 23))
    cv = np.full((31, min(k, 23)), -np.inf, dtype=np.float32)
    ci = np.full((31, min(k, 23)), -1, dtype=np.int64)
    tv, ti = torch.full((31, 0), -torch.inf), torch.empty((31, 0), dtype=torch.long)
    for start in range(0, 23, 5):  # blocks of 5 query rows
        block = scores[start : start + 5]
        _columns_topk(block, start, cv, ci)
        tv, ti = _merge_columns(torch.from_numpy(block), k, start, tv, ti)
    np.testing.assert_array_equal(ci, expected)
    np.testing.assert_array_equal(ti.numpy(), expected)
    np.testing.assert_array_equal(cv, tv.numpy())
