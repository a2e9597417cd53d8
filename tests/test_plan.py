"""Planning the workflow needs no model stack: `snakemake -n` parses the
Snakefile, validates the config and builds the DAG with torch unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from .test_workflow import ROOT, tool

HEAVY = ("torch", "torchvision", "timm", "transformers", "mlflow", "optuna", "numba", "ot")


def blocked_env(folder: Path) -> dict[str, str]:
    """An environment in which importing any of HEAVY raises ImportError."""
    for name in HEAVY:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ImportError('{name} is blocked: planning must not import it')\n"
        )
    return {**os.environ, "PYTHONPATH": str(folder)}


def test_plan_without_torch(tmp_path: Path) -> None:
    env = blocked_env(tmp_path / "blocked")
    probe = subprocess.run(
        [sys.executable, "-c", "import torch"], env=env, capture_output=True, text=True
    )
    assert probe.returncode != 0 and "torch is blocked" in probe.stderr  # the blocker works

    cmd = [
        tool("snakemake"),
        "--snakefile",
        str(ROOT / "Snakefile"),
        "-n",
        "--forceall",
        "--quiet",
        "rules",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "blocked" not in out
    for rule in ("prepare", "embed_shard", "retrieval_protocol", "learn", "report", "track"):
        assert rule in out, rule
