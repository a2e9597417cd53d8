"""How each stage's cost grows with N: the workflow on synthetic studies of N pairs.

For each N, a synthetic study: N tiny images with one caption each (``kind:
folder``) and paired embeddings (``kind: precomputed``, d-dimensional, the
text a noisy linear image of the image, so that retrieval and alignment have
something to find) go through the real workflow (``snakemake --cores C``, every
stage). Each job's seconds and peak RSS come from its Snakemake benchmark file.
Per rule the script fits time ~ N^a over the sizes run (least squares on
log-log), prints the peak memory beside what one N x N float32 matrix would
take (no stage may hold one), and extrapolates the time to Flickr30K (31,783
images x 5 captions) and MS-COCO (118,287 x 5) at N = their caption count (the
protocols score captions against images; image-side stages cost less).

The learned stage runs with small fixed budgets (``--learn-budget``: Optuna
trials and epochs), so its growth is per epoch; the sampled stages (t-SNE,
alignment measures' sample, W2 batches) are capped by their config and should
come out flat.

    python benchmarks/scale.py [--n 5000 20000 50000] [--d 512] [--cores all] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"Flickr30K": 31_783 * 5, "MS-COCO": 118_287 * 5}


def synthetic_study(folder: Path, n: int, d: int, seed: int = 0) -> None:
    """The images, captions, embeddings and config of one study of ``n`` pairs."""
    rng = np.random.default_rng(seed)
    images = folder / "data" / "img"
    images.mkdir(parents=True)
    tile = Image.new("RGB", (8, 8), (200, 200, 200))
    ids = [f"img/{i:07d}.png" for i in range(n)]
    for name in ids:
        tile.save(folder / "data" / name)
    with (folder / "data" / "captions.csv").open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "caption"])
        writer.writerows((name, f"synthetic caption {i}") for i, name in enumerate(ids))
    image = rng.standard_normal((n, d), dtype=np.float32)
    mixing = rng.standard_normal((d, d), dtype=np.float32) / math.sqrt(d)
    text = image @ mixing + 0.5 * rng.standard_normal((n, d), dtype=np.float32)
    emb = folder / "embeddings"
    emb.mkdir()
    np.save(emb / "image.npy", image)
    np.save(emb / "text.npy", text.astype(np.float32))
    (emb / "image.ids.csv").write_text("image_id\n" + "\n".join(ids) + "\n")
    (emb / "text.ids.csv").write_text(
        "image_id,caption_idx\n" + "\n".join(f"{i},0" for i in ids) + "\n"
    )


def study_config(folder: Path, budget: int) -> dict:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["datasets"] = {
        "synthetic": {
            "kind": "folder",
            "root": str(folder / "data"),
            "images_dir": ".",
            "captions_file": "captions.csv",
        }
    }
    config["encoders"] = {
        "synthetic": {
            "kind": "precomputed",
            "image": str(folder / "embeddings" / "image.npy"),
            "text": str(folder / "embeddings" / "text.npy"),
        }
    }
    learn = config.setdefault("learn", {})
    learn["mlp"] = {**learn.get("mlp", {}), "n_trials": 1, "max_epochs": budget}
    learn["align"] = {**learn.get("align", {}), "epochs": budget}
    learn["ablation"] = {"hidden": [256, 128], "paper_epochs": budget,
                         "converge_epochs": budget, "negatives": [1]}  # fmt: skip
    return config


def run_study(
    n: int, d: int, cores: str, budget: int, keep: bool
) -> dict[str, tuple[float, float]]:
    """{rule: (seconds summed over its jobs, peak RSS in MB)} of one study."""
    folder = Path(tempfile.mkdtemp(prefix=f"mmalign_scale_{n}_"))
    synthetic_study(folder, n, d)
    (folder / "config.yaml").write_text(yaml.safe_dump(study_config(folder, budget)))
    snakemake = shutil.which("snakemake") or f"{Path(sys.executable).parent}/snakemake"
    cmd = [snakemake, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(folder),
           "--cores", cores, "--resources", "gpu=1"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"N = {n}: the workflow failed (exit {proc.returncode}); kept {folder}")
    print(f"N = {n:,}: {time.perf_counter() - start:.0f} s wall", flush=True)
    per_rule: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for tsv in (folder / "results" / "benchmarks").rglob("*.tsv"):
        rule = tsv.relative_to(folder / "results" / "benchmarks").parts[0].removesuffix(".tsv")
        with tsv.open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rss = float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else math.nan
                per_rule[rule].append((float(row["s"]), rss))
    if not keep:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        rule: (sum(s for s, _ in jobs), max((m for _, m in jobs), default=math.nan))
        for rule, jobs in per_rule.items()
    }


def exponent(ns: list[int], seconds: list[float]) -> float:
    """The a of seconds ~ N^a, by least squares on log-log."""
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--cores", default="all")
    parser.add_argument("--learn-budget", type=int, default=2, help="epochs per training")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    ns = sorted(args.n)
    runs = {n: run_study(n, args.d, args.cores, args.learn_budget, args.keep) for n in ns}
    rules = sorted(
        {r for run in runs.values() for r in run}, key=lambda r: -runs[ns[-1]].get(r, (0,))[0]
    )

    head = " | ".join(f"N={n:,} s" for n in ns)
    print(f"\nd = {args.d}, --cores {args.cores} on {os.cpu_count()} CPUs; "
          f"learned stage: 1 trial, {args.learn_budget} epochs\n")  # fmt: skip
    print(f"| rule | {head} | a (s ~ N^a) | peak RSS at N={ns[-1]:,} (MB) | N x N float32 (MB) | "
          + " | ".join(f"{t} (h)" for t in TARGETS) + " |")  # fmt: skip
    print("|---|" + "---:|" * (len(ns) + 3 + len(TARGETS)))
    square = ns[-1] ** 2 * 4 / 2**20
    for rule in rules:
        seconds = [runs[n].get(rule, (math.nan, math.nan))[0] for n in ns]
        peak = runs[ns[-1]].get(rule, (math.nan, math.nan))[1]
        usable = [(n, s) for n, s in zip(ns, seconds, strict=True) if s > 0 and math.isfinite(s)]
        a = exponent(*map(list, zip(*usable, strict=True))) if len(usable) >= 2 else math.nan
        last_n, last_s = usable[-1] if usable else (ns[-1], math.nan)
        extrapolated = [last_s * (t / last_n) ** a / 3600 for t in TARGETS.values()]
        cells = " | ".join(f"{s:.1f}" for s in seconds)
        print(f"| {rule} | {cells} | {a:.2f} | {peak:.0f} | {square:.0f} | "
              + " | ".join(f"{h:.2f}" for h in extrapolated) + " |")  # fmt: skip


if __name__ == "__main__":
    main()
