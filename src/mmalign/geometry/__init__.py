"""The geometry of the two embedding spaces (paper Section 4.3, Table 2, Figures 2-3).

Measures, each on *pairs* ``(image_i, text_i)`` of matched rows:

- the **modality gap** (Liang et al. 2022): the Euclidean distance between the
  two modalities' centroids in the original dimension,
  ``gap = || mean_i x_i - mean_i y_i ||_2``, on raw embeddings by default (the
  paper) or on L2-normalised rows (Liang's definition);
- the **Wasserstein-2 distance** between the image and the text point clouds
  (Table 2): exact optimal transport with POT's network simplex (``ot.emd2``),
  squared Euclidean cost, uniform weights. ``ot.emd2`` returns the optimal
  cost itself, ``W2^2 = min_P sum_ij P_ij ||x_i - y_j||^2`` (squared units),
  recorded as ``w2_squared_*``; its square root ``W2`` (the embeddings' units)
  as ``w2_*``. Each is averaged over seeded random batches of pairs on its own
  (so ``w2_squared_mean`` is the mean of the per-batch costs, not
  ``w2_mean ** 2``);
- the **Gaussian (Bures) W2** between Gaussians fitted to each cloud, in closed
  form: ``W2^2 = ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S2^1/2 S1 S2^1/2)^1/2)``,
  recorded as ``w2_gaussian_squared`` and its square root as ``w2_gaussian``;
- **cosine statistics**: matching pairs against non-matching ones (the "narrow
  cone": contrastive models put every pair at a high cosine) and, within each
  modality, the mean cosine between distinct items (the cone's width).

Units are those of the embeddings (no rescaling). Measures that compare the
two modalities need one space: when the image and text dimensions differ they
are reported as ``None`` with a note naming both dimensions and the fix (an
adapter, e.g. ``adapter: {kind: pca, dim: N}``), never as a crash.

**Pairs.** Each image counts once: the pair of image row ``r`` is its *first*
caption (lowest ``caption_idx``, which is 0 in every dataset adapter). With
``captions: first`` that is every caption row; with ``captions: all`` (five
captions per image in Flickr30K and MS-COCO) the other captions are left out of
the gap, W2, cosine and t-SNE, so the image cloud has no repeated points and
both clouds have one point per image. Retrieval examples rank over *all*
caption rows.

**Figures** (Figures 2-5, Appendix A) are drawn by :mod:`mmalign.geometry.figures`
from what this module computes (the t-SNE points, the modality SVM's decision
values, the cosine matrix, the ranked example queries); the figures fit and
rank nothing themselves.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mmalign import seeding
from mmalign.config import schema_defaults
from mmalign.io import write_json, write_parquet
from mmalign.layout import ALIGNED_FIGURES, DIRECTIONS

if TYPE_CHECKING:  # imported where used: W2 worker processes start without torch or sklearn
    from sklearn.svm import SVC

    from mmalign.embed import Embeddings

log = logging.getLogger(__name__)


class GeometryError(RuntimeError):
    """A geometry measure that cannot be computed; the message says why and what to do."""


# ---------------------------------------------------------------- pairs and dimensions


@dataclass(frozen=True)
class Pairs:
    """Matched rows: ``image[i]`` and ``text[i]`` describe the same item.

    ``image`` is (n x d_image) and ``text`` (n x d_text), float32 as stored;
    ``image_rows`` / ``text_rows`` (n,) are their rows in ``image.npy`` /
    ``text.npy``.
    """

    image: np.ndarray
    text: np.ndarray
    image_rows: np.ndarray
    text_rows: np.ndarray

    def __len__(self) -> int:
        return len(self.image_rows)

    @property
    def same_space(self) -> bool:
        return self.image.shape[1] == self.text.shape[1]


def first_caption_rows(texts: pd.DataFrame) -> np.ndarray:
    """Text row of each image's first caption (lowest ``caption_idx``), in image-row order.

    ``texts`` is ``texts.parquet`` (``image_row, caption_idx``, one row per caption).
    """
    if len(texts) == 0:
        raise GeometryError("texts.parquet has no rows: there are no pairs to measure")
    order = texts.assign(text_row=np.arange(len(texts)))
    order = order.sort_values(["image_row", "caption_idx", "text_row"], kind="stable")
    return order.drop_duplicates("image_row")["text_row"].to_numpy(dtype=np.int64)


def matched_pairs(emb: Embeddings) -> Pairs:
    """One pair per image: the image and its first caption (see the module docstring)."""
    text_rows = first_caption_rows(emb.texts)
    image_rows = emb.texts["image_row"].to_numpy(dtype=np.int64)[text_rows]
    if image_rows.max(initial=-1) >= len(emb.image):
        raise GeometryError(
            f"texts.parquet names image_row {int(image_rows.max())}, but image.npy has "
            f"{len(emb.image)} rows: the embeddings folder is inconsistent; re-run embed_merge"
        )
    return Pairs(
        image=np.asarray(emb.image[image_rows]),
        text=np.asarray(emb.text[text_rows]),
        image_rows=image_rows,
        text_rows=text_rows,
    )


def dimension_note(dim_image: int, dim_text: int) -> str | None:
    """``None`` when the two modalities share one space, else why same-space measures are n/a."""
    if dim_image == dim_text:
        return None
    return (
        f"image {dim_image}-d vs text {dim_text}-d: the two modalities are not in one "
        "space, so measures that compare them (modality gap, Wasserstein-2, cosine, "
        "t-SNE, retrieval) are n/a; use an adapter (pca), e.g. "
        "`adapter: {kind: pca, dim: N}` on the encoder"
    )


def short_dimension_note(dim_image: int, dim_text: int) -> str:
    """The short form, for each measure and figure panel:
    ``"n/a: image 1280-d vs text 384-d; use an adapter (pca)"``."""
    return f"n/a: image {dim_image}-d vs text {dim_text}-d; use an adapter (pca)"


def _require_same_space(x: np.ndarray, y: np.ndarray, what: str) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise GeometryError(f"{what}: expected two 2-D arrays, got shapes {x.shape}, {y.shape}")
    if x.shape[1] != y.shape[1]:
        raise GeometryError(f"{what}: {dimension_note(x.shape[1], y.shape[1])}")
    if len(x) == 0 or len(y) == 0:
        raise GeometryError(f"{what}: an empty point cloud ({len(x)} and {len(y)} rows)")


# ---------------------------------------------------------------- modality gap


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (float64); an all-zero row stays zero."""
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def modality_gap(image: np.ndarray, text: np.ndarray, normalize: bool = False) -> float:
    """Euclidean distance between the modality centroids, ``||mean(x) - mean(y)||_2``.

    ``image`` (n x d) and ``text`` (m x d), in the original dimension, in the
    embeddings' units. ``normalize=True`` first scales every row to unit norm
    (Liang et al. 2022), which bounds the gap by 2.
    """
    _require_same_space(image, text, "modality gap")
    if normalize:
        image, text = l2_normalize(image), l2_normalize(text)
    centre_image = np.mean(image, axis=0, dtype=np.float64)
    centre_text = np.mean(text, axis=0, dtype=np.float64)
    return float(np.linalg.norm(centre_image - centre_text))


# ---------------------------------------------------------------- Wasserstein-2


def emd_iteration_cap(n: int, m: int) -> int:
    """``numItermax`` for an n x m network simplex: generous, so it is a runaway
    guard, not a stopping rule (POT's default, 100,000, stops a 4,000-point
    problem far from optimal and only warns)."""
    return max(1_000_000, 100 * n * m)


def wasserstein2_squared(x: np.ndarray, y: np.ndarray, num_itermax: int | None = None) -> float:
    """Exact squared W2 between two uniform point clouds: the optimal transport
    cost ``ot.emd2(a, b, C)`` itself, in squared units of the embeddings.

    ``x`` (n x d), ``y`` (m x d); cost ``C_ij = ||x_i - y_j||^2`` (``ot.dist``'s
    default ``sqeuclidean``), weights ``a = 1/n`` and ``b = 1/m``. Raises
    :class:`GeometryError` when the network simplex stops before optimality,
    rather than returning a bound. A cost that rounds below 0 is returned as 0.
    """
    import ot  # POT imports scikit-learn: a second per job, for the jobs that need W2 only

    _require_same_space(x, y, "Wasserstein-2")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    cap = num_itermax or emd_iteration_cap(len(x), len(y))
    cost_matrix = ot.dist(x, y)
    with warnings.catch_warnings():
        # The result code below is checked and turned into an error.
        warnings.simplefilter("ignore", UserWarning)
        cost, info = ot.emd2(
            ot.unif(len(x)), ot.unif(len(y)), cost_matrix, numItermax=cap, log=True
        )
    if info.get("result_code") != 1:
        raise GeometryError(
            f"Wasserstein-2: the exact solver did not reach the optimum on a {len(x)} x "
            f"{len(y)} problem (numItermax={cap}, result code {info.get('result_code')}: "
            f"{info.get('warning')}); raise num_itermax or lower w2_batch_size"
        )
    return max(float(cost), 0.0)


def wasserstein2(x: np.ndarray, y: np.ndarray, num_itermax: int | None = None) -> float:
    """Exact W2 between two uniform point clouds, in the embeddings' units:
    ``sqrt(ot.emd2(a, b, C))``, the square root of :func:`wasserstein2_squared`."""
    return math.sqrt(wasserstein2_squared(x, y, num_itermax))


def _wasserstein2_worker(x: np.ndarray, y: np.ndarray, num_itermax: int | None) -> float:
    """The squared W2 (the emd2 cost) of one batch."""
    # One BLAS thread, in the pool and in-process alike: the parallelism is over
    # batches, and the cost matrix's rounding does not depend on the thread count.
    with threadpool_limits(limits=1):
        return wasserstein2_squared(x, y, num_itermax)


@contextlib.contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables (inherited by processes started inside), then restore."""
    saved = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def w2_batch_indices(n: int, batch_size: int, n_batches: int, seed: int) -> list[np.ndarray]:
    """Pair indices of each W2 batch.

    With ``n <= batch_size``: one batch of all ``n`` pairs (more batches would
    all be the same set). Otherwise ``n_batches`` batches of ``batch_size``
    pairs each, cut from a seeded random permutation of the pairs (a fresh one
    when a permutation runs out), so batches are disjoint while
    ``n_batches * batch_size <= n``; ``n_batches = n // batch_size`` is the
    paper's split of the whole dataset into batches (a remainder smaller than
    a batch is left out: W2 on fewer points is biased upwards).
    """
    if n < 1:
        raise GeometryError("Wasserstein-2: no pairs")
    if n <= batch_size:
        return [np.arange(n)]
    rng = seeding.rng(seed, "wasserstein2")
    per_permutation = n // batch_size
    batches: list[np.ndarray] = []
    while len(batches) < n_batches:
        order = rng.permutation(n)
        for k in range(min(per_permutation, n_batches - len(batches))):
            batches.append(np.sort(order[k * batch_size : (k + 1) * batch_size]))
    return batches


@dataclass(frozen=True)
class W2Batches:
    """W2 over batches: ``mean`` and ``std`` (ddof 0) of ``values``, one W2 per
    batch (the embeddings' units); ``squared_mean`` and ``squared_std`` (ddof 0)
    of ``squared_values``, one emd2 cost (W2^2, squared units) per batch, with
    ``values[k] = sqrt(squared_values[k])``."""

    mean: float
    std: float
    values: list[float]
    batch_size: int
    seconds: float
    squared_mean: float
    squared_std: float
    squared_values: list[float]


def wasserstein2_batched(
    image: np.ndarray,
    text: np.ndarray,
    batch_size: int,
    n_batches: int,
    seed: int,
    workers: int = 1,
    num_itermax: int | None = None,
) -> W2Batches:
    """Exact W2 (:func:`wasserstein2`) between matched rows of ``image`` and ``text``
    (both n x d), over the batches of :func:`w2_batch_indices`.

    Batch ``k`` compares ``image[idx_k]`` with ``text[idx_k]``. Batches run in
    ``workers`` processes; the indices are drawn before any work starts and the
    results come back in batch order, so the numbers do not depend on
    ``workers``.
    """
    _require_same_space(image, text, "Wasserstein-2")
    if len(image) != len(text):
        raise GeometryError(
            f"Wasserstein-2 over pairs needs matched rows, got {len(image)} images "
            f"and {len(text)} texts"
        )
    batches = w2_batch_indices(len(image), batch_size, n_batches, seed)
    xs = [np.asarray(image[idx], dtype=np.float64) for idx in batches]
    ys = [np.asarray(text[idx], dtype=np.float64) for idx in batches]
    caps = [num_itermax] * len(batches)
    start = time.perf_counter()
    n_workers = max(1, min(workers, len(batches)))
    if n_workers == 1:
        costs = [_wasserstein2_worker(x, y, cap) for x, y, cap in zip(xs, ys, caps, strict=True)]
    else:
        # spawn: a clean interpreter per worker, safe whatever threads the parent runs.
        # The workers need POT's NumPy backend only; importing torch would cost seconds each.
        with (
            _environment(POT_BACKEND_DISABLE_PYTORCH="1"),
            ProcessPoolExecutor(n_workers, mp_context=get_context("spawn")) as pool,
        ):
            costs = list(pool.map(_wasserstein2_worker, xs, ys, caps))
    seconds = time.perf_counter() - start
    squared = np.asarray(costs, dtype=np.float64)
    array = np.sqrt(squared)
    log.info(
        "W2 over %d batch(es) of %d pairs: %.4f +- %.4f (W2^2 %.4f +- %.4f; %.1f s, %d worker(s))",
        len(batches),
        len(batches[0]),
        array.mean(),
        array.std(),
        squared.mean(),
        squared.std(),
        seconds,
        n_workers,
    )
    return W2Batches(
        mean=float(array.mean()),
        std=float(array.std()),
        values=[float(v) for v in array],
        batch_size=len(batches[0]),
        seconds=seconds,
        squared_mean=float(squared.mean()),
        squared_std=float(squared.std()),
        squared_values=[float(v) for v in squared],
    )


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a PSD matrix; tiny negative eigenvalues (rounding) become 0."""
    eigvals, eigvecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T


def gaussian_w2_squared_from_moments(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """Closed-form squared W2 between N(mean1, cov1) and N(mean2, cov2) (the squared
    Bures-Wasserstein distance, squared units):
    ``W2^2 = ||m1 - m2||^2 + tr(S1) + tr(S2) - 2 tr((S2^1/2 S1 S2^1/2)^1/2)``.

    Means (d,), covariances (d x d), symmetric PSD. Square roots go through
    ``eigh`` with negative eigenvalues from rounding clipped to 0; a total that
    rounds below 0 is returned as 0.
    """
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root2 = _psd_sqrt(cov2)
    cross = root2 @ cov1 @ root2
    cross_eigvals = np.clip(np.linalg.eigvalsh((cross + cross.T) / 2), 0.0, None)
    squared = (
        float(np.sum((mean1 - mean2) ** 2))
        + float(np.trace(cov1) + np.trace(cov2))
        - 2.0 * float(np.sum(np.sqrt(cross_eigvals)))
    )
    return max(squared, 0.0)


def gaussian_w2_from_moments(
    mean1: np.ndarray, cov1: np.ndarray, mean2: np.ndarray, cov2: np.ndarray
) -> float:
    """Closed-form W2 between N(mean1, cov1) and N(mean2, cov2) (the Bures-Wasserstein
    distance, the embeddings' units): the square root of
    :func:`gaussian_w2_squared_from_moments`."""
    return math.sqrt(gaussian_w2_squared_from_moments(mean1, cov1, mean2, cov2))


def gaussian_w2_squared(x: np.ndarray, y: np.ndarray) -> float:
    """Squared W2 between Gaussians fitted to ``x`` (n x d) and ``y`` (m x d): sample
    means and unbiased covariances (``np.cov``, ddof 1), then
    :func:`gaussian_w2_squared_from_moments` (squared units)."""
    _require_same_space(x, y, "Gaussian W2")
    if len(x) < 2 or len(y) < 2:
        raise GeometryError(f"Gaussian W2 needs 2+ points per cloud, got {len(x)} and {len(y)}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    return gaussian_w2_squared_from_moments(
        x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    )


def gaussian_w2(x: np.ndarray, y: np.ndarray) -> float:
    """W2 between Gaussians fitted to ``x`` and ``y`` (the embeddings' units): the
    square root of :func:`gaussian_w2_squared`."""
    return math.sqrt(gaussian_w2_squared(x, y))


# ---------------------------------------------------------------- cosine statistics


def _stats(values: np.ndarray) -> dict[str, float | int]:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "count": len(values),
    }


def _distinct_pairs(
    n: int, max_pairs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Index pairs ``(i, j)``, ``i != j``: all ``n (n - 1)`` of them if that is at most
    ``max_pairs``, else ``max_pairs`` drawn uniformly (with replacement). The flag
    says whether they were sampled."""
    if n < 2:
        raise GeometryError(f"non-matching pairs need 2+ items, got {n}")
    if n * (n - 1) <= max_pairs:
        i, j = np.nonzero(~np.eye(n, dtype=bool))
        return i, j, False
    i = rng.integers(0, n, size=max_pairs)
    j = (i + rng.integers(1, n, size=max_pairs)) % n  # uniform over j != i
    return i, j, True


def _row_cosines(a: np.ndarray, b: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """``cos(a[i_k], b[j_k])`` for unit-row ``a``, ``b``, in chunks to bound memory."""
    out = np.empty(len(i))
    step = 65_536
    for lo in range(0, len(i), step):
        sl = slice(lo, lo + step)
        out[sl] = np.einsum("kd,kd->k", a[i[sl]], b[j[sl]])
    return out


def cosine_stats(
    image: np.ndarray, text: np.ndarray, seed: int, max_pairs: int = 200_000
) -> dict[str, Any]:
    """Cosine similarity of matching against non-matching pairs, and within each modality.

    ``image`` and ``text`` are (n x d) with matched rows. ``matching``: the n
    values ``cos(image_i, text_i)``; ``non_matching``: ``cos(image_i, text_j)``,
    ``i != j``, all of them when ``n (n - 1) <= max_pairs``, else a seeded
    uniform sample of ``max_pairs``; ``margin`` = matching mean - non-matching
    mean. ``within_image`` / ``within_text``: ``cos`` between distinct items of
    one modality (same sampling), the width of each modality's cone (near 1 =
    every embedding points the same way). Each entry has ``mean``, ``std``
    (ddof 0) and ``count``.
    """
    _require_same_space(image, text, "cosine similarity")
    if len(image) != len(text):
        raise GeometryError(f"cosine: {len(image)} images vs {len(text)} texts are not pairs")
    unit_image, unit_text = l2_normalize(image), l2_normalize(text)
    n = len(unit_image)
    matching = np.einsum("kd,kd->k", unit_image, unit_text)
    i, j, sampled = _distinct_pairs(n, max_pairs, seeding.rng(seed, "cosine/non_matching"))
    non_matching = _row_cosines(unit_image, unit_text, i, j)
    result: dict[str, Any] = {
        "matching": _stats(matching),
        "non_matching": {**_stats(non_matching), "sampled": sampled},
    }
    result["margin"] = result["matching"]["mean"] - result["non_matching"]["mean"]
    for name, unit in (("within_image", unit_image), ("within_text", unit_text)):
        i, j, sampled = _distinct_pairs(n, max_pairs, seeding.rng(seed, f"cosine/{name}"))
        result[name] = {**_stats(_row_cosines(unit, unit, i, j)), "sampled": sampled}
    return result


def cosine_matrix(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``C[i, j] = cos(text_i, image_j)``: rows texts (m x d), columns images (n x d)."""
    _require_same_space(text, image, "cosine matrix")
    return l2_normalize(text) @ l2_normalize(image).T


def rank_by_cosine(query: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidate rows (n x d) by descending cosine to ``query`` (d,); ties keep row
    order. Returns (order (n,), cosines (n,) in candidate-row order)."""
    _require_same_space(query[None, :], candidates, "retrieval")
    scores = l2_normalize(candidates) @ l2_normalize(query[None, :])[0]
    return np.argsort(-scores, kind="stable"), scores


# ---------------------------------------------------------------- what Figures 3-5 show


def cosine_matrix_sample(pairs: Pairs, n_pairs: int, seed: int) -> np.ndarray:
    """Figure 3's matrix: :func:`cosine_matrix` of ``min(n_pairs, len(pairs))``
    seeded random pairs (in pair order), so the diagonal holds the matching pairs."""
    m = min(n_pairs, len(pairs))
    chosen = np.sort(seeding.rng(seed, "cosine_matrix").choice(len(pairs), size=m, replace=False))
    return cosine_matrix(pairs.text[chosen], pairs.image[chosen])


def retrieval_example(
    emb: Embeddings, direction: str, seed: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Figure 4 (``t2i``) or 5 (``i2t``): a seeded random query (a caption row, or
    an image row) ranked by cosine over *all* candidates (every image, or every
    caption row). Returns (query row, candidate rows by descending cosine, the
    cosine of each candidate row, whether each candidate row is a true match:
    the caption's image, or any caption of the image)."""
    image_row = emb.texts["image_row"].to_numpy()
    if direction == "t2i":
        query = int(seeding.rng(seed, "retrieval/t2i").integers(len(emb.text)))
        order, scores = rank_by_cosine(np.asarray(emb.text[query]), np.asarray(emb.image))
        relevant = np.arange(len(emb.image)) == int(image_row[query])
    elif direction == "i2t":
        query = int(seeding.rng(seed, "retrieval/i2t").integers(len(emb.image)))
        order, scores = rank_by_cosine(np.asarray(emb.image[query]), np.asarray(emb.text))
        relevant = image_row == query
    else:
        raise ValueError(f"unknown direction {direction!r}; known: {DIRECTIONS}")
    return query, order, scores, relevant


def image_paths(emb: Embeddings, captions: pd.DataFrame) -> np.ndarray:
    """``image_path`` of each row of ``image.npy`` (``images.parquet`` has none; the
    manifest has one per caption row)."""
    path_of = captions.drop_duplicates("image_id").set_index("image_id")["image_path"]
    missing = ~emb.images["image_id"].isin(path_of.index)
    if missing.any():
        first = emb.images["image_id"][missing].iloc[0]
        raise ValueError(
            f"images.parquet: image_id {first!r} is not in the manifest; re-run the embed rules"
        )
    return path_of.loc[emb.images["image_id"]].to_numpy()


# ---------------------------------------------------------------- t-SNE and its SVM


def tsne_points(pairs: Pairs, n_samples: int, seed: int, n_jobs: int = 1) -> pd.DataFrame:
    """2-D t-SNE of ``n_samples`` seeded pairs, both modalities embedded together
    (paper Figure 2; raw features, as the paper). Returns one row per point:
    ``pair`` (index into ``pairs``), ``modality`` ("image" | "text"), ``x``, ``y``.

    Perplexity is 30 (scikit-learn's default), lowered for tiny samples so it
    stays below the number of points.
    """
    _require_same_space(pairs.image, pairs.text, "t-SNE")
    m = min(n_samples, len(pairs))
    if m < 3:
        raise GeometryError(f"t-SNE needs 3+ pairs, got {m}")
    chosen = np.sort(seeding.rng(seed, "tsne").choice(len(pairs), size=m, replace=False))
    from sklearn.manifold import TSNE

    points = np.vstack([pairs.image[chosen], pairs.text[chosen]]).astype(np.float64)
    perplexity = min(30.0, (len(points) - 1) / 3)
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        random_state=seeding.int_seed(seed, "tsne/init"),
        n_jobs=n_jobs,
    )
    xy = tsne.fit_transform(points)
    return pd.DataFrame(
        {
            "pair": np.concatenate([chosen, chosen]),
            "modality": ["image"] * m + ["text"] * m,
            "x": xy[:, 0],
            "y": xy[:, 1],
        }
    )


def modality_svm(points: pd.DataFrame) -> tuple[SVC, float]:
    """An RBF-kernel SVM separating image from text points in the t-SNE plane
    (paper Figure 2's contours; label 1 = text). Returns (the fitted model, its
    training accuracy, 0.5 = inseparable, 1 = fully separated)."""
    from sklearn.svm import SVC

    xy = points[["x", "y"]].to_numpy()
    labels = (points["modality"] == "text").to_numpy().astype(int)
    svm = SVC(kernel="rbf", gamma="scale", C=1.0)
    svm.fit(xy, labels)
    return svm, float(svm.score(xy, labels))


#: Grid points per side on which the figure draws the SVM boundary.
BOUNDARY_GRID = 160
#: The columns of ``tsne_boundary.parquet`` and their types.
BOUNDARY_COLUMNS = {
    "row": np.int64,
    "col": np.int64,
    "x": np.float64,
    "y": np.float64,
    "decision": np.float64,
}


def tsne_boundary(points: pd.DataFrame, svm: SVC, size: int = BOUNDARY_GRID) -> pd.DataFrame:
    """The SVM's decision values on a ``size`` x ``size`` grid over the t-SNE plane
    (the points' extent, 5% margin on each side), where Figure 2 draws the
    boundary (the zero level; > 0 = the text side). One row per grid point:
    ``row`` (along y), ``col`` (along x), ``x``, ``y``, ``decision``."""
    pad_x = 0.05 * float(np.ptp(points["x"]))
    pad_y = 0.05 * float(np.ptp(points["y"]))
    grid_x, grid_y = np.meshgrid(
        np.linspace(points["x"].min() - pad_x, points["x"].max() + pad_x, size),
        np.linspace(points["y"].min() - pad_y, points["y"].max() + pad_y, size),
    )
    decision = svm.decision_function(np.c_[grid_x.ravel(), grid_y.ravel()])
    rows, cols = np.indices(grid_x.shape)
    return pd.DataFrame(
        {
            "row": rows.ravel().astype(np.int64),
            "col": cols.ravel().astype(np.int64),
            "x": grid_x.ravel(),
            "y": grid_y.ravel(),
            "decision": decision.astype(np.float64),
        }
    )


def precision_upper_bounds(k_max: int = 10, captions_per_image: int = 5) -> pd.DataFrame:
    """The best possible precision@K (paper Appendix A) for K = 1..k_max.

    Image-to-text with ``c`` relevant captions per image: ``min(1, c / K)``;
    text-to-image with one relevant image per caption: ``1 / K``.
    """
    if k_max < 1 or captions_per_image < 1:
        raise ValueError(
            f"k_max and captions_per_image must be >= 1, got {k_max} and {captions_per_image}"
        )
    k = np.arange(1, k_max + 1)
    return pd.DataFrame(
        {
            "k": k,
            "image_to_text": np.minimum(1.0, captions_per_image / k),
            "text_to_image": 1.0 / k,
        }
    )


# ---------------------------------------------------------------- the rule


_DEFAULTS = schema_defaults("geometry")


@dataclass(frozen=True)
class GeometryConfig:
    """``config["geometry"]``, validated (the schema documents each key and gives the defaults)."""

    normalize: bool = _DEFAULTS["normalize"]
    w2_batch_size: int = _DEFAULTS["w2_batch_size"]
    w2_batches: int = _DEFAULTS["w2_batches"]
    tsne_samples: int = _DEFAULTS["tsne_samples"]
    heatmap_pairs: int = _DEFAULTS["heatmap_pairs"]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GeometryConfig:
        unknown = sorted(set(cfg) - set(cls.__dataclass_fields__))
        if unknown:
            raise GeometryError(f"geometry config: unknown key(s) {unknown}")
        return cls(**cfg)


def geometry_summary(
    pairs: Pairs, cfg: GeometryConfig, seed: int, workers: int = 1
) -> dict[str, Any]:
    """Every number of ``geometry.json`` that comes from the embeddings (see the
    module docstring); same-space measures are ``None`` with a note on a
    dimension mismatch.

    Wasserstein-2 keys: ``w2_mean``, ``w2_std``, ``w2_batches`` are W2 =
    sqrt(emd2 cost) per batch (the embeddings' units) and their mean and std
    (ddof 0); ``w2_squared_mean``, ``w2_squared_std``, ``w2_squared_batches``
    the emd2 cost itself (W2^2, squared units); ``w2_gaussian`` and
    ``w2_gaussian_squared`` the closed form's W2 and W2^2."""
    dim_image, dim_text = pairs.image.shape[1], pairs.text.shape[1]
    summary: dict[str, Any] = {
        "n_pairs": len(pairs),
        "pairs": "one per image: its first caption (lowest caption_idx)",
        "dims": {"image": dim_image, "text": dim_text},
        "centroid_norm": {
            "image": float(np.linalg.norm(np.mean(pairs.image, axis=0, dtype=np.float64))),
            "text": float(np.linalg.norm(np.mean(pairs.text, axis=0, dtype=np.float64))),
        },
        "notes": {},
    }
    note = dimension_note(dim_image, dim_text)
    if note is not None:
        log.warning("%s", note)
        for key in (
            "modality_gap",
            "modality_gap_raw",
            "modality_gap_normalized",
            "w2_mean",
            "w2_std",
            "w2_batches",
            "w2_batch_size",
            "w2_seconds",
            "w2_squared_mean",
            "w2_squared_std",
            "w2_squared_batches",
            "w2_gaussian",
            "w2_gaussian_squared",
            "cosine",
        ):
            summary[key] = None
        short = short_dimension_note(dim_image, dim_text)
        summary["notes"] = {
            "dimensions": note,
            **{key: short for key in ("modality_gap", "wasserstein2", "w2_gaussian", "cosine")},
        }
        return summary

    raw = modality_gap(pairs.image, pairs.text)
    normalized = modality_gap(pairs.image, pairs.text, normalize=True)
    summary["modality_gap"] = normalized if cfg.normalize else raw
    summary["modality_gap_raw"] = raw
    summary["modality_gap_normalized"] = normalized
    summary["notes"]["modality_gap"] = (
        "centroid distance of L2-normalised embeddings (Liang et al. 2022)"
        if cfg.normalize
        else "centroid distance of raw embeddings, original dimension (the paper)"
    )
    w2 = wasserstein2_batched(
        pairs.image, pairs.text, cfg.w2_batch_size, cfg.w2_batches, seed, workers
    )
    summary.update(
        w2_mean=w2.mean,
        w2_std=w2.std,
        w2_batches=w2.values,
        w2_batch_size=w2.batch_size,
        w2_seconds=w2.seconds,
        w2_squared_mean=w2.squared_mean,
        w2_squared_std=w2.squared_std,
        w2_squared_batches=w2.squared_values,
    )
    if len(pairs) <= cfg.w2_batch_size:
        summary["notes"]["wasserstein2"] = (
            f"{len(pairs)} pairs <= w2_batch_size {cfg.w2_batch_size}: one batch of all "
            "pairs (std 0); raw embeddings"
        )
    else:
        summary["notes"]["wasserstein2"] = (
            f"{len(w2.values)} seeded batches of {w2.batch_size} pairs; raw embeddings"
        )
    summary["notes"]["w2_squared"] = (
        "w2_squared_*: the exact OT cost ot.emd2 with squared Euclidean ground cost "
        "(W2^2, squared units); w2_*: its square root (W2, the embeddings' units); each "
        "averaged over batches on its own; w2_gaussian_squared / w2_gaussian likewise"
    )
    squared = gaussian_w2_squared(pairs.image, pairs.text)
    summary["w2_gaussian_squared"] = squared
    summary["w2_gaussian"] = math.sqrt(squared)
    summary["cosine"] = cosine_stats(pairs.image, pairs.text, seed)
    return summary


def adapter_note(adapter: dict[str, Any] | None) -> str | None:
    """What an adapter (``meta.json``'s ``adapter``) does to these measures, or ``None``."""
    if not adapter:
        return None
    if adapter.get("kind") == "pca":
        return (
            f"pca adapter to {adapter.get('dim')}-d: each modality is centred on its own "
            "train mean and projected on its own principal axes, so both centroids sit "
            "near 0 by construction (a small gap says nothing about alignment) and the "
            "two modalities' axes are unrelated (cosine and W2 compare unaligned axes)"
        )
    return f"adapter {adapter.get('kind')}: the measures are of the adapted embeddings"


def load_captions(manifest_path: str | Path, emb: Embeddings) -> pd.DataFrame:
    """The manifest rows of ``emb.texts`` (``image_id, image_path, caption``), checked
    row by row: the embeddings' rows are the manifest's rows, in order."""
    manifest = pd.read_parquet(manifest_path)
    if len(manifest) != len(emb.texts) or not np.array_equal(
        manifest["image_id"].to_numpy(), emb.texts["image_id"].to_numpy()
    ):
        raise GeometryError(
            f"{manifest_path}: its {len(manifest)} rows do not match the {len(emb.texts)} "
            "caption rows of the embeddings (the manifest changed after embedding); "
            "re-run the embed rules"
        )
    return manifest.reset_index(drop=True)


def geometry_job(
    embeddings_dir: str | Path,
    manifest_path: str | Path,
    geometry_cfg: dict[str, Any],
    seed: int,
    threads: int,
    out_json: str | Path,
    out_tsne: str | Path,
    out_boundary: str | Path,
    figures_dir: str | Path,
    label: dict[str, str] | None = None,
    aligned_figures: bool = False,
) -> dict[str, Any]:
    """The ``geometry`` rule: measures to ``out_json``, t-SNE points to ``out_tsne``
    and the modality SVM's decision values to ``out_boundary`` (:func:`tsne_boundary`;
    both for the grid figure), and the per-(dataset, encoder) figures to
    ``figures_dir``. ``aligned_figures``: the ``aligned_geometry`` rule draws
    Figures 2-5 in the alignment heads' space too, so a figure that is n/a here
    names its counterpart's file (:data:`mmalign.layout.ALIGNED_FIGURES`)."""
    from mmalign.embed import Embeddings
    from mmalign.geometry import figures  # matplotlib only where figures are drawn

    cfg = GeometryConfig.from_config(geometry_cfg)
    emb = Embeddings.load(embeddings_dir)
    captions = load_captions(manifest_path, emb)
    pairs = matched_pairs(emb)
    label = label or {}
    title = " / ".join(label.get(k, "") for k in ("dataset", "encoder") if label.get(k))
    log.info(
        "%s: %d pairs, image %d-d, text %d-d",
        title,
        len(pairs),
        pairs.image.shape[1],
        pairs.text.shape[1],
    )

    summary = {**label, **geometry_summary(pairs, cfg, seed, workers=threads)}
    note = adapter_note(emb.meta.get("adapter"))
    if note is not None:
        summary["notes"]["adapter"] = note
    summary.update(n_images=len(emb.image), n_texts=len(emb.text), seed=seed)
    summary["config"] = asdict(cfg)

    if pairs.same_space:
        start = time.perf_counter()
        points = tsne_points(pairs, cfg.tsne_samples, seed, n_jobs=threads)
        svm, accuracy = modality_svm(points)
        boundary = tsne_boundary(points, svm)
        summary["tsne_svm_accuracy"] = accuracy
        log.info(
            "t-SNE of %d pairs: %.1f s; RBF-SVM separates the modalities with accuracy %.3f",
            len(points) // 2,
            time.perf_counter() - start,
            accuracy,
        )
    else:
        points = pd.DataFrame(
            {
                "pair": pd.Series(dtype=np.int64),
                "modality": pd.Series(dtype=str),
                "x": pd.Series(dtype=np.float64),
                "y": pd.Series(dtype=np.float64),
            }
        )
        boundary = pd.DataFrame({c: pd.Series(dtype=t) for c, t in BOUNDARY_COLUMNS.items()})
        summary["tsne_svm_accuracy"] = None
    write_parquet(points, out_tsne)
    write_parquet(boundary, out_boundary)

    start = time.perf_counter()
    matrix = t2i = i2t = note = None
    if pairs.same_space:
        matrix = cosine_matrix_sample(pairs, cfg.heatmap_pairs, seed)
        paths = image_paths(emb, captions)
        t2i, i2t = (
            figures.RetrievalExample(
                *retrieval_example(emb, direction, seed), paths, captions["caption"]
            )
            for direction in ("t2i", "i2t")
        )
    else:
        note = short_dimension_note(pairs.image.shape[1], pairs.text.shape[1])
    panel = figures.TsnePanel(points, boundary, summary)
    see_also = {raw: f"{name}.png" for raw, name in ALIGNED_FIGURES.items()}
    figures.write_geometry_figures(
        panel, matrix, t2i, i2t, note, title, figures_dir, see_also if aligned_figures else None
    )
    log.info("figures: %.1f s", time.perf_counter() - start)
    write_json(summary, out_json)
    return summary
