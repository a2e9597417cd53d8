"""Your own model, end to end: an open_clip model, a transformers SigLIP and
precomputed embeddings each run the tiny study through every stage, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from .test_workflow import snakemake, tiny_study
from .tiny_open_clip import make_tiny_open_clip
from .tiny_precomputed import export_precomputed
from .tiny_siglip import make_tiny_siglip

pytestmark = pytest.mark.workflow
RESULTS = Path("results/openclipart")


def test_three_ways_to_bring_a_model_run_the_whole_study(tmp_path: Path) -> None:
    args = tiny_study(tmp_path)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    config["encoders"] = {
        "minilm_effnet": config["encoders"]["minilm_effnet"],
        "tiny_open_clip": make_tiny_open_clip(tmp_path / "open_clip"),
        "tiny_siglip": make_tiny_siglip(tmp_path / "siglip"),
    }
    config["learn"] |= {"variants": ["align"], "ablation": {"enabled": False}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    first = snakemake(*args, str(RESULTS / "minilm_effnet/embeddings/meta.json"), cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr

    # The default encoder's own embeddings, fed back as precomputed.
    config["encoders"]["mine"] = export_precomputed(
        tmp_path / RESULTS / "minilm_effnet/embeddings", tmp_path / "mine"
    )
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(*args, cwd=tmp_path, timeout=1500)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    results = tmp_path / RESULTS
    runs = json.loads((tmp_path / "results/mlflow_runs.json").read_text())["runs"]
    for encoder in ("tiny_open_clip", "tiny_siglip", "mine"):
        assert f"openclipart/{encoder}" in runs
        rows = pd.read_parquet(results / encoder / "retrieval.parquet")
        assert rows.loc[rows["protocol"] == "learned_test", "value"].notna().any(), encoder
        assert (results / encoder / "geometry.json").exists()
        assert (results / encoder / "alignment.json").exists()
    for encoder, dim in (("tiny_open_clip", 16), ("tiny_siglip", 32)):
        meta = json.loads((results / encoder / "embeddings/meta.json").read_text())
        assert meta["dim_image"] == meta["dim_text"] == dim, meta
        fixed = pd.read_parquet(results / encoder / "retrieval.parquet")
        assert fixed.loc[fixed["protocol"] == "full", "value"].notna().any(), encoder
    report = (tmp_path / "results/report.md").read_text()
    assert "tiny_open_clip" in report and "tiny_siglip" in report and "mine" in report

    mine = pd.read_parquet(results / "mine/retrieval.parquet").drop(columns="encoder")
    original = pd.read_parquet(results / "minilm_effnet/retrieval.parquet").drop(columns="encoder")
    pd.testing.assert_frame_equal(mine, original)
