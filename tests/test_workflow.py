"""The workflow as users run it: lint, format, plans, and a real tiny run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mmalign import layout
from mmalign.embed import Embeddings

from .conftest import make_openclipart

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else (shutil.which(name) or name)


def run(args: list[str], cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def snakemake(*args: str, cwd: Path = ROOT, timeout: int = 600) -> subprocess.CompletedProcess:
    return run([tool("snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args], cwd, timeout)


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


def dry_run_jobs(stdout: str) -> list[tuple[str, str]]:
    """(rule, its block of lines) for every job a dry run printed."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", stdout):
        if rule := re.match(r"(?:local)?rule (\w+):", block):
            jobs.append((rule.group(1), block))
    return jobs


def planned_threads(cores: int) -> dict[str, int]:
    """rule -> the threads of its jobs in a dry run of the default study on ``cores``
    (Snakemake prints threads only above 1)."""
    proc = snakemake("-n", "--forceall", "--cores", str(cores))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    threads = {}
    for rule, block in dry_run_jobs(proc.stdout):
        found = re.search(r"^\s+threads: (\d+)$", block, re.M)
        threads[rule] = int(found.group(1)) if found else 1
    return threads


def test_analysis_jobs_run_side_by_side_on_a_small_machine() -> None:
    """On 2 cores every analysis job takes one, so two run at once; on 8 they take
    their declared threads, up to half the cores."""
    declared = {"retrieval_protocol": 2, "gap_shift": 2, "geometry": 8,
                "aligned_geometry": 2, "representation_similarity": 2}  # fmt: skip
    two, eight = planned_threads(2), planned_threads(8)
    assert {rule: two[rule] for rule in declared} == dict.fromkeys(declared, 1)
    assert {rule: eight[rule] for rule in declared} == {
        rule: min(n, 4) for rule, n in declared.items()
    }
    assert max(two.values()) == 1  # nothing on the CPU holds both cores


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
def tiny_study(folder: Path, seed: int = 0, n_trials: int = 1) -> list[str]:
    """The default config on a tiny library in ``folder``, with small budgets (the
    unit tests check the numbers); returns the snakemake arguments to run it."""
    root = make_openclipart(folder / "openclipart")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    config["seed"] = seed
    config["datasets"]["openclipart"].update(
        root=str(root), max_pixels=5000, splits={"train": 1, "val": 1, "test": 1}
    )
    config["encoders"]["minilm_effnet_pca384"]["adapter"]["dim"] = 2  # 3 train drawings only
    config["retrieval"] = {"bootstrap": 50}
    config["geometry"] = {"tsne_samples": 10}
    config["alignment"] = {"k": 2, "permutations": 2, "bootstrap": 5}
    config["gap_shift"] = {"lambdas": [0.0, 1.0]}
    config["learn"] = {
        "variants": ["mlp_contrastive", "align"],
        "mlp": {"n_trials": n_trials, "max_epochs": 2},
        "align": {"epochs": 5},
        "ablation": {"hidden": [4], "paper_epochs": 1, "converge_epochs": 2, "negatives": [1]},
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    return ["--cores", "2", "--resources", "gpu=1", "--set-scatter", "embed=2",
            "--directory", str(folder)]  # fmt: skip


def test_default_workflow_on_a_tiny_library(tmp_path: Path) -> None:
    """The default config's real encoders, on a tiny library, in 2 shards;
    a shard already on disk is not recomputed (resume)."""
    common = tiny_study(tmp_path)

    first = snakemake(*common, "results/openclipart/minilm_effnet/shards/1-of-2.npz", cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    proc = snakemake(*common, cwd=tmp_path, timeout=1500)  # every stage; slow on a shared machine
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"embed_shard\s+1\n", proc.stdout + proc.stderr), "shard 1 was recomputed"

    results = tmp_path / "results/openclipart"
    manifest = pd.read_parquet(results / "manifest.parquet")
    assert list(manifest.columns) == [
        "image_id", "image_path", "caption", "caption_idx", "split", "eval_split"
    ]  # fmt: skip
    assert len(manifest) == 9 and (manifest["split"].value_counts() == 3).all()
    report = json.loads((results / "prepare.json").read_text())
    assert report["pairs"] == 9 and report["skipped"]["symlink_duplicate"] == 1
    assert len(pd.read_csv(results / "skipped.csv")) == sum(report["skipped"].values())
    log = (tmp_path / "results/logs/prepare/openclipart.log").read_text()
    assert "openclipart: 9 images, 9 pairs" in log

    raw = Embeddings.load(results / "minilm_effnet/embeddings")
    assert raw.image.shape == (9, 1280) and raw.text.shape == (9, 384)
    assert raw.images["image_id"].tolist() == manifest["image_id"].tolist()
    assert raw.meta["images_per_s"] > 0 and raw.meta["n_shards"] == 2
    pca = Embeddings.load(results / "minilm_effnet_pca384/embeddings")
    assert pca.image.shape == (9, 2) and pca.text.shape == (9, 2)
    assert not (results / "minilm_effnet/shards").exists() or not any(
        (results / "minilm_effnet/shards").iterdir()
    ), "shards are temporary"
    assert (
        "images/s"
        in (tmp_path / "results/logs/embed_shard/openclipart/minilm_effnet/2-of-2.log").read_text()
    )

    retrieval = pd.read_parquet(results / "minilm_effnet_pca384/retrieval.parquet")
    assert set(retrieval["protocol"]) == {"subset", "full", "learned_test"}
    assert set(retrieval["direction"]) == {"t2i", "i2t"}
    fixed = retrieval[retrieval["protocol"] != "learned_test"]
    assert set(fixed["metric"]) == {
        "cosine",
        "euclidean",
        "manhattan",
        "chi2",
        "centered_cosine",
        "csls",
        "qbnorm",
    }
    hit = fixed[(fixed["measure"] == "hit") & (fixed["metric"] == "cosine")]
    assert hit["value"].between(0, 1).all() and (hit["n_queries"] == 9).all()
    raw = pd.read_parquet(results / "minilm_effnet/retrieval.parquet")
    raw_fixed = raw[raw["protocol"] != "learned_test"]
    assert raw_fixed["value"].isna().all()
    assert raw_fixed["note"].str.startswith("n/a: image 1280-d").all()
    # Alignment heads handle the 1280-d vs 384-d pair natively.
    assert raw.loc[raw["metric"] == "align", "value"].notna().any()
    ranks = pd.read_parquet(results / "minilm_effnet_pca384/ranks.parquet")
    assert set(ranks["protocol"]) == {"subset", "full", "learned_test"}
    scored = fixed[(fixed["measure"] == "mrr") & fixed["value"].notna()]
    assert len(ranks) == len(scored) * 9 + 2 * 3 * len(
        set(retrieval.loc[retrieval["protocol"] == "learned_test", "metric"])
    )
    hubness = pd.read_parquet(results / "minilm_effnet_pca384/hubness.parquet")
    assert (hubness["k"] == 10).all() and hubness["never_in_top_k"].between(0, 1).all()
    paired = pd.read_parquet(tmp_path / "results/stats/paired.parquet")
    assert {"encoders", "metrics", "gap_shift", "ablation"} <= set(paired["family"])

    geometry = json.loads((results / "minilm_effnet_pca384/geometry.json").read_text())
    assert geometry["modality_gap"] > 0
    assert (results / "minilm_effnet_pca384/figures/tsne.png").stat().st_size > 0
    alignment = json.loads((results / "minilm_effnet/alignment.json").read_text())["spaces"]
    assert alignment["raw"]["n_items"] == 9 and alignment["raw"]["cka"]["value"] is not None
    assert alignment["test_align"]["note"].startswith("n/a: 3 pairs")  # 3 test pairs
    shift = pd.read_parquet(results / "minilm_effnet_pca384/gap_shift.parquet")
    assert set(shift["space"]) == {"raw", "test_align"} and set(shift["lambda"]) == {0.0, 1.0}
    report = (tmp_path / "results/report.md").read_text()
    assert "## Table 2" in report and "## Table 3" in report
    assert "how aligned are the two spaces" in report and "closing the modality gap" in report
    assert "why the paper's MLP fails" in report
    # Figures 2-5 in the alignment heads' space, for both encoders, in the report;
    # the raw 1280-d vs 384-d pair has no "before" space, the PCA-adapted one does.
    for encoder in ("minilm_effnet", "minilm_effnet_pca384"):
        aligned = json.loads((results / encoder / "aligned_geometry.json").read_text())
        assert aligned["n_pairs"] == 3 and aligned["spaces"]["aligned"]["modality_gap"] > 0
        assert (aligned["spaces"]["raw"]["modality_gap"] is None) == (encoder == "minilm_effnet")
        for name in layout.ALIGNED_FIGURES.values():
            for ext in layout.FIGURE_FORMATS:
                assert (results / encoder / "figures" / f"{name}.{ext}").stat().st_size > 1000
            assert f"(openclipart/{encoder}/figures/{name}.png)" in report
    ablation = pd.read_parquet(results / "minilm_effnet/learn/ablation.parquet")
    assert set(ablation["protocol"]) == {"learned_test"} and (ablation["n_queries"] == 3).all()
    runs = json.loads((tmp_path / "results/mlflow_runs.json").read_text())
    assert runs["created"] > 0 and set(runs["runs"]) == {
        "openclipart/minilm_effnet",
        "openclipart/minilm_effnet_pca384",
    }
    # MLflow's run times are the jobs' (their benchmark files); its Dataset, the manifest.
    from mlflow.tracking import MlflowClient

    from mmalign.tracking import benchmark_file, job_time

    client = MlflowClient(runs["tracking_uri"].replace("///results/", f"///{tmp_path}/results/"))
    parent = client.get_run(runs["runs"]["openclipart/minilm_effnet"])
    children = {
        r.info.run_name: r.info
        for r in client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
        )
    }
    job = job_time(tmp_path / benchmark_file("geometry", "openclipart", "minilm_effnet"))
    assert (children["geometry"].start_time, children["geometry"].end_time) == (
        job.start_ms,
        job.end_ms,
    )
    assert parent.info.start_time == min(c.start_time for c in children.values())
    assert parent.info.end_time == max(c.end_time for c in children.values())
    embed = client.get_run(children["embed"].run_id).data.metrics
    assert embed["benchmark/jobs"] == 3  # 2 shards and the merge
    assert [d.dataset.name for d in parent.inputs.dataset_inputs] == ["openclipart"]

    again = snakemake(*common, "-n", cwd=tmp_path)
    assert "Nothing to be done" in again.stdout + again.stderr

    # The Snakemake report of this run (tests/report_page.py).
    from .report_page import check_snakemake_report

    check_snakemake_report(tmp_path, common, tmp_path / "report_page")
