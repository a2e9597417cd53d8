"""configs/zoo.yaml: OpenCLIP, CLIP and SigLIP over Flickr30K and MS-COCO plans."""

from __future__ import annotations

import re

from mmalign.config import load_config

from .test_workflow import ROOT, snakemake

ZOO = "configs/zoo.yaml"


def test_zoo_config_is_valid() -> None:
    config = load_config(str(ROOT / ZOO))
    assert sorted(config["datasets"]) == ["coco", "flickr30k"]
    kinds = {name: spec["kind"] for name, spec in config["encoders"].items()}
    assert sorted(kinds.values()) == ["hf_clip", "hf_dual", *["open_clip"] * 4]


def test_zoo_config_plans_the_full_grid() -> None:
    proc = snakemake("-n", "--configfile", ZOO, "--quiet", "rules")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    plan = snakemake("-n", "--configfile", ZOO)
    assert plan.returncode == 0, plan.stdout + plan.stderr
    out = plan.stdout + plan.stderr
    for dataset in ("flickr30k", "coco"):
        assert f"results/{dataset}/manifest.parquet" in out
    encoders = load_config(str(ROOT / ZOO))["encoders"]
    merged = set(re.findall(r"results/\w+/(\w+)/embeddings/meta\.json", out))
    assert merged == set(encoders)
    assert "mlp_ablation" not in out
