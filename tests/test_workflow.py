"""The workflow as users run it: lint, format, plans, and a real tiny run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .conftest import make_openclipart

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def run(args: list[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def snakemake(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return run([tool("snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args], cwd=cwd)


def test_snakefmt_is_clean() -> None:
    proc = run([tool("snakefmt"), "--check", "."])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_is_clean() -> None:
    for args in (["check", "."], ["format", "--check", "."]):
        proc = run([tool("ruff"), *args])
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_lint_is_clean() -> None:
    proc = snakemake("--lint")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Lints for" not in proc.stdout + proc.stderr


def test_paper_config_plans_the_full_grid() -> None:
    proc = snakemake("-n", "--configfile", "configs/paper.yaml", "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert "prepare" in out
    plan = snakemake("-n", "--configfile", "configs/paper.yaml", "--printshellcmds")
    for dataset in ("imdb", "flickr30k", "coco"):
        assert f"results/{dataset}/manifest.parquet" in plan.stdout


def test_bad_config_stops_with_the_key(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["datasets"]["openclipart"]["captons"] = "all"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    proc = snakemake("-n", "--configfile", str(path), cwd=tmp_path)
    assert proc.returncode != 0
    assert (
        "datasets.openclipart: unknown key 'captons' (did you mean 'captions'?)"
        in proc.stdout + proc.stderr
    )


@pytest.mark.workflow
def test_default_workflow_on_a_tiny_library(tmp_path: Path) -> None:
    root = make_openclipart(tmp_path / "openclipart")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["datasets"]["openclipart"].update(root=str(root), max_pixels=5000)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(
        "--cores", "2", "--resources", "gpu=1", "--directory", str(tmp_path), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = pd.read_parquet(tmp_path / "results/openclipart/manifest.parquet")
    assert list(manifest.columns) == ["image_id", "image_path", "caption", "caption_idx", "split"]
    assert len(manifest) == 9
    report = yaml.safe_load((tmp_path / "results/openclipart/prepare.json").read_text())
    assert report["pairs"] == 9
    assert report["skipped"]["symlink_duplicate"] == 1
    skipped = pd.read_csv(tmp_path / "results/openclipart/skipped.csv")
    assert len(skipped) == sum(report["skipped"].values())
    log = (tmp_path / "results/logs/prepare/openclipart.log").read_text()
    assert "openclipart: 9 images, 9 pairs" in log
    # A second run has nothing to do.
    again = snakemake("--cores", "2", "--directory", str(tmp_path), "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr
