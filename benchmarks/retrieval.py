"""Exact top-10 retrieval, both directions, against named peers in the same run.

- cosine and L2 at N x N (default N = 50,000, d = 512): mmalign's blocked
  engine (one pass of score blocks serves both directions) against faiss-cpu
  exact flat search (IndexFlatIP / IndexFlatL2), which searches each
  direction separately;
- L1 and chi-square: mmalign's numba kernels against a blocked
  ``torch.cdist(p=1)`` baseline (L1) and blocked torch broadcasting
  (chi-square, which cdist cannot do), on ``--kernel-queries`` queries
  against all N items, one direction, since the baselines would take hours at
  N x N.

Prints throughput ratios (peer time / mmalign time; > 1 means mmalign is
faster) and each engine's peak extra memory (RSS above the inputs), sampled.

    python benchmarks/retrieval.py [--n 50000] [--dim 512] [--kernel-queries 1024]
"""

from __future__ import annotations

import argparse
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import torch

from mmalign.metrics import Scorer
from mmalign.retrieval import topk, topk_both_directions

K = 10


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def measure(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(seconds, peak extra RSS in MiB, result)."""
    base, peak, done = rss_mb(), [0.0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb())
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    result = fn()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return seconds, max(peak[0], rss_mb()) - base, result


def faiss_both(index_cls: type, texts: np.ndarray, images: np.ndarray) -> tuple:
    t2i, i2t = index_cls(texts.shape[1]), index_cls(texts.shape[1])
    t2i.add(images)
    i2t.add(texts)
    return t2i.search(texts, K), i2t.search(images, K)


def cdist_l1(queries: torch.Tensor, gallery: torch.Tensor, block: int = 1024) -> torch.Tensor:
    out = []
    for lo in range(0, len(queries), block):
        d = torch.cdist(queries[lo : lo + block], gallery, p=1)
        out.append(torch.topk(d, K, dim=1, largest=False).indices)
    return torch.cat(out)


def broadcast_chi2(
    queries: torch.Tensor, gallery: torch.Tensor, rows: int = 8, cols: int = 8192
) -> torch.Tensor:
    out = []
    for lo in range(0, len(queries), rows):
        q = queries[lo : lo + rows, None, :]
        dist = torch.cat([
            0.5 * ((q - g[None]) ** 2 / (q + g[None])).sum(-1)
            for g in gallery.split(cols)
        ], dim=1)  # fmt: skip
        out.append(torch.topk(dist, K, dim=1, largest=False).indices)
    return torch.cat(out)


def report(
    metric: str,
    ours_s: float,
    ours_mb: float,
    peer: str,
    peer_s: float,
    peer_mb: float,
    agree: float,
    scope: str,
) -> None:
    print(
        f"{metric:>9}: mmalign {ours_s:7.1f} s ({ours_mb:5.0f} MiB extra) | {peer} {peer_s:7.1f} s "
        f"({peer_mb:5.0f} MiB) | ratio {peer_s / ours_s:5.2f}x | top-1 agreement {agree:.4f}{scope}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--kernel-queries", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.n, args.dim), dtype=np.float32)
    texts = (images + rng.standard_normal((args.n, args.dim), dtype=np.float32)).astype(np.float32)
    print(
        f"N = {args.n:,}, d = {args.dim}, top-{K}, {args.threads} threads, "
        f"faiss {faiss.__version__}"
    )

    unit_t = texts / np.linalg.norm(texts, axis=1, keepdims=True)
    unit_i = images / np.linalg.norm(images, axis=1, keepdims=True)
    for metric, index_cls, (qs, gs) in (
        ("cosine", faiss.IndexFlatIP, (unit_t, unit_i)),
        ("euclidean", faiss.IndexFlatL2, (texts, images)),
    ):
        scorer = Scorer(metric, torch.from_numpy(gs))
        ours_s, ours_mb, ((_, ours_t2i), (_, ours_i2t)) = measure(
            functools.partial(topk_both_directions, scorer, qs, K)
        )
        peer_s, peer_mb, ((_, f_t2i), (_, f_i2t)) = measure(
            functools.partial(faiss_both, index_cls, qs, gs)
        )
        agree = min((ours_t2i[:, 0] == f_t2i[:, 0]).mean(), (ours_i2t[:, 0] == f_i2t[:, 0]).mean())
        report(metric, ours_s, ours_mb, "faiss", peer_s, peer_mb, agree, "")

    queries = texts[: args.kernel_queries]
    tq, tg = torch.from_numpy(queries), torch.from_numpy(images)
    for metric, peer_name, peer in (
        ("manhattan", "blocked torch.cdist(p=1)", cdist_l1),
        ("chi2", "blocked torch broadcasting", broadcast_chi2),
    ):
        scorer = Scorer(metric, tg)
        topk(scorer, queries[:2], K)  # compile the kernel outside the timing
        ours_s, ours_mb, (_, ours_idx) = measure(functools.partial(topk, scorer, queries, K))
        peer_s, peer_mb, peer_idx = measure(functools.partial(peer, tq, tg))
        agree = (ours_idx[:, 0] == peer_idx[:, 0].numpy()).mean()
        scope = f" ({args.kernel_queries} queries x {args.n:,})"
        report(metric, ours_s, ours_mb, peer_name, peer_s, peer_mb, agree, scope)


if __name__ == "__main__":
    main()
