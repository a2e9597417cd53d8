"""Similarity metrics between a block of queries and a gallery, as scores.

Every metric returns a score where higher means more similar, so distances
are negated; the paper's rankings (ascending distance, descending cosine) are
then one ordering. Paper Section 3 / Table 1:

- ``cosine``: <q, g> / (|q| |g|);
- ``euclidean``: -|q - g|_2, ranked through -(|q'|^2 + |g'|^2 - 2 <q', g'>)
  so that it runs as one float32 matrix product, where ``q' = q - c`` and
  ``g' = g - c`` are centred by the gallery mean ``c`` (distances are
  translation invariant). Without the centring, embeddings in a narrow cone
  (a common offset much larger than the spread) lose the ranking to
  cancellation: ``|q|^2 + |g|^2`` is then far larger than the squared distance,
  and float32 keeps about 7 digits of it;
- ``manhattan``: -sum_i |q_i - g_i|;
- ``chi2``: -1/2 sum_i (q_i - g_i)^2 / (q_i + g_i), applied *as written* to
  signed embeddings (see PAPER.md): a term whose denominator is exactly 0 uses
  ``CHI2_EPS`` instead; negative denominators are kept, so the "distance" can
  be negative and is not a metric. This is what reproduces the paper's
  near-zero chi-square scores.

Beyond the paper, calibrated cosines that make unrelated pairs score low and
reduce hubness (the paper's open question 2):

- ``centered_cosine``: cosine after subtracting each modality's mean, fitted
  on the evaluated pool of that modality (no labels used);
- ``csls`` (Lample et al. 2018): 2 cos(q, g) - r(g), with r(g) the mean cosine
  of gallery item g to its ``k`` nearest queries (the query-side term is
  constant per query and does not change a ranking);
- ``qbnorm`` (Bogolin et al. 2022, inverted softmax):
  beta cos(q, g) - log sum_{b in B} exp(beta cos(b, g)), with the query bank
  B drawn from training queries, never the evaluated ones.

Manhattan and chi-square have no matrix-product form; they run in numba
kernels (parallel over query rows, vectorised over the dimension).

Two engines fill the score blocks (:class:`Scorer`'s ``device``):

- the *CPU path* (``device=None``, the reference): float32 GEMMs in torch on
  the CPU, the numba kernels for Manhattan and chi-square;
- the *torch path* (a ``torch.device``, CUDA or the CPU): the same torch ops
  for the matrix-product metrics, run on that device in full float32 (no TF32);
  ``torch.cdist(p=1)`` for Manhattan; chi-square accumulated one coordinate at
  a time (:func:`neg_chi2_torch`).

What the torch path guarantees against the CPU path:

- on the CPU device, cosine, Euclidean and the three calibrated cosines run
  the very same ops: bitwise-equal scores, so the same ranks always;
- every score is a float32 sum over the dimension of the same correctly
  rounded terms (products; ``|q_i - g_i|``; ``(q_i - g_i)^2 / (q_i + g_i)``
  with the same zero-denominator rule); only the order of the sum differs
  (cuBLAS's and ``cdist``'s blocking, numba's ``fastmath`` vectorisation). So
  scores are bitwise equal whenever those sums are exact (e.g. embeddings on a
  coarse grid, as the tests use), and ranks are equal whenever the scores a
  rank compares differ by more than the rounding of a d-term float32 sum
  (about d * 2^-24 of the terms' magnitude); a closer pair may swap;
- identical gallery rows score bitwise equal, so exact ties stay exact and are
  broken by the lower index on both paths: the numba kernels, ``cdist`` and
  the chi-square loop reduce every pair by the same code whatever its
  position, and the GEMM libraries do so in practice (tested on the CPU, with
  rows split across blocks and tiles);
- chi-square on the torch path gives bitwise the same scores on every device
  (a fixed sequential order of IEEE operations, one kernel per operation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numba
import numpy as np
import torch

from mmalign.layout import CALIBRATED_METRICS, FIXED_METRICS

METRICS = FIXED_METRICS + CALIBRATED_METRICS
CHI2_EPS = np.float32(1e-12)


@numba.njit(parallel=True, fastmath=True, cache=True)
def _neg_manhattan(q: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    nq, d = q.shape
    ng = g.shape[0]
    for i in numba.prange(nq):
        for j in range(ng):
            acc = np.float32(0.0)
            for t in range(d):
                acc += abs(q[i, t] - g[j, t])
            out[i, j] = -acc


@numba.njit(parallel=True, fastmath=True, cache=True)
def _neg_chi2(q: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    nq, d = q.shape
    ng = g.shape[0]
    for i in numba.prange(nq):
        for j in range(ng):
            acc = np.float32(0.0)
            for t in range(d):
                diff = q[i, t] - g[j, t]
                den = q[i, t] + g[j, t]
                den = den if den != 0 else CHI2_EPS
                acc += diff * diff / den
            out[i, j] = np.float32(-0.5) * acc


def neg_manhattan_torch(q: torch.Tensor, g: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Fill ``out`` (n_q x n_g) with -sum_i |q_i - g_i|, on the tensors' device."""
    return torch.neg(torch.cdist(q, g, p=1), out=out)


def neg_chi2_torch(q: torch.Tensor, g_t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Fill ``out`` (n_q x n_g) with the chi-square score of :func:`neg_chi2`, on the
    tensors' device; ``g_t`` is the gallery transposed (d x n_g, contiguous).

    The sum runs over the d coordinates in order, one elementwise operation per
    kernel: each pair's score is the same sequence of IEEE float32 operations on
    every device and in every block, whatever the block's shape (a torch
    reduction would pick its order by shape and memory alignment). Holds two
    more float32 blocks of ``out``'s size while it runs."""
    diff, den = torch.empty_like(out), torch.empty_like(out)
    out.zero_()
    for t in range(q.shape[1]):
        torch.sub(q[:, t, None], g_t[t], out=diff)
        torch.add(q[:, t, None], g_t[t], out=den)
        den.masked_fill_(den == 0, float(CHI2_EPS))
        out.add_(diff.mul_(diff).div_(den))
    return out.mul_(-0.5)


@contextlib.contextmanager
def full_float32(device: torch.device | None) -> Iterator[None]:
    """Float32 matrix products on ``device`` in full float32 while inside, whatever
    ``torch.set_float32_matmul_precision`` says (TF32 or bfloat16 passes on CUDA
    would move scores by ~1e-3 and change ranks); the setting is restored after."""
    if device is None or device.type != "cuda":
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


def _contiguous32(x: np.ndarray | torch.Tensor) -> np.ndarray:
    array = x.numpy() if isinstance(x, torch.Tensor) else x
    return np.ascontiguousarray(array, dtype=np.float32)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


class Scorer:
    """Scores of query rows against a fixed gallery, for one base metric.

    The constructor turns the raw gallery into what the block product needs,
    once: ``gallery`` holds unit rows for cosine, rows minus ``centre`` (the
    gallery mean, float32) for Euclidean, the rows as given otherwise;
    ``gallery_sq`` the squared norms of the centred Euclidean rows. ``block``
    fills a ``(rows, n_gallery)`` score block. ``offset`` (per gallery item)
    and ``scale`` implement CSLS and QB-Norm on top of cosine.

    ``device`` selects the engine (see the module docstring): None = the CPU
    path; a ``torch.device`` = the torch path on it, the gallery (and
    ``offset``, which must be set on it) held there. ``block_device`` is
    where :meth:`block` wants its queries and ``out``.
    """

    def __init__(
        self, base: str, gallery: torch.Tensor, device: torch.device | None = None
    ) -> None:
        if base not in FIXED_METRICS:
            raise ValueError(f"unknown base metric {base!r}; known: {FIXED_METRICS}")
        self.base = base
        self.device = device
        self.block_device = torch.device("cpu") if device is None else device
        if device is not None:
            gallery = gallery.to(device)
        self.centre: torch.Tensor | None = None
        self.gallery_sq: torch.Tensor | None = None
        if base == "cosine":
            self.gallery = l2_normalize(gallery)
        elif base == "euclidean":
            # Any common translation leaves the distances unchanged; the gallery
            # mean makes the centred rows as small as the spread allows.
            self.centre = gallery.mean(0)
            self.gallery = (gallery - self.centre).contiguous()
            self.gallery_sq = (self.gallery * self.gallery).sum(1)
        else:
            self.gallery = gallery.contiguous()
        kernel_metric = base in ("manhattan", "chi2")
        self.gallery_np = _contiguous32(gallery) if kernel_metric and device is None else None
        # chi-square on the torch path reads the gallery one coordinate (row of g^T) at a time
        self.gallery_t = (
            self.gallery.T.contiguous() if base == "chi2" and device is not None else None
        )
        self.scale = 1.0
        self.offset: torch.Tensor | None = None

    def block(self, queries: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (rows x n_gallery, float32) with ranking scores of ``queries``:
        the metric's scores, or (Euclidean) a monotone transform of them that
        :meth:`values` undoes."""
        with full_float32(self.device):
            if self.base == "cosine":
                torch.mm(l2_normalize(queries), self.gallery.T, out=out)
            elif self.base == "euclidean":
                # Ranked by -|q - g|^2 = 2 <q', g'> - |g'|^2 - |q'|^2 with q' = q - c and
                # g' = g - c (one GEMM, one pass); values() takes the square root.
                centred = queries - self.centre
                torch.addmm(self.gallery_sq, centred, self.gallery.T, beta=-1, alpha=2, out=out)
                out.sub_((centred * centred).sum(1, keepdim=True))
            elif self.device is None:
                kernel = _neg_manhattan if self.base == "manhattan" else _neg_chi2
                kernel(_contiguous32(queries), self.gallery_np, out.numpy())
            elif self.base == "manhattan":
                neg_manhattan_torch(queries.contiguous(), self.gallery, out)
            else:
                neg_chi2_torch(queries, self.gallery_t, out)
        if self.scale != 1.0:
            out.mul_(self.scale)
        if self.offset is not None:
            out.sub_(self.offset)
        return out

    def values(self, ranking_scores: torch.Tensor) -> torch.Tensor:
        """The metric's scores from :meth:`block`'s ranking scores."""
        if self.base == "euclidean":
            return -(-ranking_scores).clamp(min=0).sqrt()
        return ranking_scores


def neg_manhattan(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.empty((len(q), len(g)), dtype=np.float32)
    _neg_manhattan(_contiguous32(q), _contiguous32(g), out)
    return out


def neg_chi2(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    out = np.empty((len(q), len(g)), dtype=np.float32)
    _neg_chi2(_contiguous32(q), _contiguous32(g), out)
    return out
