"""The default study, cold, end to end: total wall time and seconds per rule.

Copies this checkout (tracked and untracked files that git does not ignore)
into a temporary folder, runs the README's command there on an empty
``results/`` (``snakemake --cores all --resources gpu=1``; the numba cache
starts empty too), and prints the wall time, the 10-minute target, and each
rule's jobs and seconds from Snakemake's benchmark files. The peer measured
in the same run is the sum of the jobs' own seconds: the time the study
would take with one job at a time, so wall / sum says how much the
scheduling overlaps.

    python benchmarks/default_run.py [--cores all] [--keep]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 600.0


def copy_checkout(dest: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def rule_seconds(results: Path) -> dict[str, list[float]]:
    """Seconds of every job per rule (results/benchmarks/<rule>/...tsv, column ``s``)."""
    per_rule: dict[str, list[float]] = defaultdict(list)
    for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
        rule = tsv.relative_to(results / "benchmarks").parts[0].removesuffix(".tsv")
        with tsv.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        per_rule[rule].extend(float(row["s"]) for row in rows)
    return per_rule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cores", default="all")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="mmalign_default_"))
    copy_checkout(work)
    env = {**os.environ, "PYTHONPATH": str(work / "src")}  # the copy's code, not an install
    env.pop("MLFLOW_TRACKING_URI", None)
    snakemake = shutil.which("snakemake") or f"{Path(sys.executable).parent}/snakemake"
    cmd = [snakemake, "--cores", args.cores, "--resources", "gpu=1"]
    print(f"+ {' '.join(cmd)}  (in {work})", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", file=sys.stderr)
        raise SystemExit(f"the default run failed (exit {proc.returncode}); copy kept in {work}")

    per_rule = rule_seconds(work / "results")
    total_jobs = sum(sum(v) for v in per_rule.values())
    print(f"\ndefault study, cold, --cores {args.cores} on {os.cpu_count()} CPUs")
    print(f"wall {wall:.0f} s = {wall / 60:.1f} min; target {TARGET_S:.0f} s: "
          f"{wall / TARGET_S:.2f}x of it")  # fmt: skip
    print(f"sum of job seconds {total_jobs:.0f} s (one job at a time); "
          f"wall / sum = {wall / total_jobs:.2f}\n")  # fmt: skip
    print("| rule | jobs | seconds (sum) | longest job |")
    print("|---|---:|---:|---:|")
    for rule, seconds in sorted(per_rule.items(), key=lambda kv: -sum(kv[1])):
        print(f"| {rule} | {len(seconds)} | {sum(seconds):.0f} | {max(seconds):.0f} |")
    if args.keep:
        print(f"\nkept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
