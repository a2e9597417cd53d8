"""Exact cross-modal retrieval at any scale, and the measures it is scored by.

The engine never holds the N x N score matrix: query rows are scored in
blocks of ``block_rows`` x N (memory bounded by ``block_mb``). For every query
it finds the 1-based *rank* of each relevant gallery item, counting the items
that score higher plus the tied items with a lower index (ties are broken by
gallery index, deterministically). The true item's score is read from the
same block it is compared with, so the count is exact. All measures follow
from these ranks, for every K at once:

- ``hit@K``: 1 if any relevant item is in the top K (the paper's Tables 3-4
  call this P@K; with one relevant item it is Recall@K);
- ``precision@K``: relevant items in the top K / K (the paper's Table 5);
- ``recall@K``: relevant items in the top K / relevant items;
- ``mrr``: 1 / rank of the first relevant item;
- ``ndcg@10``: binary-relevance nDCG at 10;
- ``median_rank`` and ``mean_rank`` of the first relevant item.

Each figure comes with a bootstrap 95% interval (percentile method, seeded):
over queries, or, where several queries belong to one image (the
multi-caption protocol's text queries), over images, all captions of a
resampled image kept together (a cluster bootstrap); the captions of one
image are not independent draws, so resampling them one by one would make
the interval too narrow.

Per query, the engine also keeps what every measure is computed from
(:class:`QueryRanks`, written as ``ranks.parquet``: see :func:`ranks_table`),
so paired tests between metrics, spaces and encoders on the same queries can
be computed afterwards, and each gallery's *k-occurrence* (how many queries
have an item in their top ``HUB_K``), from which :func:`hubness_rows`
measures hubness (Radovanović et al. 2010).

The score blocks run where ``retrieval.device`` says (:func:`scoring_device`):
the CPU path (the reference) or the torch path on CUDA; the counting above
runs on the blocks' device either way, so the semantics are the same (see
:mod:`mmalign.metrics` for what the torch path's scores guarantee).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numba
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from tqdm import tqdm

from mmalign import seeding
from mmalign.config import schema_defaults
from mmalign.devices import torch_device
from mmalign.embed import Embeddings
from mmalign.io import atomic_path
from mmalign.layout import FIXED_METRICS, PROTOCOLS
from mmalign.metrics import Scorer, full_float32, l2_normalize

log = logging.getLogger(__name__)

RESULT_COLUMNS = [
    "dataset", "encoder", "protocol", "direction", "metric", "k", "measure",
    "value", "ci_low", "ci_high", "n_queries", "note",
]  # fmt: skip
HUB_K = 10  # the k of the k-occurrence N_k that hubness is measured by


@dataclass(frozen=True)
class Task:
    """One retrieval direction: queries, a gallery, and what is relevant.

    ``rel_ptr``/``rel_idx`` hold each query's relevant gallery rows in CSR
    form: query i's are ``rel_idx[rel_ptr[i]:rel_ptr[i + 1]]``.
    """

    queries: np.ndarray
    gallery: np.ndarray
    rel_ptr: np.ndarray
    rel_idx: np.ndarray

    @classmethod
    def one_to_one(cls, queries: np.ndarray, gallery: np.ndarray) -> Task:
        n = len(queries)
        return cls(queries, gallery, np.arange(n + 1), np.arange(n))

    @property
    def n_queries(self) -> int:
        return len(self.rel_ptr) - 1


def block_rows_for(n_gallery: int, block_mb: float) -> int:
    """Query rows per block so that a float32 block stays within ``block_mb``."""
    return max(1, min(65536, int(block_mb * 2**20 // (4 * max(1, n_gallery)))))


def relevant_ranks(
    scorer: Scorer, task: Task, block_mb: float = 256, occurrence: np.ndarray | None = None
) -> np.ndarray:
    """1-based rank of every relevant item (aligned with ``task.rel_idx``).

    ``occurrence`` (one int64 per gallery item), when given, is incremented by
    how many queries have each item among their ``HUB_K`` best scores, from the
    same score blocks (torch's top-k, whose order among exactly tied scores is
    its own).

    The blocks, and the counting, live on the scorer's ``block_device`` (the
    CPU for a scorer without one); the ranks come back to the host. The ranks
    follow from comparisons only, so they are the same on every device for the
    same scores; the k-occurrence, where exact ties straddle the k-th place,
    follows each device's top-k."""
    device = getattr(scorer, "block_device", torch.device("cpu"))
    queries = torch.from_numpy(np.ascontiguousarray(task.queries, dtype=np.float32))
    n_gallery = len(task.gallery)
    rows = block_rows_for(n_gallery, block_mb)
    buffer = torch.empty(rows, n_gallery, device=device)
    columns = torch.arange(n_gallery, device=device)
    counts = np.diff(task.rel_ptr)
    ranks = np.zeros(len(task.rel_idx), dtype=np.int64)
    for start in tqdm(range(0, task.n_queries, rows), desc="ranking", unit="block", mininterval=5):
        stop = min(start + rows, task.n_queries)
        scores = scorer.block(queries[start:stop].to(device), buffer[: stop - start])
        local_rows = torch.arange(stop - start, device=device)
        for slot in range(int(counts[start:stop].max(initial=0))):
            has = torch.from_numpy(counts[start:stop] > slot)
            pos = torch.from_numpy(task.rel_ptr[start:stop] + slot).clamp(max=len(task.rel_idx) - 1)
            cols = torch.from_numpy(task.rel_idx)[pos].to(device)
            true = scores[local_rows, cols]
            higher = (scores > true[:, None]).sum(1)
            tied_before = ((scores == true[:, None]) & (columns[None, :] < cols[:, None])).sum(1)
            rank = (1 + higher + tied_before).cpu().numpy()
            keep = has.numpy()
            ranks[pos.numpy()[keep]] = rank[keep]
        if occurrence is not None:
            top = torch.topk(scores, min(HUB_K, n_gallery), dim=1).indices
            occurrence += np.bincount(top.flatten().cpu().numpy(), minlength=n_gallery)
    return ranks


def _ordered(
    values: torch.Tensor, indices: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort candidates by (value descending, index ascending) and keep k."""
    by_index = torch.sort(indices, dim=1, stable=True)
    values = torch.gather(values, 1, by_index.indices)
    by_value = torch.sort(values, dim=1, descending=True, stable=True)
    order = by_value.indices[:, :k]
    return by_value.values[:, :k], torch.gather(by_index.values, 1, order)


def _block_topk(scores: torch.Tensor, k: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k of each row, ties broken by lower column index (torch ops: any device)."""
    k = min(k, scores.shape[1])
    # A tie straddles the k-th place exactly when the k-th and (k+1)-th values are equal.
    values, indices = torch.topk(scores, min(k + 1, scores.shape[1]), dim=1)
    if values.shape[1] > k:
        for row in (values[:, k - 1] == values[:, k]).nonzero().flatten().tolist():
            order = torch.sort(scores[row], descending=True, stable=True)
            values[row, :k], indices[row, :k] = order.values[:k], order.indices[:k]
    values, indices = _ordered(values[:, :k], indices[:, :k], k)
    return values, indices + offset


@numba.njit(inline="always")
def _insert(
    values: np.ndarray, indices: np.ndarray, filled: int, s: float, j: int
) -> None:  # pragma: no cover
    """Put (s, j) into its place in a best-first list (value descending) of
    ``filled`` entries, dropping its last one when full: items arrive in
    increasing index, so an equal value stays behind the ones before it."""
    p = min(filled, len(values) - 1)
    while p > 0 and values[p - 1] < s:
        values[p], indices[p] = values[p - 1], indices[p - 1]
        p -= 1
    values[p], indices[p] = s, j


@numba.njit(parallel=True, cache=True)
def _rows_topk(
    block: np.ndarray, values: np.ndarray, indices: np.ndarray
) -> None:  # pragma: no cover
    k = values.shape[1]
    for r in numba.prange(block.shape[0]):
        v, ix = values[r], indices[r]
        for j in range(k):  # the first k fill the list
            _insert(v, ix, j, block[r, j], j)
        last = v[k - 1]
        for j in range(k, block.shape[1]):
            if block[r, j] > last:  # almost every score fails this one test
                _insert(v, ix, k, block[r, j], j)
                last = v[k - 1]


@numba.njit(parallel=True, cache=True)
def _columns_topk(
    block: np.ndarray, offset: int, values: np.ndarray, indices: np.ndarray
) -> None:  # pragma: no cover
    """Merge each column of ``block`` (its rows are items offset, offset + 1, ...)
    into that column's running list (full once k rows are in); columns in chunks,
    so each thread owns its lists and reads the block row-major, comparing with a
    contiguous copy of the lists' last values."""
    n_cols, k, chunk = block.shape[1], values.shape[1], 4096  # 4096: fastest of 512-6250
    for c in numba.prange((n_cols + chunk - 1) // chunk):
        lo, hi = c * chunk, min(n_cols, (c + 1) * chunk)
        last = values[lo:hi, k - 1].copy()
        for r in range(block.shape[0]):
            item, row = offset + r, block[r, lo:hi]
            if item < k:  # the first k items fill the lists
                for t in range(hi - lo):
                    _insert(values[lo + t], indices[lo + t], item, row[t], item)
                    last[t] = values[lo + t, k - 1]
                continue
            for t in range(hi - lo):
                if row[t] > last[t]:  # almost every score fails this one test
                    _insert(values[lo + t], indices[lo + t], k, row[t], item)
                    last[t] = values[lo + t, k - 1]


def _empty_lists(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((n, k), -np.inf, dtype=np.float32), np.full((n, k), -1, dtype=np.int64)


def _cpu_block_topk(block: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_block_topk` of a CPU block in one numba pass: a score enters a row's
    list only when it beats the list's last (one comparison for almost every score).
    Scores must not be NaN (torch's top-k ranks NaN first; these kernels do not)."""
    values, indices = _empty_lists(block.shape[0], min(k, block.shape[1]))
    _rows_topk(block.numpy(), values, indices)
    return torch.from_numpy(values), torch.from_numpy(indices)


def _merge_columns(
    block: torch.Tensor, k: int, offset: int, values: torch.Tensor, indices: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_columns_topk` in torch ops (any device): the running lists merged with
    the top-k of the block's columns."""
    v, i = _block_topk(block.T.contiguous(), k, offset)  # contiguous: 3x faster than strided
    return _ordered(torch.cat([values, v], 1), torch.cat([indices, i], 1), k)


def topk(
    scorer: Scorer, queries: np.ndarray, k: int, block_mb: float = 256
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, gallery indices) of each query's k best items, best first (on the
    scorer's ``block_device``; the results come back to the host)."""
    device = getattr(scorer, "block_device", torch.device("cpu"))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    n_gallery = len(scorer.gallery)
    rows = block_rows_for(n_gallery, block_mb)
    buffer = torch.empty(rows, n_gallery, device=device)
    out_v, out_i = [], []
    for start in range(0, len(q), rows):
        chunk = q[start : start + rows].to(device)
        block = scorer.block(chunk, buffer[: len(chunk)])
        v, i = _cpu_block_topk(block, k) if device.type == "cpu" else _block_topk(block, k, 0)
        out_v.append(v.clone())
        out_i.append(i.clone())
    return scorer.values(torch.cat(out_v)).cpu().numpy(), torch.cat(out_i).cpu().numpy()


def topk_both_directions(
    scorer: Scorer, queries: np.ndarray, k: int, block_mb: float = 256
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Top-k of queries over the gallery and of gallery items over the queries,
    from one pass of score blocks (the metric must be symmetric). On the CPU both
    lists are kept by numba kernels reading each block once per direction; on
    another device by torch's top-k (the block transposed for the columns)."""
    device = getattr(scorer, "block_device", torch.device("cpu"))
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    n_gallery = len(scorer.gallery)
    rows = block_rows_for(n_gallery, block_mb)
    buffer = torch.empty(rows, n_gallery, device=device)
    row_v, row_i = [], []
    if device.type == "cpu":
        col_v, col_i = map(torch.from_numpy, _empty_lists(n_gallery, min(k, len(q))))
    else:
        col_v = torch.full((n_gallery, 0), -torch.inf, device=device)
        col_i = torch.empty((n_gallery, 0), dtype=torch.long, device=device)
    for start in range(0, len(q), rows):
        stop = min(start + rows, len(q))
        block = scorer.block(q[start:stop].to(device), buffer[: stop - start])
        if device.type == "cpu":
            v, i = _cpu_block_topk(block, k)
            _columns_topk(block.numpy(), start, col_v.numpy(), col_i.numpy())
        else:
            v, i = _block_topk(block, k, 0)
            col_v, col_i = _merge_columns(block, k, start, col_v, col_i)
        row_v.append(v.clone())
        row_i.append(i.clone())
    rows_out = (scorer.values(torch.cat(row_v)).cpu().numpy(), torch.cat(row_i).cpu().numpy())
    return rows_out, (scorer.values(col_v).cpu().numpy(), col_i.cpu().numpy())


def measures_per_query(
    ranks: np.ndarray, rel_ptr: np.ndarray, ks: list[int]
) -> dict[str, np.ndarray]:
    """Per-query values of every measure, from the relevant items' ranks."""
    n = len(rel_ptr) - 1
    counts = np.diff(rel_ptr)
    if (counts == 0).any():
        raise ValueError("every query needs at least one relevant item")
    qid = np.repeat(np.arange(n), counts)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, qid, ranks)
    out: dict[str, np.ndarray] = {}
    for k in ks:
        found = np.bincount(qid, weights=(ranks <= k), minlength=n)
        out[f"hit@{k}"] = (first <= k).astype(float)
        out[f"precision@{k}"] = found / k
        out[f"recall@{k}"] = found / counts
    gains = np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, 12)))[np.minimum(counts, 10) - 1]
    out["ndcg@10"] = np.bincount(qid, weights=gains, minlength=n) / ideal
    out["mrr"] = 1.0 / first
    out["median_rank"] = first.astype(float)
    out["mean_rank"] = first.astype(float)
    return out


def bootstrap(
    values: dict[str, np.ndarray], n_boot: int, seed: int, clusters: np.ndarray | None = None
) -> dict[str, tuple[float, float, float]]:
    """(estimate, 2.5th, 97.5th percentile) per measure, resampling queries.

    With ``clusters`` (one label per query, e.g. the image a caption query
    describes), whole clusters are resampled with replacement and every query
    of a drawn cluster counts once per draw (the cluster bootstrap); with one
    query per cluster, in query order, this is exactly the query bootstrap.
    Means use resampling counts (one matrix product for all measures); the
    median rank uses the same resamples through a weighted median.
    """
    names = list(values)
    n = len(values[names[0]])
    matrix = np.stack([values[m] for m in names], axis=1)
    is_median = np.array([m == "median_rank" for m in names])
    estimate = np.where(is_median, np.median(matrix, 0), matrix.mean(0))
    codes = np.arange(n) if clusters is None else pd.factorize(clusters)[0]
    n_clusters = int(codes.max(initial=-1)) + 1
    if n_boot == 0 or n_clusters < 2:
        return {m: (float(e), np.nan, np.nan) for m, e in zip(names, estimate, strict=True)}
    rng = seeding.rng(seed)
    stats = np.empty((n_boot, len(names)))
    order = np.argsort(matrix[:, is_median], axis=0, kind="stable") if is_median.any() else None
    for lo in range(0, n_boot, 100):
        hi = min(n_boot, lo + 100)
        drawn = [np.bincount(rng.integers(0, n_clusters, n_clusters), minlength=n_clusters)
                 for _ in range(lo, hi)]  # fmt: skip
        counts = np.stack(drawn)[:, codes]
        total = counts.sum(1, keepdims=True)
        stats[lo:hi] = counts @ matrix / total
        if order is not None:
            for j, col in enumerate(np.flatnonzero(is_median)):
                cum = np.cumsum(counts[:, order[:, j]], axis=1)
                stats[lo:hi, col] = matrix[order[:, j], col][np.argmax(cum >= total / 2, axis=1)]
    low, high = np.percentile(stats, [2.5, 97.5], axis=0)
    return {
        m: (float(e), float(a), float(b))
        for m, e, a, b in zip(names, estimate, low, high, strict=True)
    }


# ---- per-query results and hubness ------------------------------------------

LABEL_FIELDS = ("protocol", "direction", "metric")
QUERY_FIELDS = [
    ("query", pa.int32()), ("query_row", pa.int32()), ("image_id", pa.string()),
    ("caption_idx", pa.int32()), ("rank", pa.int32()),
    ("relevant_rows", pa.list_(pa.int32())), ("relevant_ranks", pa.list_(pa.int32())),
    ("n_gallery", pa.int32()),
]  # fmt: skip
HUBNESS_COLUMNS = [
    "dataset", "encoder", "protocol", "direction", "metric", "k", "skewness",
    "never_in_top_k", "max_occurrence", "n_queries", "n_gallery",
]  # fmt: skip


@dataclass(frozen=True)
class QueryRanks:
    """Every query's outcome under one (protocol, direction, metric).

    ``label`` holds dataset, encoder, protocol, direction and metric (and any
    further keys, e.g. the gap shift's ``space`` and ``lambda``, which become
    columns). ``query_rows`` are the queries' rows of their modality's
    ``.npy`` (text for t2i, image for i2t), ``gallery_rows`` the gallery's;
    ``ranks`` is aligned with ``rel_idx`` (CSR by ``rel_ptr``, as in
    :class:`Task`); ``occurrence`` is the gallery's k-occurrence N_HUB_K.
    """

    label: dict[str, Any]
    query_rows: np.ndarray
    gallery_rows: np.ndarray
    rel_ptr: np.ndarray
    rel_idx: np.ndarray
    ranks: np.ndarray
    occurrence: np.ndarray | None = None

    @classmethod
    def of(
        cls, label: dict[str, Any], task: Task, ranks: np.ndarray, query_rows: np.ndarray,
        gallery_rows: np.ndarray, occurrence: np.ndarray | None = None,
    ) -> QueryRanks:  # fmt: skip
        rows = np.asarray(query_rows), np.asarray(gallery_rows)
        return cls(dict(label), *rows, task.rel_ptr, task.rel_idx, ranks, occurrence)


def ranks_table(
    items: list[QueryRanks], texts: pd.DataFrame, images: pd.DataFrame,
    extra: tuple[tuple[str, pa.DataType], ...] = (),
) -> pa.Table:  # fmt: skip
    """``ranks.parquet``: one row per (protocol, direction, metric, query), int32.

    Columns: ``dataset, encoder``, the ``extra`` label keys, ``protocol,
    direction, metric``, then :data:`QUERY_FIELDS`: ``query`` (position in
    the task), ``query_row`` (row of text.npy for t2i, image.npy for i2t),
    ``image_id`` (the image of the query's pair: the query caption's image
    for t2i, the query image for i2t), ``caption_idx`` (the query caption's; -1 for image queries),
    ``rank`` (1-based rank of the first relevant item), ``relevant_rows``
    (gallery rows of every relevant item, in the other modality's .npy) and
    ``relevant_ranks`` (their ranks, aligned), ``n_gallery``. Every measure of
    ``retrieval.parquet`` follows from ``relevant_ranks`` (see
    :func:`measures_per_query`).
    """
    labels = [("dataset", pa.string()), ("encoder", pa.string()), *extra,
              *((name, pa.string()) for name in LABEL_FIELDS)]  # fmt: skip
    fields = [*labels, *QUERY_FIELDS]
    schema = pa.schema(fields)
    text_ids = texts["image_id"].astype(str).to_numpy()
    text_caps = texts["caption_idx"].to_numpy()
    image_ids = images["image_id"].astype(str).to_numpy()
    tables = []
    for item in items:
        n = len(item.rel_ptr) - 1
        t2i = item.label["direction"] == "t2i"
        ptr = item.rel_ptr.astype(np.int32)
        first = np.minimum.reduceat(item.ranks, item.rel_ptr[:-1]) if n else item.ranks[:0]
        columns = {
            **{name: pa.repeat(pa.scalar(item.label[name], typ), n) for name, typ in labels},
            "query": pa.array(np.arange(n, dtype=np.int32)),
            "query_row": pa.array(item.query_rows.astype(np.int32)),
            "image_id": pa.array((text_ids if t2i else image_ids)[item.query_rows]),
            "caption_idx": pa.array(
                text_caps[item.query_rows].astype(np.int32) if t2i else np.full(n, -1, np.int32)
            ),
            "rank": pa.array(first.astype(np.int32)),
            "relevant_rows": pa.ListArray.from_arrays(
                ptr, pa.array(item.gallery_rows[item.rel_idx].astype(np.int32))
            ),
            "relevant_ranks": pa.ListArray.from_arrays(ptr, pa.array(item.ranks.astype(np.int32))),
            "n_gallery": pa.array(np.full(n, len(item.gallery_rows), np.int32)),
        }
        tables.append(pa.table([columns[name] for name, _ in fields], schema=schema))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def skewness(values: np.ndarray) -> float:
    """The (biased) sample skewness m3 / m2^1.5, as scipy.stats.skew; 0 for a constant."""
    x = np.asarray(values, dtype=np.float64)
    centred = x - x.mean()
    m2 = float(np.mean(centred**2))
    return float(np.mean(centred**3) / m2**1.5) if m2 > 0 else 0.0


def hubness_rows(items: list[QueryRanks]) -> pd.DataFrame:
    """Hubness of each gallery under each (protocol, direction, metric): the
    skewness of its k-occurrence distribution N_k (Radovanović et al. 2010;
    k = :data:`HUB_K`; 0 is symmetric, large positive means a few *hubs* are
    in many queries' top k), the share of gallery items in no query's top k
    (*anti-hubs*) and the largest N_k."""
    rows = [
        {**{c: item.label.get(c) for c in HUBNESS_COLUMNS[:5]}, "k": HUB_K,
         "skewness": skewness(item.occurrence),
         "never_in_top_k": float(np.mean(item.occurrence == 0)),
         "max_occurrence": int(item.occurrence.max(initial=0)),
         "n_queries": len(item.rel_ptr) - 1, "n_gallery": len(item.occurrence)}
        for item in items
        if item.occurrence is not None
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=HUBNESS_COLUMNS)


def write_ranks(table: pa.Table, path: str | Path) -> None:
    """Write a :func:`ranks_table` atomically (zstd-compressed parquet)."""
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


# ---- protocols -------------------------------------------------------------


_DEFAULTS = schema_defaults("retrieval")


@dataclass(frozen=True)
class RetrievalOptions:
    """The ``retrieval`` config (see the schema: the defaults are its) and the seed."""

    ks: tuple[int, ...] = tuple(_DEFAULTS["ks"])
    metrics: tuple[str, ...] = tuple(_DEFAULTS["metrics"])
    subset_size: int = _DEFAULTS["subset_size"]
    multicaption_split: str = _DEFAULTS["multicaption_split"]
    bootstrap: int = _DEFAULTS["bootstrap"]
    block_mb: float = _DEFAULTS["block_mb"]
    csls_k: int = _DEFAULTS["csls_k"]
    qbnorm_beta: float = _DEFAULTS["qbnorm_beta"]
    querybank_size: int = _DEFAULTS["querybank_size"]
    # auto | cpu | cuda (see scoring_device); in code, a torch.device selects the
    # torch path on that device, the CPU included (what the equality tests use)
    device: str | torch.device = _DEFAULTS["device"]
    seed: int = 0  # the config's top-level seed, passed to from_config

    @classmethod
    def from_config(cls, cfg: dict[str, Any], seed: int) -> RetrievalOptions:
        return cls(
            ks=tuple(cfg["ks"]),
            metrics=tuple(cfg["metrics"]),
            subset_size=cfg["subset_size"],
            multicaption_split=cfg["multicaption_split"],
            bootstrap=cfg["bootstrap"],
            block_mb=cfg["block_mb"],
            csls_k=cfg["csls_k"],
            qbnorm_beta=cfg["qbnorm_beta"],
            querybank_size=cfg["querybank_size"],
            device=cfg["device"],
            seed=seed,
        )


@dataclass
class Protocol:
    """The two tasks of one protocol, plus the rows each side came from."""

    name: str
    t2i: Task
    i2t: Task
    text_rows: np.ndarray  # rows of text.npy used
    image_rows: np.ndarray  # rows of image.npy used


def first_caption_pairs(emb: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    """(text rows, image rows) of each image's first caption, in image order."""
    texts = emb.texts.reset_index(drop=True)
    first = texts.index[
        texts["caption_idx"] == texts.groupby("image_id")["caption_idx"].transform("min")
    ]
    text_rows = first.to_numpy()
    image_rows = texts.loc[first, "image_row"].to_numpy()
    order = np.argsort(image_rows, kind="stable")
    return text_rows[order], image_rows[order]


def build_protocol(emb: Embeddings, name: str, opts: RetrievalOptions) -> Protocol:
    """The paper's ``subset`` (seeded pairs), ``full`` (every pair, one caption
    per image) or ``multicaption`` (every caption of a split's images)."""
    image, text = np.asarray(emb.image), np.asarray(emb.text)
    if name in ("subset", "full"):
        text_rows, image_rows = first_caption_pairs(emb)
        if name == "subset" and opts.subset_size < len(text_rows):
            pick = np.sort(
                seeding.rng(opts.seed).choice(len(text_rows), opts.subset_size, replace=False)
            )
            text_rows, image_rows = text_rows[pick], image_rows[pick]
        t, i = text[text_rows], image[image_rows]
        return Protocol(name, Task.one_to_one(t, i), Task.one_to_one(i, t), text_rows, image_rows)
    if name != "multicaption":
        raise ValueError(f"unknown protocol {name!r}; known: {PROTOCOLS}")
    split = opts.multicaption_split
    image_rows = np.flatnonzero(emb.images["eval_split"].to_numpy() == split)
    if len(image_rows) == 0:
        raise ValueError(f"multicaption: no images in split {split!r}")
    texts = emb.texts.reset_index(drop=True)
    chosen = texts[texts["image_row"].isin(image_rows)].sort_values(
        ["image_row", "caption_idx"], kind="stable"
    )
    text_rows = chosen.index.to_numpy()
    position = {row: p for p, row in enumerate(image_rows)}
    image_of_caption = np.array([position[r] for r in chosen["image_row"]])
    t, i = text[text_rows], image[image_rows]
    t2i = Task(t, i, np.arange(len(t) + 1), image_of_caption)
    per_image = np.bincount(image_of_caption, minlength=len(image_rows))
    i2t = Task(
        i,
        t,
        np.concatenate([[0], np.cumsum(per_image)]),
        np.argsort(image_of_caption, kind="stable"),
    )
    return Protocol(name, t2i, i2t, text_rows, image_rows)


def scoring_device(opts: RetrievalOptions) -> torch.device | None:
    """Where the score blocks run, from ``opts.device`` (``retrieval.device``):
    None = the CPU path (cpu, or auto where torch sees no GPU: today's engine,
    unchanged); a ``torch.device`` = the torch path on it (auto with a GPU, or
    cuda; cuda without a GPU is an error naming the key and the fix). A
    ``torch.device`` given in code is used as it is, the CPU included."""
    if isinstance(opts.device, torch.device):
        return opts.device
    device = torch_device(opts.device, "retrieval.device")
    return None if device.type == "cpu" else device


def make_scorer(metric: str, task: Task, bank: np.ndarray | None, opts: RetrievalOptions) -> Scorer:
    """A scorer for ``metric`` on ``task``, calibrations fitted as documented in
    :mod:`mmalign.metrics` (``bank``: training queries for QB-Norm), on
    :func:`scoring_device`."""
    device = scoring_device(opts)
    gallery = torch.from_numpy(np.ascontiguousarray(task.gallery, dtype=np.float32))
    if metric in FIXED_METRICS:
        return Scorer(metric, gallery, device)
    if metric == "centered_cosine":
        raise ValueError("centered_cosine is applied to the inputs; see score_task")
    scorer = Scorer("cosine", gallery, device)
    if metric == "csls":
        # r(g): mean cosine of gallery item g to its csls_k nearest queries.
        reverse = Scorer(
            "cosine",
            torch.from_numpy(np.ascontiguousarray(task.queries, dtype=np.float32)),
            device,
        )
        near, _ = topk(reverse, task.gallery, min(opts.csls_k, task.n_queries), opts.block_mb)
        scorer.scale, scorer.offset = 2.0, torch.from_numpy(near.mean(1))
    elif metric == "qbnorm":
        if bank is None or len(bank) == 0:
            raise ValueError(
                "no query bank: QB-Norm needs training queries outside the evaluated set"
            )
        bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32))
        bank_t = l2_normalize(bank_t.to(scorer.block_device))
        offset = torch.empty(len(gallery), device=scorer.block_device)
        with full_float32(device):
            for lo in range(0, len(gallery), 4096):
                sims = scorer.gallery[lo : lo + 4096] @ bank_t.T
                offset[lo : lo + 4096] = torch.logsumexp(opts.qbnorm_beta * sims, dim=1)
        scorer.scale, scorer.offset = opts.qbnorm_beta, offset
    else:
        raise ValueError(f"unknown metric {metric!r}")
    if scorer.offset is not None:
        scorer.offset = scorer.offset.to(scorer.block_device)
    return scorer


def score_task(
    task: Task,
    metric: str,
    bank: np.ndarray | None,
    opts: RetrievalOptions,
    occurrence: np.ndarray | None = None,
) -> np.ndarray:
    """Relevant ranks of ``task`` under ``metric`` (``occurrence``: see :func:`relevant_ranks`)."""
    if metric == "centered_cosine":
        centred = Task(
            task.queries - task.queries.mean(0),
            task.gallery - task.gallery.mean(0),
            task.rel_ptr,
            task.rel_idx,
        )
        scorer = Scorer(
            "cosine",
            torch.from_numpy(np.ascontiguousarray(centred.gallery, dtype=np.float32)),
            scoring_device(opts),
        )
        return relevant_ranks(scorer, centred, opts.block_mb, occurrence)
    return relevant_ranks(make_scorer(metric, task, bank, opts), task, opts.block_mb, occurrence)


def query_bank(
    emb: Embeddings, protocol: Protocol, direction: str, opts: RetrievalOptions
) -> np.ndarray:
    """Training-split queries of the direction's query modality, none of them
    evaluated: for text queries, no caption of any evaluated image (not only the
    evaluated captions themselves)."""
    if direction == "t2i":
        texts = emb.texts
        evaluated = np.isin(texts["image_row"].to_numpy(), protocol.image_rows)
        rows = np.flatnonzero((texts["split"].to_numpy() == "train") & ~evaluated)
        source = emb.text
    else:
        rows = np.flatnonzero(emb.images["split"].to_numpy() == "train")
        rows = np.setdiff1d(rows, protocol.image_rows)
        source = emb.image
    if len(rows) > opts.querybank_size:
        rows = np.sort(
            seeding.rng(opts.seed, "qbnorm/bank").choice(rows, opts.querybank_size, replace=False)
        )
    return np.asarray(source[rows])


def rows_for(
    values: dict[str, tuple[float, float, float]], n_queries: int, note: str = ""
) -> list[dict[str, Any]]:
    out = []
    for measure, (value, low, high) in values.items():
        name, _, k = measure.partition("@")
        out.append({
            "k": int(k) if k else pd.NA, "measure": name, "value": value,
            "ci_low": low, "ci_high": high, "n_queries": n_queries, "note": note,
        })  # fmt: skip
    return out


def measure_names(ks: tuple[int, ...]) -> list[str]:
    names = [f"{m}@{k}" for k in ks for m in ("hit", "precision", "recall")]
    return [*names, "ndcg@10", "mrr", "median_rank", "mean_rank"]


def score_protocol(
    emb: Embeddings,
    protocol_name: str,
    opts: RetrievalOptions,
    dataset: str,
    encoder: str,
    sink: list[QueryRanks] | None = None,
    captions: str | None = None,
) -> pd.DataFrame:
    """Every metric, both directions, every measure with its interval, long form;
    each scored (direction, metric)'s :class:`QueryRanks` is appended to ``sink``.

    Intervals resample queries, except the multi-caption protocol's text
    queries, which are resampled by image (see :func:`bootstrap`). The
    multi-caption protocol on images with one caption each gives n/a rows
    whose note names the keys to change (``captions``: the dataset's key)."""
    if protocol_name == "multicaption":
        from mmalign.datasets import multicaption_note

        note = multicaption_note(emb.images, emb.texts, opts.multicaption_split, dataset,
                                 captions)  # fmt: skip
        if note:
            log.warning("%s %s: %s", dataset, encoder, note)
            nan = {m: (np.nan, np.nan, np.nan) for m in measure_names(opts.ks)}
            frame = pd.DataFrame(
                [{"dataset": dataset, "encoder": encoder, "protocol": protocol_name,
                  "direction": direction, "metric": metric, **r}
                 for direction in ("t2i", "i2t") for metric in opts.metrics
                 for r in rows_for(nan, 0, note)],
                columns=RESULT_COLUMNS,
            )  # fmt: skip
            return frame.astype({"k": "Int64"})
    protocol = build_protocol(emb, protocol_name, opts)
    rows: list[dict[str, Any]] = []
    mismatch = emb.image.shape[1] != emb.text.shape[1]
    sides = {"t2i": (protocol.text_rows, protocol.image_rows),
             "i2t": (protocol.image_rows, protocol.text_rows)}  # fmt: skip
    for direction, task in (("t2i", protocol.t2i), ("i2t", protocol.i2t)):
        # The image each query belongs to: captions of one image form a cluster.
        clusters = task.rel_idx if direction == "t2i" and protocol_name == "multicaption" else None
        for metric in opts.metrics:
            base = {"dataset": dataset, "encoder": encoder, "protocol": protocol_name,
                    "direction": direction, "metric": metric}  # fmt: skip
            note = ""
            if mismatch:
                note = (
                    f"n/a: image {emb.image.shape[1]}-d vs text {emb.text.shape[1]}-d; "
                    "metrics between the spaces need equal dimensions (use an adapter)"
                )
            bank = (
                query_bank(emb, protocol, direction, opts)
                if metric == "qbnorm" and not mismatch
                else None
            )
            if metric == "qbnorm" and bank is not None and len(bank) == 0:
                note = "n/a: no training queries outside the evaluated set for the query bank"
            if note:
                nan = {m: (np.nan, np.nan, np.nan) for m in measure_names(opts.ks)}
                rows += [{**base, **r} for r in rows_for(nan, task.n_queries, note)]
                continue
            log.info("%s %s %s %s: %d queries x %d items on %s", dataset, encoder, direction,
                     metric, task.n_queries, len(task.gallery),
                     scoring_device(opts) or "the CPU path")  # fmt: skip
            occurrence = np.zeros(len(task.gallery), dtype=np.int64)
            ranks = score_task(task, metric, bank, opts, occurrence)
            per_query = measures_per_query(ranks, task.rel_ptr, list(opts.ks))
            values = bootstrap(per_query, opts.bootstrap, opts.seed, clusters)
            rows += [{**base, **r} for r in rows_for(values, task.n_queries)]
            if sink is not None:
                sink.append(QueryRanks.of(base, task, ranks, *sides[direction], occurrence))
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    frame["k"] = frame["k"].astype("Int64")
    return frame
