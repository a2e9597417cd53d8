"""Exact top-10 retrieval against named peers, each engine in a process of its own.

Every engine runs in a fresh Python process (``subprocess``, one per engine) that
imports only its own library: the faiss processes never import torch, the torch
processes never import faiss (two OpenMP runtimes in one process slowed faiss by
20% here; NOTES.md). Each process loads the same inputs from ``.npy`` files,
runs its engine once on a slice (numba compiles, pages fault in), then
``--repeats`` times; the best time counts, with the process's peak RSS
(``getrusage`` ``ru_maxrss``) and that peak above its setup (its RSS once the
libraries, the inputs and the warm-up are in).

- **cosine and Euclidean**, N x N, both directions: mmalign's engine
  (``mmalign.retrieval.topk_both_directions``: one pass of score blocks serves
  both directions) against faiss-cpu's exact ``IndexFlatIP`` / ``IndexFlatL2``
  (each direction searched on its own), and against the floor, one N x d by
  d x N float32 GEMM in torch, blocked as mmalign blocks it (``torch.mm`` into
  the same ``block_rows_for`` blocks, nothing else): targets >= 3x faiss and
  within 15% of the GEMM. The script also prints faiss's time over two GEMMs:
  where faiss runs each direction at the GEMM's speed (1.0x), any engine that
  computes every score once is at most 2x faiss, whatever its top-k costs.
- **Manhattan**: mmalign's numba kernel against faiss
  ``IndexFlat(d, METRIC_L1)``; target >= 1.0x.
- **chi-square** (faiss has none): mmalign's numba kernel against blocked torch
  (``(q - g)^2 / (q + g)`` summed over the coordinates on (rows x N) blocks, the
  fastest torch form tried; see :func:`torch_chi2_engine`); target >= 3x.
  Non-negative inputs (|x|: histogram-like), so the denominators are positive
  and the engines agree.

Manhattan and chi-square run ``--kernel-queries`` queries against all N items
(one direction, every engine), since their peers would take hours at N x N.
Prints each engine's best and all times, the ratios against the targets, and
the top-1 agreement of mmalign with each peer.

    python benchmarks/retrieval.py [--n 20000] [--d 512] [--repeats 3]
                                   [--kernel-queries 1024] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10
ROOT = Path(__file__).resolve().parents[1]
# (engine, metric) of every child process, in the order they run.
ENGINES = [
    ("gemm", "cosine"),
    ("mmalign", "cosine"),
    ("faiss", "cosine"),
    ("mmalign", "euclidean"),
    ("faiss", "euclidean"),
    ("mmalign", "manhattan"),
    ("faiss", "manhattan"),
    ("mmalign", "chi2"),
    ("torch", "chi2"),
]
# (metric, peer, target ratio peer / mmalign, comparison)
TARGETS = [
    ("cosine", "faiss", 3.0, "faiss IndexFlatIP / mmalign"),
    ("euclidean", "faiss", 3.0, "faiss IndexFlatL2 / mmalign"),
    ("manhattan", "faiss", 1.0, "faiss METRIC_L1 / mmalign"),
    ("chi2", "torch", 3.0, "blocked torch / mmalign"),
]
GEMM_SLACK = 1.15  # mmalign cosine and Euclidean within 15% of one GEMM


# ---------------------------------------------------------------- in a child


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def inputs(data: Path, metric: str, kernel_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(queries, gallery) of ``metric``: texts and images, unit rows for cosine,
    |x| for chi-square; the first ``kernel_queries`` texts for the kernel metrics."""
    texts, images = np.load(data / "texts.npy"), np.load(data / "images.npy")
    if metric == "cosine":
        texts = texts / np.linalg.norm(texts, axis=1, keepdims=True)
        images = images / np.linalg.norm(images, axis=1, keepdims=True)
    elif metric == "chi2":
        texts, images = np.abs(texts), np.abs(images)
    if metric in ("manhattan", "chi2"):
        texts = texts[:kernel_queries]
    return np.ascontiguousarray(texts, np.float32), np.ascontiguousarray(images, np.float32)


def gemm_engine(device: str):
    """One float32 GEMM of queries by gallery^T, in mmalign's blocks (the floor)."""
    import torch

    from mmalign.retrieval import block_rows_for

    def run(queries: np.ndarray, gallery: np.ndarray) -> tuple:
        q, g = (torch.from_numpy(x).to(device) for x in (queries, gallery))
        rows = block_rows_for(len(g), 256)
        buffer = torch.empty(rows, len(g), device=device)
        for start in range(0, len(q), rows):
            chunk = q[start : start + rows]
            torch.mm(chunk, g.T, out=buffer[: len(chunk)])
        if device != "cpu":
            torch.cuda.synchronize()
        return None, None

    return run


def mmalign_engine(metric: str, device: str):
    import torch

    from mmalign.metrics import Scorer
    from mmalign.retrieval import topk, topk_both_directions

    where = None if device == "cpu" else torch.device(device)

    def run(queries: np.ndarray, gallery: np.ndarray) -> tuple:
        scorer = Scorer(metric, torch.from_numpy(gallery), where)
        if metric in ("cosine", "euclidean"):
            (_, t2i), (_, i2t) = topk_both_directions(scorer, queries, K)
            return t2i, i2t
        return topk(scorer, queries, K)[1], None

    return run


def faiss_engine(metric: str, threads: int):
    import faiss

    faiss.omp_set_num_threads(threads)

    def index(dim: int):
        if metric == "cosine":
            return faiss.IndexFlatIP(dim)
        if metric == "euclidean":
            return faiss.IndexFlatL2(dim)
        return faiss.IndexFlat(dim, faiss.METRIC_L1)

    def run(queries: np.ndarray, gallery: np.ndarray) -> tuple:
        t2i = index(gallery.shape[1])
        t2i.add(gallery)
        _, top_t2i = t2i.search(queries, K)
        if metric == "manhattan":
            return top_t2i, None
        i2t = index(queries.shape[1])
        i2t.add(queries)
        _, top_i2t = i2t.search(gallery, K)
        return top_t2i, top_i2t

    return run


def torch_chi2_engine(block_floats: int = 16 * 2**20):
    """Blocked torch: (rows x N) float32 blocks (64 MiB each) accumulated one
    coordinate at a time, top-k kept per query. The fastest torch formulation
    tried here (256 x 2,000 x 512, 2 threads): this 2.0 s, broadcast
    (rows x cols x d) tiles 4.2-9.4 s. Denominators clamped at mmalign's
    CHI2_EPS (the same rule for the non-negative inputs: only exact zeros)."""
    import torch

    eps = 1e-12

    def run(queries: np.ndarray, gallery: np.ndarray) -> tuple:
        q_all, g_t = torch.from_numpy(queries), torch.from_numpy(gallery).T.contiguous()
        rows = max(1, block_floats // len(gallery))
        out = []
        for lo in range(0, len(q_all), rows):
            q = q_all[lo : lo + rows]
            acc = torch.zeros(len(q), len(gallery))
            diff, den = torch.empty_like(acc), torch.empty_like(acc)
            for t in range(q.shape[1]):
                torch.sub(q[:, t, None], g_t[t], out=diff)
                torch.add(q[:, t, None], g_t[t], out=den)
                acc.add_(diff.mul_(diff).div_(den.clamp_(min=eps)))
            out.append(torch.topk(acc, K, dim=1, largest=False).indices)
        return torch.cat(out).numpy(), None

    return run


def child(args: argparse.Namespace) -> None:
    """Run one engine ``--repeats`` times; print its timings as one JSON line."""
    data = Path(args.data)
    if args.engine == "faiss":
        run = faiss_engine(args.metric, args.threads)
    else:
        import torch

        torch.set_num_threads(args.threads)
        if args.engine == "gemm":
            run = gemm_engine(args.device)
        elif args.engine == "mmalign":
            run = mmalign_engine(args.metric, args.device)
        else:
            run = torch_chi2_engine()
    queries, gallery = inputs(data, args.metric, args.kernel_queries)
    if args.metric in ("manhattan", "chi2") or args.engine == "gemm":
        run(queries[:64], gallery)  # warm-up: numba compiles, buffers fault in
    else:
        run(queries[:64], gallery[:64])
    baseline = rss_mb()
    seconds, result = [], (None, None)
    for _ in range(args.repeats):
        start = time.perf_counter()
        result = run(queries, gallery)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    for direction, top in zip(("t2i", "i2t"), result, strict=True):
        if top is not None:
            np.save(data / f"{args.engine}-{args.metric}-{direction}.npy", np.asarray(top)[:, 0])
    print(
        json.dumps(
            {
                "engine": args.engine,
                "metric": args.metric,
                "seconds": seconds,
                "best": min(seconds),
                "peak_mb": peak,
                "extra_mb": peak - baseline,
                "torch": "torch" in sys.modules,
                "faiss": "faiss" in sys.modules,
            }
        )
    )


# ---------------------------------------------------------------- the parent


def spawn(args: argparse.Namespace, data: Path, engine: str, metric: str) -> dict:
    """One engine in a process of its own, its threads pinned by the environment."""
    threads = str(args.threads)
    env = {
        **os.environ,
        **dict.fromkeys(
            ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"),
            threads,
        ),
    }
    cmd = [sys.executable, __file__, "--child", "--engine", engine, "--metric", metric]
    cmd += ["--data", str(data), "--repeats", str(args.repeats), "--threads", threads]
    cmd += ["--kernel-queries", str(args.kernel_queries), "--device", args.device]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"{engine} {metric} failed:\n{proc.stdout}\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    other = "torch" if engine == "faiss" else "faiss"
    if result[other]:
        raise SystemExit(f"{engine} {metric}: its process imported {other}")
    return result


def agreement(data: Path, a: str, b: str, metric: str) -> float:
    """Top-1 agreement of engines a and b, the worse direction of those both ran."""
    values = []
    for direction in ("t2i", "i2t"):
        pa, pb = (data / f"{e}-{metric}-{direction}.npy" for e in (a, b))
        if pa.exists() and pb.exists():
            values.append(float((np.load(pa) == np.load(pb)).mean()))
    return min(values) if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000, help="images = texts (N)")
    parser.add_argument("--d", "--dim", dest="d", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per engine (best)")
    parser.add_argument("--kernel-queries", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--device", default="cpu", help="mmalign's and the GEMM's: cpu | cuda")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--only", nargs="+", metavar="ENGINE:METRIC",
                        help="run only these engines (e.g. gemm:cosine mmalign:cosine); "
                        "ratios need both sides in the same run")  # fmt: skip
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--metric", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.repeats < 1:
        parser.error("--repeats must be at least 1 (3 or more for a best-of)")
    kernel_queries = min(args.kernel_queries, args.n)
    args.kernel_queries = kernel_queries
    print(
        f"N = {args.n:,}, d = {args.d}, top-{K}, {args.threads} threads, best of "
        f"{args.repeats}, device {args.device}; manhattan and chi2: {kernel_queries:,} "
        f"queries x {args.n:,} items; each engine in a process of its own"
    )
    with tempfile.TemporaryDirectory(prefix="mmalign-bench-") as tmp:
        data = Path(tmp)
        rng = np.random.default_rng(0)
        images = rng.standard_normal((args.n, args.d), dtype=np.float32)
        texts = (images + rng.standard_normal((args.n, args.d), dtype=np.float32)).astype(
            np.float32
        )
        np.save(data / "images.npy", images)
        np.save(data / "texts.npy", texts)
        del images, texts
        results: dict[tuple[str, str], dict] = {}
        chosen = [(e, m) for e, m in ENGINES if not args.only or f"{e}:{m}" in args.only]
        for engine, metric in chosen:
            r = spawn(args, data, engine, metric)
            results[engine, metric] = r
            runs = ", ".join(f"{s:.2f}" for s in r["seconds"])
            print(
                f"  {engine:>7} {metric:<9} best {r['best']:8.2f} s  (runs {runs})  "
                f"peak RSS {r['peak_mb']:7.0f} MiB, {r['extra_mb']:6.0f} above its setup"
            )
        print("ratios (peer time / mmalign time; > 1: mmalign faster):")
        missed = []
        for metric, peer, target, label in TARGETS:
            if ("mmalign", metric) not in results or (peer, metric) not in results:
                continue
            ours, theirs = results["mmalign", metric], results[peer, metric]
            ratio = theirs["best"] / ours["best"]
            agree = agreement(data, "mmalign", peer, metric)
            ok = ratio >= target
            missed += [] if ok else [f"{metric} vs {peer}"]
            print(
                f"  {metric:<9} {label:<28} {ratio:6.2f}x  (target >= {target:.1f}x: "
                f"{'met' if ok else 'MISSED'}; top-1 agreement {agree:.4f})"
            )
        gemm = results["gemm", "cosine"]["best"] if ("gemm", "cosine") in results else None
        for metric in ("cosine", "euclidean"):
            if gemm is None or ("mmalign", metric) not in results:
                continue
            over = results["mmalign", metric]["best"] / gemm
            ok = over <= GEMM_SLACK
            missed += [] if ok else [f"{metric} vs GEMM"]
            print(
                f"  {metric:<9} {'mmalign / one GEMM':<28} {over:6.2f}x  (target <= "
                f"{GEMM_SLACK:.2f}x: {'met' if ok else 'MISSED'})"
            )
        for metric in ("cosine", "euclidean"):
            if gemm is None or ("faiss", metric) not in results:
                continue
            print(
                f"  {metric:<9} {'faiss / two GEMMs':<28} "
                f"{results['faiss', metric]['best'] / (2 * gemm):6.2f}x  (faiss searches each "
                "direction; at 1.0x it runs at the GEMM's speed, and no engine that computes "
                "every score once can beat it by more than 2x)"
            )
    if missed and args.check:
        raise SystemExit(f"targets missed: {', '.join(missed)}")


if __name__ == "__main__":
    main()
