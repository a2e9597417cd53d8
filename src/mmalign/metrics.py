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
"""

from __future__ import annotations

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
    """

    def __init__(self, base: str, gallery: torch.Tensor) -> None:
        if base not in FIXED_METRICS:
            raise ValueError(f"unknown base metric {base!r}; known: {FIXED_METRICS}")
        self.base = base
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
        self.gallery_np = _contiguous32(gallery) if base in ("manhattan", "chi2") else None
        self.scale = 1.0
        self.offset: torch.Tensor | None = None

    def block(self, queries: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """Fill ``out`` (rows x n_gallery, float32) with ranking scores of ``queries``:
        the metric's scores, or (Euclidean) a monotone transform of them that
        :meth:`values` undoes."""
        if self.base == "cosine":
            torch.mm(l2_normalize(queries), self.gallery.T, out=out)
        elif self.base == "euclidean":
            # Ranked by -|q - g|^2 = 2 <q', g'> - |g'|^2 - |q'|^2 with q' = q - c and
            # g' = g - c (one GEMM, one pass); values() takes the square root.
            centred = queries - self.centre
            torch.addmm(self.gallery_sq, centred, self.gallery.T, beta=-1, alpha=2, out=out)
            out.sub_((centred * centred).sum(1, keepdim=True))
        else:
            kernel = _neg_manhattan if self.base == "manhattan" else _neg_chi2
            kernel(_contiguous32(queries), self.gallery_np, out.numpy())
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
