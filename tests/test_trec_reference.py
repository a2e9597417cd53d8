"""Retrieval measures against trec_eval (through pytrec_eval), on seeded random runs.

The ranks that ``measures_per_query`` scores come from the project's own
ranking path (``score_task`` with the cosine metric, i.e. ``relevant_ranks``
over a ``Scorer`` block), and pytrec_eval is handed the very score matrix that
path ranks by: the same ``Scorer.block`` over all queries at once (one block,
as ``relevant_ranks`` does at the default ``block_mb``).

trec_eval sorts a run by score descending and breaks ties by docid in reverse
lexical order, while the project breaks them by lower gallery index; the
scores here are continuous (and checked to be tie-free), so nothing depends on
either rule.
"""

from __future__ import annotations

import numpy as np
import pytest
import pytrec_eval
import torch

from mmalign.metrics import Scorer
from mmalign.retrieval import (
    RetrievalOptions,
    Task,
    bootstrap,
    measures_per_query,
    score_task,
)

KS = [1, 5, 10]
# Project measure -> trec_eval measure (binary relevance).
MEASURE_MAP = {
    **{f"hit@{k}": f"success_{k}" for k in KS},
    **{f"precision@{k}": f"P_{k}" for k in KS},
    **{f"recall@{k}": f"recall_{k}" for k in KS},
    "ndcg@10": "ndcg_cut_10",
    "mrr": "recip_rank",
}
TREC_MEASURES = {"success.1,5,10", "P.1,5,10", "recall.1,5,10", "ndcg_cut.10", "recip_rank"}
REL = 1e-9

# (seed, queries, gallery size): even and odd numbers of queries, so the median
# over queries is taken both ways (case 0's is 2.5, between its middle ranks 2 and 3).
CASES = [(0, 20, 50), (1, 31, 97), (2, 40, 150), (3, 17, 200)]


def random_task(seed: int, n_queries: int, n_gallery: int, dim: int = 16) -> Task:
    """Queries near the mean of 1-5 random relevant gallery items, with noise
    that varies per query, so first relevant ranks run from 1 to well past 10."""
    rng = np.random.default_rng(seed)
    gallery = rng.normal(size=(n_gallery, dim))
    counts = rng.integers(1, 6, n_queries)
    rel_idx = np.concatenate([rng.choice(n_gallery, c, replace=False) for c in counts])
    rel_ptr = np.concatenate([[0], np.cumsum(counts)])
    noise = rng.uniform(0.0, 3.0, n_queries)
    queries = np.stack([
        gallery[rel_idx[rel_ptr[i] : rel_ptr[i + 1]]].mean(0) + noise[i] * rng.normal(size=dim)
        for i in range(n_queries)
    ])  # fmt: skip
    return Task(queries.astype(np.float32), gallery.astype(np.float32), rel_ptr, rel_idx)


def perfect_task(seed: int = 7, n_queries: int = 12, n_gallery: int = 60) -> Task:
    """Gallery item j is close to axis e_j; query i weighs its relevant axes by
    distinct weights in [1, 2], so every relevant item outscores every other one."""
    rng = np.random.default_rng(seed)
    gallery = np.eye(n_gallery) + 1e-3 * rng.normal(size=(n_gallery, n_gallery))
    counts = rng.integers(1, 6, n_queries)
    rel_idx = np.concatenate([rng.choice(n_gallery, c, replace=False) for c in counts])
    rel_ptr = np.concatenate([[0], np.cumsum(counts)])
    queries = 1e-3 * rng.normal(size=(n_queries, n_gallery))
    for i in range(n_queries):
        rel = rel_idx[rel_ptr[i] : rel_ptr[i + 1]]
        queries[i, rel] += rng.uniform(1.0, 2.0, len(rel))
    return Task(queries.astype(np.float32), gallery.astype(np.float32), rel_ptr, rel_idx)


def score_matrix(task: Task) -> np.ndarray:
    """The cosine scores that ``relevant_ranks`` ranks by, from the same Scorer call."""
    scorer = Scorer("cosine", torch.from_numpy(task.gallery))
    out = torch.empty(task.n_queries, len(task.gallery))
    return scorer.block(torch.from_numpy(task.queries), out).numpy().copy()


def project_measures(task: Task) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    ranks = score_task(task, "cosine", None, RetrievalOptions())
    return ranks, measures_per_query(ranks, task.rel_ptr, KS)


def qid(i: int) -> str:
    return f"q{i:04d}"


def docid(j: int) -> str:
    return f"d{j:04d}"


def trec_eval(task: Task, scores: np.ndarray) -> dict[str, dict[str, float]]:
    """pytrec_eval's per-query measures; every gallery item is in the run."""
    qrels = {
        qid(i): {docid(j): 1 for j in task.rel_idx[task.rel_ptr[i] : task.rel_ptr[i + 1]]}
        for i in range(task.n_queries)
    }
    run = {
        qid(i): {docid(j): float(scores[i, j]) for j in range(scores.shape[1])}
        for i in range(task.n_queries)
    }
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, TREC_MEASURES)
    return evaluator.evaluate(run)


def assert_no_ties(scores: np.ndarray) -> None:
    for row in scores:
        assert len(np.unique(row)) == len(row), "tied scores: trec_eval's tie rule would matter"


def all_tasks() -> list[tuple[str, Task]]:
    return [(f"random{seed}", random_task(seed, nq, ng)) for seed, nq, ng in CASES] + [
        ("perfect", perfect_task())
    ]


TASKS = all_tasks()
TASK_IDS = [name for name, _ in TASKS]


def test_trec_measure_names_are_supported() -> None:
    for name in TREC_MEASURES:
        assert name.partition(".")[0] in pytrec_eval.supported_measures


@pytest.mark.parametrize(("name", "task"), TASKS, ids=TASK_IDS)
def test_ranks_come_from_the_score_matrix(name: str, task: Task) -> None:
    """The project's ranks are those of the matrix handed to trec_eval."""
    scores = score_matrix(task)
    assert_no_ties(scores)
    ranks, _ = project_measures(task)
    position = np.argsort(np.argsort(-scores, axis=1, kind="stable"), axis=1) + 1
    qid_of = np.repeat(np.arange(task.n_queries), np.diff(task.rel_ptr))
    np.testing.assert_array_equal(ranks, position[qid_of, task.rel_idx])


def test_random_runs_cover_the_interesting_ranks() -> None:
    """The random cases reach both ndcg@10 = 0 / hit@10 = 0 and rank 1."""
    firsts = []
    for _, task in TASKS[:-1]:
        ranks, _ = project_measures(task)
        first = np.full(task.n_queries, np.iinfo(np.int64).max)
        np.minimum.at(first, np.repeat(np.arange(task.n_queries), np.diff(task.rel_ptr)), ranks)
        firsts.append(first)
    first = np.concatenate(firsts)
    assert (first == 1).any()
    assert (first > 10).any()
    assert ((first > 1) & (first <= 10)).any()


@pytest.mark.parametrize(("name", "task"), TASKS, ids=TASK_IDS)
def test_per_query_measures_match_trec_eval(name: str, task: Task) -> None:
    scores = score_matrix(task)
    assert_no_ties(scores)
    _, ours = project_measures(task)
    reference = trec_eval(task, scores)
    assert sorted(reference) == [qid(i) for i in range(task.n_queries)]
    for measure, trec_name in MEASURE_MAP.items():
        theirs = np.array([reference[qid(i)][trec_name] for i in range(task.n_queries)])
        assert ours[measure] == pytest.approx(theirs, rel=REL, abs=0), (measure, trec_name)


@pytest.mark.parametrize(("name", "task"), TASKS, ids=TASK_IDS)
def test_aggregates_match_trec_eval(name: str, task: Task) -> None:
    """bootstrap's point estimates: means of trec_eval's per-query values, and
    mean/median first-relevant rank derived from recip_rank (rank = 1/rr)."""
    scores = score_matrix(task)
    _, ours = project_measures(task)
    reference = trec_eval(task, scores)
    estimates = bootstrap(ours, 0, seed=0)
    for measure, trec_name in MEASURE_MAP.items():
        values = [reference[qid(i)][trec_name] for i in range(task.n_queries)]
        mean = pytrec_eval.compute_aggregated_measure(trec_name, values)
        assert estimates[measure][0] == pytest.approx(mean, rel=REL, abs=0), measure
    first = np.array([1.0 / reference[qid(i)]["recip_rank"] for i in range(task.n_queries)])
    assert estimates["mean_rank"][0] == pytest.approx(float(np.mean(first)), rel=REL, abs=0)
    assert estimates["median_rank"][0] == pytest.approx(float(np.median(first)), rel=REL, abs=0)
    assert np.isnan(estimates["mean_rank"][1]) and np.isnan(estimates["median_rank"][2])


def test_perfect_ranking() -> None:
    task = perfect_task()
    scores = score_matrix(task)
    ranks, ours = project_measures(task)
    reference = trec_eval(task, scores)
    counts = np.diff(task.rel_ptr)
    for i in range(task.n_queries):
        assert reference[qid(i)]["recip_rank"] == 1.0
        assert reference[qid(i)]["ndcg_cut_10"] == pytest.approx(1.0, rel=REL)
    # Every query's relevant items hold ranks 1..n_rel.
    for i in range(task.n_queries):
        got = np.sort(ranks[task.rel_ptr[i] : task.rel_ptr[i + 1]])
        np.testing.assert_array_equal(got, np.arange(1, counts[i] + 1))
    assert ours["ndcg@10"] == pytest.approx(np.ones(task.n_queries), rel=REL)
    assert ours["recall@5"] == pytest.approx(np.ones(task.n_queries), rel=REL)
    assert ours["precision@5"] == pytest.approx(counts / 5, rel=REL)
    estimates = bootstrap(ours, 0, seed=0)
    assert estimates["median_rank"][0] == 1.0
    assert estimates["mean_rank"][0] == 1.0
    assert estimates["mrr"][0] == 1.0
    assert estimates["hit@1"][0] == 1.0
