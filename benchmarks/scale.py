"""How each stage's cost grows with N: the workflow on synthetic studies of N pairs.

For each N, a synthetic study: N tiny images with one caption each (``kind:
folder``) and paired embeddings (``kind: precomputed``, d-dimensional, the
text a noisy linear image of the image, so that retrieval and alignment have
something to find) go through the real workflow (``snakemake --cores C``, every
stage). Each job's seconds and peak RSS come from its Snakemake benchmark file.
Per rule the script fits time ~ N^a over the sizes run (least squares on
log-log), prints the peak memory beside what one N x N float32 matrix would
take (no stage may hold one), and extrapolates the time to Flickr30K (31,783
images x 5 captions) and MS-COCO (118,287 x 5), with the exponent between the
two largest N, at N = sqrt(images x captions): the size whose N x N pairs are
the multi-caption protocol's caption x image pairs, exact for the quadratic
scoring (a stage linear in the captions costs up to 2.2x more, one linear in
the images 2.2x less).

The rules without a benchmark file (:data:`TAIL_RULES`: error analysis, the
report, tracking) are timed by a forced rerun of each alone, with the peak RSS
of its largest process. Beside each rule's longest job at the largest N the
table sets what :mod:`mmalign.resources` asks SLURM for at that N (its runtime
must cover the job, its mem_mb the peak).

The learned stage runs with small fixed budgets (``--learn-budget``: Optuna
trials and epochs), so its growth is per epoch; the sampled stages (t-SNE,
alignment measures' sample, W2 batches) are capped by their config and should
come out flat.

    python benchmarks/scale.py [--n 5000 20000 50000] [--d 512] [--cores all] [--keep]
    python benchmarks/scale.py --reuse /tmp/mmalign_scale_5000_* ...  # kept studies
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
#: N = sqrt(images x captions) of each target (see the module docstring).
TARGETS = {"Flickr30K": math.sqrt(31_783 * 31_783 * 5), "MS-COCO": math.sqrt(118_287 * 118_287 * 5)}


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


def study_config(folder: Path, budget: int, max_pairs: int | None) -> dict:
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
    learn["max_pairs"] = max_pairs
    learn["mlp"] = {**learn.get("mlp", {}), "n_trials": 1, "max_epochs": budget}
    learn["align"] = {**learn.get("align", {}), "epochs": budget}
    learn["ablation"] = {"hidden": [256, 128], "paper_epochs": budget,
                         "converge_epochs": budget, "negatives": [1]}  # fmt: skip
    return config


#: Rules without a benchmark file (error analysis, the report and tracking), each
#: timed by a forced rerun of it alone. (Not ``retrieval``, which only gathers the
#: protocols' files: they are temporary, so its rerun would rerun them.)
TAIL_RULES = ["error_analysis", "precision_upper_bounds", "report", "track"]


def snakemake_cmd(folder: Path, cores: str, *extra: str) -> tuple[list[str], dict[str, str]]:
    snakemake = shutil.which("snakemake") or f"{Path(sys.executable).parent}/snakemake"
    cmd = [snakemake, "--snakefile", str(ROOT / "Snakefile"), "--directory", str(folder),
           "--cores", cores, "--resources", "gpu=1", *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    return cmd, env


#: Runs a command and prints the peak RSS (kB) of the largest process it waited for.
PEAK = ("import resource, subprocess, sys; rc = subprocess.call(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")  # fmt: skip


def run(folder: Path, cores: str, *extra: str) -> tuple[float, float]:
    """(wall seconds, peak RSS in MB of its largest process) of one snakemake
    invocation in ``folder``."""
    cmd, env = snakemake_cmd(folder, cores, *extra)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK, *cmd], cwd=folder, env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"{' '.join(extra)}: the workflow failed (exit {proc.returncode}); "
                         f"kept {folder}")  # fmt: skip
    return time.perf_counter() - start, int(proc.stdout.split()[-1]) / 1024


def run_study(n: int, d: int, cores: str, budget: int, max_pairs: int | None) -> Path:
    """A new synthetic study of ``n`` pairs, run; its folder."""
    folder = Path(tempfile.mkdtemp(prefix=f"mmalign_scale_{n}_"))
    synthetic_study(folder, n, d)
    (folder / "config.yaml").write_text(yaml.safe_dump(study_config(folder, budget, max_pairs)))
    print(f"N = {n:,}: {run(folder, cores)[0]:.0f} s wall ({folder})", flush=True)
    return folder


def study_size(folder: Path) -> tuple[int, int]:
    """(N, d) of a study, from its embeddings' header."""
    n, d = np.load(folder / "embeddings" / "image.npy", mmap_mode="r").shape
    return int(n), int(d)


def measured(folder: Path, cores: str) -> dict[str, tuple[float, float, float]]:
    """{rule: (seconds summed over its jobs, peak RSS in MB, its longest job's
    seconds)} of a study that has run: the benchmark files, and for each of
    :data:`TAIL_RULES` a forced rerun of it alone, written beside them the first
    time (its wall time, snakemake's start of a few seconds included; peak RSS:
    the largest process it waited for, snakemake's own among them)."""
    benchmarks = folder / "results" / "benchmarks"
    for rule in TAIL_RULES:  # measured once per study, then read like the others
        if not (benchmarks / f"{rule}.tsv").exists():
            seconds, peak = run(folder, cores, "--forcerun", rule, "--until", rule)
            (benchmarks / f"{rule}.tsv").write_text(f"s\tmax_rss\n{seconds:.2f}\t{peak:.2f}\n")
    per_rule: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for tsv in benchmarks.rglob("*.tsv"):
        rule = tsv.relative_to(folder / "results" / "benchmarks").parts[0].removesuffix(".tsv")
        with tsv.open() as f:
            for row in csv.DictReader(f, delimiter="\t"):
                rss = float(row["max_rss"]) if row["max_rss"] not in ("", "NA", "-") else math.nan
                per_rule[rule].append((float(row["s"]), rss))
    return {
        rule: (sum(s for s, _ in jobs), max((m for _, m in jobs), default=math.nan),
               max(s for s, _ in jobs))
        for rule, jobs in per_rule.items()
    }  # fmt: skip


def requested(n: int, d: int, budget: int, max_pairs: int | None) -> dict[str, tuple[float, float]]:
    """{rule: (runtime minutes, mem_mb)} that :mod:`mmalign.resources` asks for a
    study of ``n`` pairs (the largest over the rule's job kinds), to set beside the
    measured jobs."""
    from mmalign.config import load_config
    from mmalign.resources import synthetic_requests

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.yaml"
        path.write_text(yaml.safe_dump(study_config(Path(tmp), budget, max_pairs)))
        config = load_config(str(path))
    out: dict[str, tuple[float, float]] = {}
    for name, req in synthetic_requests(config, n, 1, d).items():
        rule = name.split("[")[0]
        minutes, mb = out.get(rule, (0.0, 0.0))
        out[rule] = (max(minutes, req.runtime), max(mb, req.mem_mb))
    out.setdefault("embed_precomputed", out.get("embed_merge", (math.nan, math.nan)))
    return out


def exponent(ns: list[int], seconds: list[float]) -> float:
    """The a of seconds ~ N^a, by least squares on log-log."""
    return float(np.polyfit(np.log(ns), np.log(seconds), 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--cores", default="all")
    parser.add_argument("--learn-budget", type=int, default=2, help="epochs per training")
    parser.add_argument("--learn-max-pairs", type=int, default=20_000,
                        help="learn.max_pairs: the learned stage's pairs (the paper's 20,000, "
                        "as configs/paper.yaml; 0 = all)")  # fmt: skip
    parser.add_argument("--keep", action="store_true", help="keep the studies' folders")
    parser.add_argument("--reuse", nargs="+", type=Path, metavar="FOLDER",
                        help="measure kept studies again instead of running new ones")  # fmt: skip
    args = parser.parse_args()
    max_pairs = args.learn_max_pairs or None
    if args.reuse:
        folders = {study_size(f)[0]: f for f in args.reuse}
        args.d = study_size(args.reuse[0])[1]
    else:
        folders = {n: run_study(n, args.d, args.cores, args.learn_budget, max_pairs)
                   for n in args.n}  # fmt: skip
    ns = sorted(folders)
    runs = {n: measured(folders[n], args.cores) for n in ns}
    if not (args.keep or args.reuse):
        for folder in folders.values():
            shutil.rmtree(folder, ignore_errors=True)
    rules = sorted(
        {r for run in runs.values() for r in run}, key=lambda r: -runs[ns[-1]].get(r, (0,))[0]
    )

    head = " | ".join(f"N={n:,} s" for n in ns)
    print(f"\nd = {args.d}, --cores {args.cores} on {os.cpu_count()} CPUs; "
          f"learned stage: 1 trial, {args.learn_budget} epochs, learn.max_pairs {max_pairs}; "
          "extrapolated with the a between the two largest N\n")  # fmt: skip
    top = f"{ns[-1]:,}"
    print(f"| rule | {head} | a (s ~ N^a) | a, two largest | peak RSS at N={top} (MB) | "
          "N x N float32 (MB) | "
          + " | ".join(f"{t} (h)" for t in TARGETS)
          + f" | longest job at N={top} (min) | its SLURM request (min, MB) |")  # fmt: skip
    print("|---|" + "---:|" * (len(ns) + 6 + len(TARGETS)))
    square = ns[-1] ** 2 * 4 / 2**20
    asked = requested(ns[-1], args.d, args.learn_budget, max_pairs)
    for rule in rules:
        seconds = [runs[n].get(rule, (math.nan,) * 3)[0] for n in ns]
        _, peak, longest = runs[ns[-1]].get(rule, (math.nan,) * 3)
        minutes, mb = asked.get(rule, (math.nan, math.nan))
        usable = [(n, s) for n, s in zip(ns, seconds, strict=True) if s > 0 and math.isfinite(s)]
        a = exponent(*map(list, zip(*usable, strict=True))) if len(usable) >= 2 else math.nan
        # Extrapolated with the local exponent: a stage capped by its config (the learned
        # stage's max_pairs, the sampled ones) stops growing there.
        local = exponent(*map(list, zip(*usable[-2:], strict=True))) if len(usable) >= 2 else a
        last_n, last_s = usable[-1] if usable else (ns[-1], math.nan)
        extrapolated = [last_s * (t / last_n) ** local / 3600 for t in TARGETS.values()]
        cells = " | ".join(f"{s:.1f}" for s in seconds)
        print(f"| {rule} | {cells} | {a:.2f} | {local:.2f} | {peak:.0f} | {square:.0f} | "
              + " | ".join(f"{h:.2f}" for h in extrapolated)
              + f" | {longest / 60:.1f} | {minutes:.0f}, {mb:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
