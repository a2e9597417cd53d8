"""Cluster requests that grow with the data: each heavy rule's ``mem_mb`` and
``runtime`` from the size of its input.

A rule asks ``mem_mb=scaled("geometry", "mem_mb", config)``; Snakemake calls the
returned function with the job's ``wildcards``, ``input``, ``threads`` and
``attempt``. It reads the sizes from the input's headers, never its data: the
``.npy`` headers (:func:`npy_shape`), the parquet footers and the split columns
of ``images.parquet`` / ``texts.parquet`` (:func:`embedding_shape`), the
manifest's row count and image ids (:func:`manifest_size`). Torch-free: planning
(``snakemake -n``) imports this module.

**When the input is not there yet** (a dry run of a fresh study; a job whose
upstream has not run), the request is the rule's :data:`FALLBACK` (the constants
the rules declared before), times ``attempt``. Snakemake evaluates resources
again, with the input present, when the job is ready to run (its scheduler
resets every ready job's resources before it selects and submits them), so a
submitted job always carries the request computed from its real input.

**The model.** Each rule's cost is a sum of terms, each a fixed part or a rate
times a count that follows from the algorithm (below, with its exponent in the
number of pairs N at a fixed dimension d), on 2 CPU threads (the rules'
``threads``). Memory is the script's peak RSS; time is wall-clock seconds. Then
:func:`finish` adds what every job spends on Snakemake itself inside its
allocation (:data:`JOB_SECONDS`, :data:`JOB_MB`), multiplies by the safety
factors (:data:`TIME_SAFETY`, :data:`MEMORY_SAFETY`) and by ``attempt`` (a job
killed for time or memory asks for twice as much on its second try), and rounds
up (at least :data:`MIN_MINUTES` and :data:`MIN_MB`).

Where the coefficients come from:

- *default run*: the benchmark files (``results/benchmarks/<rule>/...tsv``:
  ``s``, ``max_rss``) and logs of the default study on this machine (OpenClipArt,
  N = 4,312 pairs, one caption each; ``minilm_effnet`` = 1280-d images / 384-d
  texts, whose between-space measures are n/a, so its job is the rule's fixed
  part; ``minilm_effnet_pca384`` = 384-d both, whose extra is the growing part);
- *NOTES*: ``/work/shared/NOTES.md`` (measured here at N = 50,000): cosine in
  both directions 33.5 s for 2 x 50,000^2 x 512 (1.31e-11 s per query x item x
  dimension); the numba Manhattan kernel 3.2 s for 1,024 x 50,000 x 512
  (1.22e-10 s); EfficientNet-Lite0 13-18 images/s, MiniLM 175-200 captions/s;
- *measured*: :func:`mmalign.retrieval.bootstrap` at 20,000 queries, 1,000
  resamples: 1.2e-7 s per resample x query (here, on shared cores);
- *estimated*: a stated guess where nothing was measured (the multiples of a
  matrix's size that copies take; pandas' bytes per manifest row).

Per rule, time | memory (growth in N, the pairs; d, the dimension):

- ``embed_shard``: 15 s + shard images / 13 per s + shard captions / 175 per s
  (N / shards) | 2,100 MB + 3 x the shard's arrays + the manifest (N / shards).
- ``embed_merge``, ``embed_precomputed``: 5 s + 1 s per 50 MB of embeddings
  (N d) | 550 MB + 3 x the embeddings + the manifest (N d).
- ``adapt``: 6 s + 2.8 s at the default run's N d^2 (PCA: N d^2) | 700 MB +
  4 x the embeddings (N d).
- ``retrieval_protocol``: 5.6 s + per (direction, metric) 0.2 s + queries x
  items x d x 1.31e-11 s (the GEMM metrics) or 1.22e-10 s (manhattan, chi2)
  (N^2 d) + queries x resamples x 1.2e-7 s (N) | 750 MB + 3 x the embeddings
  (N d) + 4 x one score block (at most ``block_mb``) + 3.2 kB per query for
  the bootstrap + 100 B per query and metric for the ranks (N).
- ``geometry``: 11 s; in one space also 10 s + 15.1 s per exact-W2 batch of
  4,312 pairs (batch^3, the batch at most ``w2_batch_size``) + t-SNE 34 s at
  2,000 points (min(N, tsne_samples)^2) | 750 MB + 3 x the embeddings (N d) +
  3.8 x batch^2 x 8 B per W2 batch running at once (bounded by the batch).
- ``representation_similarity``: 5 s + 7.5 s per measured sample of 1,000
  pairs, squared (min(N, sample)^2) | 700 MB + 350 MB at 1,000 pairs, squared.
- ``gap_shift``: 16 s + per (lambda, space) 1.5 s + cosine scoring (n^2 d) and
  its bootstrap (n), n = the protocol's pairs and the test split | 1,200 MB +
  3 x the embeddings + the score blocks.
- ``learn``: per variant, fixed + training (N x epochs x trials) + test scoring
  (N_test^2: the MLPs score every query-item pair) | 1,450 MB + 4 x the
  embeddings (N d).
- ``mlp_ablation``: 8 s + 236 s of training (N x epochs) + 8 s of test scoring
  (N_test^2) | 1,430 MB + 4 x the embeddings (N d).
- ``retrieval``, ``error_analysis``, ``paired``: 60 s + 6 s per MB of input
  parquet (N) | 500 MB + 10 x the input MB (N); the rule's old constant where
  larger.

Exponents are the algorithms', chosen on the conservative side where the
algorithm's own is uncertain: exact W2 (network simplex) as batch^3, t-SNE as
n^2 (brute-force neighbours), CKA / CKNNA grams and their half-sample batches
as n^2. Rates are CPU rates: on a GPU (``retrieval.device``, ``learn.device``)
the same jobs take less, never more. The embedding rates are the default
encoders' (EfficientNet-Lite0, MiniLM on 2 CPU threads); a larger model on
the CPU needs ``set-resources`` in the profile. ``benchmarks/scale.py`` (issue
18, part 3) measures every stage at N = 5k-50k; refit the coefficients here
from it. ``python -m mmalign.resources --images 118000 --captions-per-image 5
--dim 512`` prints the requests for a size.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

MB = 2**20

# ---------------------------------------------------------------- finishing

#: Seconds and MB every job spends on Snakemake itself inside its allocation
#: (the job-side snakemake parses the workflow and checks the files; its RSS
#: is counted in the job's memory), on top of the script's.
JOB_SECONDS = 60.0
JOB_MB = 300.0
#: The benchmarks ran on 2 shared cores and vary by 10-20% between runs; a
#: cluster's cores may be slower. Time is the costlier one to get wrong (a
#: killed job loses its hours), memory is steadier (peak RSS repeats).
TIME_SAFETY = 2.0
MEMORY_SAFETY = 1.5
MIN_MINUTES = 5
MIN_MB = 1000
MB_STEP = 100

#: Each grown rule's request when its input is not there yet (the constants the
#: rules declared before requests grew), in (mem_mb, runtime minutes), per attempt.
FALLBACK: dict[str, tuple[int, int]] = {
    "embed_shard": (16000, 240),
    "embed_merge": (8000, 60),
    "embed_precomputed": (8000, 60),
    "adapt": (8000, 60),
    "retrieval_protocol": (8000, 120),
    "geometry": (16000, 240),
    "representation_similarity": (4000, 60),
    "gap_shift": (4000, 60),
    "learn": (16000, 720),
    "mlp_ablation": (8000, 240),
    "retrieval": (2000, 10),
    "error_analysis": (4000, 10),
    "paired": (4000, 30),
}


@dataclass(frozen=True)
class Request:
    """A job's cluster request: ``mem_mb`` (sbatch --mem) and ``runtime`` in
    minutes (sbatch --time)."""

    mem_mb: int
    runtime: int

    def __getitem__(self, key: str) -> int:
        return getattr(self, key)


@dataclass(frozen=True)
class Cost:
    """A job's estimated peak memory (MB) and wall time (s), before :func:`finish`."""

    seconds: float
    mb: float


def finish(cost: Cost, attempt: int = 1) -> Request:
    """The request for ``cost`` at ``attempt``: Snakemake's own share added, the
    safety factors and ``attempt`` applied, rounded up."""
    attempt = max(1, int(attempt))
    mb = MEMORY_SAFETY * (cost.mb + JOB_MB)
    mb = max(MIN_MB, MB_STEP * math.ceil(mb / MB_STEP))
    minutes = max(MIN_MINUTES, math.ceil(TIME_SAFETY * (cost.seconds + JOB_SECONDS) / 60))
    return Request(mem_mb=attempt * mb, runtime=attempt * minutes)


def fallback(rule: str, attempt: int = 1) -> Request:
    mem_mb, runtime = FALLBACK[rule]
    attempt = max(1, int(attempt))
    return Request(mem_mb=attempt * mem_mb, runtime=attempt * runtime)


# ---------------------------------------------------------------- sizes


def _stamp(path: str | Path) -> tuple[str, int, int] | None:
    """(path, mtime_ns, size), the cache key of a file's header; None if missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return str(path), st.st_mtime_ns, st.st_size


@lru_cache(maxsize=4096)
def _npy_shape(path: str, mtime_ns: int, size: int) -> tuple[int, ...]:
    from numpy.lib import format as npy

    with open(path, "rb") as fh:
        version = npy.read_magic(fh)
        if version == (1, 0):
            shape, _, _ = npy.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, _ = npy.read_array_header_2_0(fh)
        else:  # a newer header: memory-mapped, still nothing read
            import numpy as np

            shape = np.load(path, mmap_mode="r").shape
    return tuple(int(n) for n in shape)


def npy_shape(path: str | Path) -> tuple[int, ...] | None:
    """The array shape in a ``.npy`` file's header (the data is never read);
    None if the file is missing or not a ``.npy``."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    try:
        return _npy_shape(*stamp)
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=1024)
def _column_counts(path: str, mtime_ns: int, size: int, column: str) -> dict[str, int] | None:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if column not in pq.read_schema(path).names:
        return None
    counts = pc.value_counts(pq.read_table(path, columns=[column])[column].combine_chunks())
    return {str(row["values"]): int(row["counts"]) for row in counts.to_pylist()}


def column_counts(path: str | Path, column: str) -> dict[str, int] | None:
    """How many rows of a parquet file have each value of ``column`` (that column
    only is read); None if the file or the column is missing."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    try:
        return _column_counts(*stamp, column)
    except (OSError, ValueError):
        return None


@lru_cache(maxsize=1024)
def _parquet_rows(path: str, mtime_ns: int, size: int) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def parquet_rows(path: str | Path) -> int | None:
    """A parquet file's row count, from its footer; None if missing or unreadable."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    try:
        return _parquet_rows(*stamp)
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class Shape:
    """The sizes a job's cost follows: images and captions (rows of image.npy and
    text.npy), their dimensions, and the image counts per ``split`` and the
    image and caption counts per ``eval_split`` (empty where unknown)."""

    n_images: int
    n_texts: int
    dim_image: int
    dim_text: int
    splits: Mapping[str, int] = field(default_factory=dict)
    eval_images: Mapping[str, int] = field(default_factory=dict)
    eval_texts: Mapping[str, int] = field(default_factory=dict)

    @property
    def same_space(self) -> bool:
        return self.dim_image == self.dim_text

    @property
    def embedding_mb(self) -> float:
        """Both matrices as float32, in MB."""
        return 4 * (self.n_images * self.dim_image + self.n_texts * self.dim_text) / MB

    def split(self, name: str, share: float) -> int:
        """Images in split ``name``; ``share`` of them where the splits are unknown."""
        if name in self.splits:
            return int(self.splits[name])
        return max(2, math.ceil(share * self.n_images))


def _named(files: Iterable[str], name: str) -> str | None:
    return next((f for f in files if os.path.basename(f) == name), None)


def embedding_shape(files: Iterable[str | Path]) -> Shape | None:
    """The :class:`Shape` of an embeddings folder among ``files`` (a job's input:
    ``image.npy``, ``text.npy`` and, where present, ``images.parquet`` and
    ``texts.parquet``); None if either matrix is missing."""
    files = [str(f) for f in files]
    image, text = (_named(files, name) for name in ("image.npy", "text.npy"))
    image_shape = npy_shape(image) if image else None
    text_shape = npy_shape(text) if text else None
    if not image_shape or not text_shape or len(image_shape) != 2 or len(text_shape) != 2:
        return None
    images, texts = (_named(files, name) for name in ("images.parquet", "texts.parquet"))
    return Shape(
        n_images=image_shape[0],
        n_texts=text_shape[0],
        dim_image=image_shape[1],
        dim_text=text_shape[1],
        splits=(column_counts(images, "split") if images else None) or {},
        eval_images=(column_counts(images, "eval_split") if images else None) or {},
        eval_texts=(column_counts(texts, "eval_split") if texts else None) or {},
    )


@lru_cache(maxsize=256)
def _distinct_images(path: str, mtime_ns: int, size: int) -> int:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    column = pq.read_table(path, columns=["image_id"])["image_id"]
    return int(pc.count_distinct(column).as_py())


def manifest_size(path: str | Path) -> tuple[int, int] | None:
    """(images, captions) of a manifest: its distinct ``image_id`` values (that
    column only is read) and its rows (the footer); None if missing."""
    stamp = _stamp(path)
    if stamp is None:
        return None
    try:
        return _distinct_images(*stamp), _parquet_rows(*stamp)
    except (OSError, ValueError, KeyError):
        return None


def files_mb(files: Iterable[str | Path]) -> float | None:
    """The files' total size in MB; None if any is missing (or there are none)."""
    total, seen = 0, False
    for f in files:
        try:
            total += os.path.getsize(f)
        except OSError:
            return None
        seen = True
    return total / MB if seen else None


# ---------------------------------------------------------------- rates

#: s per query x item x dimension, 2 threads (NOTES: 33.5 s for cosine, both
#: directions, 50,000^2 x 512): cosine, euclidean, centred cosine, CSLS, QB-Norm.
GEMM_RATE_S = 1.31e-11
#: s per query x item x dimension of the numba kernels (NOTES: Manhattan,
#: 1,024 x 50,000 x 512 in 3.2 s); chi-square runs the same loop.
KERNEL_RATE_S = 1.22e-10
KERNEL_METRICS = frozenset({"manhattan", "chi2"})
#: s per resample x query of the retrieval bootstrap (measured: 20,000 queries,
#: 1,000 resamples, 13 measures, 2.4 s).
BOOTSTRAP_RATE_S = 1.2e-7
#: s per (direction, metric) besides its blocks: top-k for hubness, measures,
#: the ranks' rows (default run: full - subset - kernels - bootstrap, over 16).
PASS_S = 0.2
#: Peak bytes per query of the bootstrap: four (100 x queries) int64 matrices
#: (resample counts, their gather and cumulative sum for the median).
BOOTSTRAP_BYTES_PER_QUERY = 4 * 100 * 8
#: Bytes per query of one (direction, metric)'s ranks kept for ranks.parquet
#: (estimated: the query's row, its relevant rows and ranks, as Arrow and pandas).
RANKS_BYTES_PER_QUERY = 100
#: Bytes per manifest row held by pandas (estimated: three object strings).
MANIFEST_ROW_BYTES = 400
#: Dimensions assumed where a job's input does not give them (the manifest only):
#: the widest of the default encoders (EfficientNet-Lite0's 1280).
ASSUMED_DIM = 1280

# Default run (N = 4,312): the fixed parts, in s and MB.
RETRIEVAL_FIXED = Cost(5.6, 750)  # minilm_effnet full/subset: 5.6-6.0 s, 712-796 MB
# embed_shard: 2 shards of 2,156 (ONNX Runtime, 1 thread): 86-109 s, 1,415-1,444 MB;
# the MB kept from the frozen graph's 8 shards of 539 (1,784-2,099 MB), the larger.
EMBED_FIXED = Cost(10.0, 2100)
IMAGES_PER_S = 31.0  # the slower shard's log: images/s (EfficientNet-Lite0)
CAPTIONS_PER_S = 88.0  # the slower shard's log: captions/s (MiniLM)
MERGE_FIXED = Cost(5.0, 550)  # embed_merge: 5.9 s, 634 MB for 28.7 MB of embeddings
MERGE_MB_PER_S = 50.0  # estimated: read the shards, write the matrices
ADAPT_FIXED = Cost(6.0, 700)  # adapt: 8.8 s, 822 MB
ADAPT_REF = (4312 * (1280**2 + 384**2), 2.8)  # (N d^2 of the default run, its seconds)
GEOMETRY_FIXED = Cost(11.0, 750)  # minilm_effnet: 11.3 s, 835 MB (no same-space measures)
GEOMETRY_SAME_SPACE_S = 10.0  # pca384: figures, examples, Gaussian W2, cosine statistics
W2_REF = (4312, 15.1)  # (batch, seconds): the log's "W2 over 1 batch of 4312 pairs: 15.1 s"
W2_COPIES = 3.8  # pca384 - minilm_effnet peak RSS (563 MB) / one 4312^2 float64 cost matrix
W2_WORKER_MB = 150.0  # estimated: a spawned worker's interpreter, NumPy and POT
TSNE_REF = (2000, 34.0)  # the log's "t-SNE of 2000 pairs: 33.8 s"
SIMILARITY_FIXED = Cost(5.0, 700)  # alignment benchmark: 15.1 s, 1,053 MB
SIMILARITY_REF = (1000, 7.5, 350.0)  # (pairs, s, MB) per measured sample of that size
GAP_SHIFT_FIXED = Cost(16.0, 1200)  # minilm_effnet: 21.9 s (test_align only), 1,084-1,271 MB
GAP_SHIFT_PER_LAMBDA_S = 1.5  # the log: raw (1,000 pairs) ~1.5 s per lambda, test_align ~0.8
LEARN_MB = 1450.0  # learn: 696-1,576 MB (the MLP scorer's blocks are bounded by block_mb)
#: Per learned variant, at the default run (3,450 train / 431 test pairs, the
#: default epochs and trials): (fixed s, training s, test-scoring s). From the
#: logs: the job's "done in" against the benchmark's s (fixed), the two
#: "queries x items" lines to "done in" (scoring), the rest training.
LEARN_REF_PAIRS = (3450, 431)
LEARN_TERMS: dict[str, tuple[float, float, float]] = {
    "mlp_mse": (7.0, 12.5, 7.0),  # pca384: 26.5 s
    "mlp_contrastive": (8.0, 28.0, 19.0),  # minilm_effnet: 55.1 s
    "mlp_down": (7.0, 6.0, 4.0),  # pca384: 17.0 s
    "align": (8.0, 22.5, 0.5),  # 30.7 s (20 of 100 epochs: early stopping)
    "align_linear": (6.5, 3.0, 0.1),  # 9.5 s
}
#: The epochs and trials the default run's training times were measured at.
MLP_REF_EPOCHS = 2 * 3  # n_trials x max_epochs
ALIGN_REF_EPOCHS = 20  # epochs run before early stopping
ABLATION = Cost(8.0, 1430)  # mlp_ablation: 200-252 s, 1,026-1,518 MB
ABLATION_TERMS = (236.0, 8.0)  # (training s, test-scoring s) at LEARN_REF_PAIRS
ABLATION_REF_EPOCHS = 20 + 40  # paper_epochs + converge_epochs
#: Rules whose cost follows their input parquet files (estimated: pandas and
#: Arrow hold 5-10x a compressed file; a few seconds per MB).
TABLE_FIXED = Cost(60.0, 500)
TABLE_MB_PER_INPUT_MB = 10.0
TABLE_S_PER_INPUT_MB = 6.0


# ---------------------------------------------------------------- per rule


def _block_mb(n_queries: int, n_gallery: int, block_mb: float) -> float:
    """MB of one score block (mmalign.retrieval.block_rows_for)."""
    rows = max(1, min(65536, int(block_mb * MB // (4 * max(1, n_gallery))), n_queries))
    return 4 * rows * n_gallery / MB


def scoring_cost(
    tasks: Sequence[tuple[int, int]], dim: int, metrics: Sequence[str], cfg: Mapping[str, Any]
) -> Cost:
    """Time and the memory on top of the embeddings of scoring every ``metric``
    over ``tasks`` ((queries, items) per direction) at ``dim``: the blocks (N^2 d),
    the bootstrap (N) and the ranks kept (N). CSLS adds a reverse top-k pass over
    the queries, QB-Norm one over the query bank."""
    seconds = peak = 0.0
    bank = int(cfg.get("querybank_size", 5000))
    boots = int(cfg.get("bootstrap", 1000))
    block_mb = float(cfg.get("block_mb", 256))
    for n_queries, n_gallery in tasks:
        for metric in metrics:
            rate = KERNEL_RATE_S if metric in KERNEL_METRICS else GEMM_RATE_S
            pairs = n_queries * n_gallery
            if metric == "csls":
                pairs += n_queries * n_gallery
            elif metric == "qbnorm":
                pairs += bank * n_gallery
            seconds += PASS_S + rate * pairs * dim + BOOTSTRAP_RATE_S * boots * n_queries
        peak = max(
            peak,
            4 * _block_mb(n_queries, n_gallery, block_mb)
            + BOOTSTRAP_BYTES_PER_QUERY * n_queries / MB,
        )
    ranks = RANKS_BYTES_PER_QUERY * len(metrics) * sum(q for q, _ in tasks) / MB
    return Cost(seconds, peak + ranks)


def protocol_tasks(shape: Shape, protocol: str, cfg: Mapping[str, Any]) -> list[tuple[int, int]]:
    """(queries, items) of t2i and i2t under ``protocol`` (mmalign.retrieval.build_protocol):
    subset and full pair each image with its first caption; multicaption scores
    every caption of the images whose eval_split is ``multicaption_split`` (all
    of them, where the split is unknown)."""
    if protocol == "subset":
        m = min(int(cfg.get("subset_size", 1000)), shape.n_images)
        return [(m, m), (m, m)]
    if protocol == "full":
        return [(shape.n_images, shape.n_images)] * 2
    split = cfg.get("multicaption_split", "test")
    images = int(shape.eval_images.get(split, shape.n_images))
    texts = int(shape.eval_texts.get(split, shape.n_texts))
    return [(texts, images), (images, texts)]


def retrieval_protocol(shape: Shape, protocol: str, config: Mapping[str, Any]) -> Cost:
    cfg = config.get("retrieval", {})
    base = Cost(RETRIEVAL_FIXED.seconds, RETRIEVAL_FIXED.mb + 3 * shape.embedding_mb)
    if not shape.same_space:  # every row n/a: nothing is scored
        return base
    metrics = cfg.get("metrics", ["cosine", "euclidean", "manhattan", "chi2"])
    score = scoring_cost(protocol_tasks(shape, protocol, cfg), shape.dim_image, metrics, cfg)
    return Cost(base.seconds + score.seconds, base.mb + score.mb)


def embed_shard(images: int, captions: int, shards: int) -> Cost:
    """One shard of ``shards`` of a manifest of ``images`` and ``captions``: the
    encoders' throughput (N / shards); memory: the models, one batch, the manifest
    and the shard's arrays at :data:`ASSUMED_DIM` (the manifest gives no dimensions)."""
    per_images, per_captions = math.ceil(images / shards), math.ceil(captions / shards)
    seconds = EMBED_FIXED.seconds + per_images / IMAGES_PER_S + per_captions / CAPTIONS_PER_S
    arrays = 3 * 4 * (per_images + per_captions) * ASSUMED_DIM / MB
    return Cost(seconds, EMBED_FIXED.mb + arrays + MANIFEST_ROW_BYTES * captions / MB)


def embed_merge(embedding_mb: float, captions: int) -> Cost:
    """Shards in, one matrix per modality out (N d)."""
    return Cost(
        MERGE_FIXED.seconds + embedding_mb / MERGE_MB_PER_S,
        MERGE_FIXED.mb + 3 * embedding_mb + MANIFEST_ROW_BYTES * captions / MB,
    )


def adapt(shape: Shape) -> Cost:
    """A projection fitted on the train split (PCA: N d^2) and applied (N d)."""
    ref_flops, ref_s = ADAPT_REF
    flops = shape.n_images * shape.dim_image**2 + shape.n_texts * shape.dim_text**2
    return Cost(
        ADAPT_FIXED.seconds + ref_s * flops / ref_flops + shape.embedding_mb / MERGE_MB_PER_S,
        ADAPT_FIXED.mb + 4 * shape.embedding_mb,
    )


def w2_batches(n: int, cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(pairs per batch, batches) of exact W2 on ``n`` pairs
    (mmalign.geometry.w2_batch_indices): one batch of all pairs up to
    ``w2_batch_size``, else ``w2_batches`` batches of that size."""
    batch = min(n, int(cfg.get("w2_batch_size", 5000)))
    return batch, 1 if n <= batch else int(cfg.get("w2_batches", 5))


def w2_seconds(n: int, cfg: Mapping[str, Any]) -> float:
    """Exact W2 (network simplex) over the batches, batch^3 each, one after
    another (no credit for parallel workers: conservative)."""
    batch, batches = w2_batches(n, cfg)
    ref_batch, ref_s = W2_REF
    return batches * ref_s * (batch / ref_batch) ** 3


def geometry(shape: Shape, config: Mapping[str, Any], threads: int = 1) -> Cost:
    """Exact W2 over batches of ``w2_batch_size`` pairs (:func:`w2_seconds`; in up
    to ``threads`` processes at once), t-SNE of ``tsne_samples`` pairs (n^2), and
    the rest on the first-caption pairs and the manifest (N)."""
    cfg = config.get("geometry", {})
    n = shape.n_images
    seconds = GEOMETRY_FIXED.seconds
    mb = GEOMETRY_FIXED.mb + 3 * shape.embedding_mb + MANIFEST_ROW_BYTES * shape.n_texts / MB
    if shape.same_space:
        batch, batches = w2_batches(n, cfg)
        workers = max(1, min(int(threads), batches))
        tsne_n, tsne_s = TSNE_REF
        tsne = min(n, int(cfg.get("tsne_samples", 2000)))
        seconds += GEOMETRY_SAME_SPACE_S + w2_seconds(n, cfg) + tsne_s * (tsne / tsne_n) ** 2
        mb += workers * (W2_COPIES * 8 * batch**2 / MB + (W2_WORKER_MB if workers > 1 else 0))
    return Cost(seconds, mb)


def representation_similarity(shape: Shape, config: Mapping[str, Any], heads: bool) -> Cost:
    """CKA, mutual k-NN and CKNNA on a sample of ``min(sample, pairs)`` pairs (raw
    space) and of the test split (raw and aligned space, with the heads): grams,
    permutations and half-samples all n^2."""
    sample = int(config.get("alignment", {}).get("sample", 1000))
    sizes = [min(sample, shape.n_images)]
    if heads:
        sizes += [min(sample, shape.split("test", 0.1))] * 2
    ref_n, ref_s, ref_mb = SIMILARITY_REF
    seconds = SIMILARITY_FIXED.seconds + sum(ref_s * (n / ref_n) ** 2 for n in sizes)
    mb = SIMILARITY_FIXED.mb + ref_mb * (max(sizes) / ref_n) ** 2 + 3 * shape.embedding_mb
    return Cost(seconds, mb)


def gap_shift(shape: Shape, config: Mapping[str, Any], heads: bool) -> Cost:
    """Per lambda, cosine retrieval in both directions with its bootstrap, on the
    protocol's pairs (raw space, equal dimensions only) and on the test split in
    the heads' space."""
    cfg, rcfg = config.get("gap_shift", {}), config.get("retrieval", {})
    lambdas = len(cfg.get("lambdas", [0.0] * 8))
    spaces: list[tuple[int, int]] = []  # (pairs, dim)
    if shape.same_space:
        pairs = shape.n_images
        if cfg.get("protocol", "subset") == "subset":
            pairs = min(pairs, int(rcfg.get("subset_size", 1000)))
        spaces.append((pairs, shape.dim_image))
    if heads:
        dim = int(config.get("learn", {}).get("align", {}).get("dim", 256))
        spaces.append((shape.split("test", 0.1), dim))
    seconds, mb = GAP_SHIFT_FIXED.seconds, GAP_SHIFT_FIXED.mb + 3 * shape.embedding_mb
    peak = 0.0
    for pairs, dim in spaces:
        score = scoring_cost([(pairs, pairs)] * 2, dim, ["cosine"], {**rcfg})
        seconds += lambdas * (GAP_SHIFT_PER_LAMBDA_S + score.seconds)
        peak = max(peak, score.mb)
    return Cost(seconds, mb + peak)


def _learn_pairs(shape: Shape, config: Mapping[str, Any]) -> tuple[float, float]:
    """(train, test) pairs of the learned stage: first captions, ``max_pairs`` of
    them at most, split by ``split``."""
    max_pairs = config.get("learn", {}).get("max_pairs")
    keep = 1.0 if max_pairs is None else min(1.0, int(max_pairs) / max(1, shape.n_images))
    return keep * shape.split("train", 0.8), keep * shape.split("test", 0.1)


def learn(shape: Shape, variant: str, config: Mapping[str, Any]) -> Cost:
    """Training (N x epochs x trials) and test scoring (N_test^2: the MLPs score
    every (query, item) pair through the network) of one learned variant."""
    cfg = config.get("learn", {})
    fixed, train_s, score_s = LEARN_TERMS.get(variant, max(LEARN_TERMS.values(), key=sum))
    if variant.startswith("mlp"):
        mlp = cfg.get("mlp", {})
        epochs = int(mlp.get("n_trials", 2)) * int(mlp.get("max_epochs", 3)) / MLP_REF_EPOCHS
        if variant == "mlp_down":
            epochs = int(mlp.get("max_epochs", 3)) / 3
    elif variant == "align":
        epochs = int(cfg.get("align", {}).get("epochs", 100)) / ALIGN_REF_EPOCHS
    else:
        epochs = 1.0
    train, test = _learn_pairs(shape, config)
    ref_train, ref_test = LEARN_REF_PAIRS
    seconds = fixed + train_s * epochs * train / ref_train + score_s * (test / ref_test) ** 2
    return Cost(seconds, LEARN_MB + 4 * shape.embedding_mb)


def mlp_ablation(shape: Shape, config: Mapping[str, Any]) -> Cost:
    """The ablation's MLPs, one after another: training (N x epochs) and test
    scoring (N_test^2)."""
    cfg = config.get("learn", {}).get("ablation", {})
    epochs = (int(cfg.get("paper_epochs", 20)) + int(cfg.get("converge_epochs", 40))) / (
        ABLATION_REF_EPOCHS
    )
    train, test = _learn_pairs(shape, config)
    ref_train, ref_test = LEARN_REF_PAIRS
    train_s, score_s = ABLATION_TERMS
    seconds = ABLATION.seconds + train_s * epochs * train / ref_train
    seconds += score_s * (test / ref_test) ** 2
    return Cost(seconds, ABLATION.mb + 4 * shape.embedding_mb)


def tables(input_mb: float, rule: str) -> Cost:
    """A rule that reads per-query tables: memory and time follow the input."""
    mem_mb, minutes = FALLBACK[rule]
    # The rule's constant stays the floor: these were sized for the default run.
    floor = Cost(minutes * 60 / TIME_SAFETY - JOB_SECONDS, mem_mb / MEMORY_SAFETY - JOB_MB)
    grown = Cost(
        TABLE_FIXED.seconds + TABLE_S_PER_INPUT_MB * input_mb,
        TABLE_FIXED.mb + TABLE_MB_PER_INPUT_MB * input_mb,
    )
    return Cost(max(floor.seconds, grown.seconds), max(floor.mb, grown.mb))


# ---------------------------------------------------------------- the rules' entry


TABLE_RULES = frozenset({"retrieval", "error_analysis", "paired"})


def scatter_count(scatteritem: str | None, default: int = 2) -> int:
    """N of a scatteritem ``i-of-N``."""
    try:
        return max(1, int(str(scatteritem).rsplit("-of-", 1)[1]))
    except (IndexError, ValueError):
        return default


def estimate(
    rule: str,
    files: Sequence[str],
    config: Mapping[str, Any],
    wildcards: Mapping[str, str] | None = None,
    threads: int = 1,
    heads: bool = False,
) -> Cost | None:
    """The cost of a job of ``rule`` reading ``files``; None when the input
    needed to size it is missing."""
    wildcards = wildcards or {}
    files = [str(f) for f in files]
    if rule in TABLE_RULES:
        size = files_mb(files)
        return None if size is None else tables(size, rule)
    if rule in ("embed_shard", "embed_merge", "embed_precomputed"):
        manifest = _named(files, "manifest.parquet")
        counts = manifest_size(manifest) if manifest else None
        if counts is None:
            return None
        images, captions = counts
        if rule == "embed_shard":
            return embed_shard(images, captions, scatter_count(wildcards.get("scatteritem")))
        emb_mb = 4 * (images + captions) * ASSUMED_DIM / MB
        if rule == "embed_precomputed":  # the user's files: their sizes, where larger
            emb_mb = max(emb_mb, files_mb([f for f in files if f != manifest]) or 0.0)
        return embed_merge(emb_mb, captions)
    shape = embedding_shape(files)
    if shape is None:
        return None
    if rule == "adapt":
        return adapt(shape)
    if rule == "retrieval_protocol":
        return retrieval_protocol(shape, wildcards.get("protocol", "full"), config)
    if rule == "geometry":
        return geometry(shape, config, threads)
    if rule == "representation_similarity":
        return representation_similarity(shape, config, heads)
    if rule == "gap_shift":
        return gap_shift(shape, config, heads)
    if rule == "learn":
        return learn(shape, wildcards.get("variant", ""), config)
    if rule == "mlp_ablation":
        return mlp_ablation(shape, config)
    raise KeyError(f"no cost model for rule {rule!r}; known: {', '.join(FALLBACK)}")


def request(
    rule: str,
    files: Sequence[str],
    config: Mapping[str, Any],
    wildcards: Mapping[str, str] | None = None,
    threads: int = 1,
    attempt: int = 1,
    heads: bool = False,
) -> Request:
    """The request of a job of ``rule`` reading ``files`` at ``attempt``: from
    :func:`estimate`, or :data:`FALLBACK` while its input is missing."""
    cost = estimate(rule, files, config, wildcards, threads, heads)
    return fallback(rule, attempt) if cost is None else finish(cost, attempt)


def scaled(
    rule: str, key: str, config: Mapping[str, Any], peers: Sequence[str] = ()
) -> Callable[..., int]:
    """A Snakemake resource function (``key``: ``mem_mb`` or ``runtime``) for
    ``rule``'s jobs.

    ``peers``: other inputs to size the job by as well, taking the largest: for
    a rule submitted as a SLURM job array, whose tasks all get the first job's
    request (the plugin takes one job's resources for the whole array), so every
    job of the rule asks for the largest of the run."""
    if key not in ("mem_mb", "runtime"):
        raise KeyError(f"{key!r}: scaled resources are mem_mb and runtime")
    if rule not in FALLBACK:
        raise KeyError(f"no cost model for rule {rule!r}; known: {', '.join(FALLBACK)}")

    def resource(wildcards: Any, input: Any, threads: int, attempt: int) -> int:
        files = [str(f) for f in input]
        wc = dict(wildcards.items()) if hasattr(wildcards, "items") else dict(wildcards)
        heads = bool(getattr(input, "heads", None))
        value = request(rule, files, config, wc, threads, attempt, heads)[key]
        for peer in peers:
            if os.path.exists(peer):
                other = request(rule, [peer], config, wc, threads, attempt, heads)
                value = max(value, other[key])
        return value

    resource.__name__ = resource.__qualname__ = f"{rule}_{key}"
    return resource


# ---------------------------------------------------------------- what a size asks for


def synthetic_requests(
    config: Mapping[str, Any],
    images: int,
    captions_per_image: int = 1,
    dim: int = 512,
    test_share: float = 0.1,
    threads: Mapping[str, int] | None = None,
    shards: int = 2,
) -> dict[str, Request]:
    """The first-attempt request of every grown rule for a study of ``images``
    images with ``captions_per_image`` captions each, both modalities ``dim``-d,
    a test (and multicaption) split of ``test_share`` of the images; ``threads``
    per rule (default: 2, geometry 8, as the rules declare)."""
    threads = {"geometry": 8, **(threads or {})}
    texts = images * captions_per_image
    test = max(2, round(test_share * images))
    shape = Shape(
        images,
        texts,
        dim,
        dim,
        splits={"train": images - 2 * test, "val": test, "test": test},
        eval_images={"test": test},
        eval_texts={"test": test * captions_per_image},
    )
    out: dict[str, Request] = {}
    out["embed_shard"] = finish(embed_shard(images, texts, shards))
    emb_mb = shape.embedding_mb
    out["embed_merge"] = finish(embed_merge(emb_mb, texts))
    out["adapt"] = finish(adapt(shape))
    for protocol in ("subset", "full", "multicaption"):
        out[f"retrieval_protocol[{protocol}]"] = finish(retrieval_protocol(shape, protocol, config))
    out["geometry"] = finish(geometry(shape, config, threads.get("geometry", 2)))
    heads = "align" in config.get("learn", {}).get("variants", [])
    out["representation_similarity"] = finish(representation_similarity(shape, config, heads))
    out["gap_shift"] = finish(gap_shift(shape, config, heads))
    for variant in config.get("learn", {}).get("variants", list(LEARN_TERMS)):
        out[f"learn[{variant}]"] = finish(learn(shape, variant, config))
    out["mlp_ablation"] = finish(mlp_ablation(shape, config))
    return out


def format_requests(requests: Mapping[str, Request]) -> str:
    width = max(len(name) for name in requests)
    lines = [f"{'rule':<{width}}  {'mem_mb':>8}  {'runtime':>8}"]
    for name, req in requests.items():
        hours = f"({req.runtime / 60:.1f} h)" if req.runtime >= 120 else ""
        lines.append(f"{name:<{width}}  {req.mem_mb:>8}  {req.runtime:>6} min {hours}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a config file (default: the schema's)")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--captions-per-image", type=int, default=1)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--test-share", type=float, default=0.1)
    args = parser.parse_args(argv)
    from mmalign.config import load_config, schema_defaults

    config = load_config(args.config) if args.config else schema_defaults("")
    requests = synthetic_requests(
        config, args.images, args.captions_per_image, args.dim, args.test_share
    )
    print(
        f"{args.images} images x {args.captions_per_image} caption(s), {args.dim}-d, "
        f"test share {args.test_share} (first attempt):"
    )
    print(format_requests(requests))


if __name__ == "__main__":
    main()
