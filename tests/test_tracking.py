"""MLflow tracking: idempotent logging, a real server's REST API, and the UI in Chromium."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmalign.tracking import benchmark_file, flatten, metric_key, track_all, tracking_uri

CONFIG = {
    "seed": 0,
    "datasets": {"toy": {"kind": "folder", "root": "data"}},
    "encoders": {"enc": {"kind": "hf_clip", "model": "m"}},
    "retrieval": {"ks": [1, 5]},
}


def fake_results(root: Path) -> Path:
    unit = root / "toy" / "enc"
    (unit / "embeddings").mkdir(parents=True)
    (unit / "embeddings" / "meta.json").write_text(
        json.dumps({"images_per_s": 12.5, "dim_image": 8})
    )
    pd.DataFrame(
        {
            "dataset": "toy",
            "encoder": "enc",
            "protocol": "subset",
            "direction": ["t2i", "i2t", "t2i"],
            "metric": "cosine",
            "k": pd.array([1, 1, pd.NA], dtype="Int64"),
            "measure": ["hit", "hit", "mrr"],
            "value": [0.5, np.nan, 0.6],
            "ci_low": 0.4,
            "ci_high": 0.6,
            "n_queries": 10,
            "note": "",
        }
    ).to_parquet(unit / "retrieval.parquet")
    (unit / "geometry.json").write_text(
        json.dumps({"modality_gap": 1.5, "w2_mean": 2.0, "w2_batches": [2.0]})
    )
    (unit / "alignment.json").write_text(
        json.dumps({"spaces": {"raw": {"n_items": 10, "cka": {"value": 0.4, "z": None}}}})
    )
    pd.DataFrame(
        {
            "dataset": "toy", "encoder": "enc", "space": "raw", "lambda": [0.0, 1.0, 1.0],
            "gap": [2.0, 0.0, 0.0],
            "direction": ["t2i", "t2i", "pairs"], "measure": ["hit", "hit", "matching_cosine"],
            "k": pd.array([1, 1, pd.NA], dtype="Int64"), "value": [0.1, 0.3, 0.5],
            "ci_low": 0.0, "ci_high": 0.5, "note": "",
        }
    ).to_parquet(unit / "gap_shift.parquet")  # fmt: skip
    (unit / "figures").mkdir()
    (unit / "figures" / "tsne.png").write_bytes(b"png")
    learn = unit / "learn"
    learn.mkdir()
    (learn / "mlp_mse.json").write_text(
        json.dumps({"best_params": {"layers": 2}, "epochs_run": 7, "stopped_early": True})
    )
    pd.DataFrame(
        {
            "number": [0, 1],
            "state": ["COMPLETE", "COMPLETE"],
            "value": [0.3, 0.2],
            "params_n_layers": [1, 3],
            "params_n_units_l1": pd.array([pd.NA, 200], dtype="Int64"),  # unused by trial 0
            "stopped_early_t2i": [False, True],
            "val_losses_t2i": [[0.5, 0.4], [0.6, 0.3, 0.35]],
        }
    ).to_parquet(learn / "mlp_mse.trials.parquet")
    pd.DataFrame(
        {
            "dataset": "toy", "encoder": "enc", "protocol": "learned_test",
            "direction": ["t2i", "i2t"], "metric": "mlp_ablation:paper",
            "k": pd.array([1, 1], dtype="Int64"), "measure": "hit", "value": [0.1, np.nan],
            "ci_low": 0.0, "ci_high": 0.2, "n_queries": 10, "note": "",
        }
    ).to_parquet(learn / "ablation.parquet")  # fmt: skip
    (learn / "mlp_mse.optuna").mkdir()
    (learn / "mlp_mse.optuna" / "journal.log").write_text('{"op_code": 0}\n')
    pd.DataFrame(
        {"image_id": ["a", "a", "b"], "image_path": ["a.png", "a.png", "b.png"],
         "caption": ["x", "y", "z"], "caption_idx": np.array([0, 1, 0], dtype="int32"),
         "split": "test"}
    ).to_parquet(root / "toy" / "manifest.parquet")  # fmt: skip
    for (rule, extra), (end, rows) in BENCHMARKS.items():
        write_benchmark(root.parent / benchmark_file(rule, "toy", "enc", **dict(extra)), end, rows)
    return root


HEADER = "s\th:m:s\tmax_rss\tmax_vms\tmax_uss\tmax_pss\tio_in\tio_out\tmean_load\tcpu_time"
T0 = 1_700_000_000  # seconds since the epoch: the fake jobs ran in November 2023
#: Fake benchmark files: (rule, wildcards) -> (modification time, rows of (s, max_rss, cpu_time)).
#: Retrieval, alignment, gap shift and the ablation have none: they keep the logging time.
BENCHMARKS = {
    ("embed_shard", (("scatteritem", "1-of-2"),)): (T0 + 100, [(40.0, 700.5, 70.0)]),
    # repeat(2): two rows, one after the other in one job
    ("embed_shard", (("scatteritem", "2-of-2"),)): (
        T0 + 130,
        [(20.0, 900.0, 30.0), (30.0, 800.0, 45.0)],
    ),
    ("embed_merge", ()): (T0 + 140, [(5.0, 300.0, 4.5)]),
    ("geometry", ()): (T0 + 200, [(12.5, None, None)]),  # ended before Snakemake's first sample
    ("learn", (("variant", "mlp_mse"),)): (T0 + 400, [(150.0, 1200.0, 290.0)]),
}


def write_benchmark(file: Path, end_s: float, rows: list) -> None:
    """A benchmark file as Snakemake 9 writes it, modified at ``end_s``."""
    na = lambda x: "NA" if x is None else f"{x:.2f}"  # noqa: E731
    lines = [
        f"{s:.2f}\t0:00:{int(s):02d}\t{na(rss)}\t" + "NA\t" * 6 + na(cpu) for s, rss, cpu in rows
    ]
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text("\n".join([HEADER, *lines]) + "\n")
    os.utime(file, ns=(int(end_s * 1e9), int(end_s * 1e9)))


def track(config: dict, results: Path) -> dict:
    """track_all on what fake_results wrote, named as the track rule names it."""
    unit = results / "toy" / "enc"
    files = {
        "embedding_file": [unit / "embeddings" / "meta.json"],
        "retrieval": [unit / "retrieval.parquet"],
        "geometry": [unit / "geometry.json"],
        "similarity": [unit / "alignment.json"],
        "gap_shift": [unit / "gap_shift.parquet"],
        "ablation": [unit / "learn" / "ablation.parquet"],
        "variant_summary": [unit / "learn" / "mlp_mse.json"],
        "variant_trials": [unit / "learn" / "mlp_mse.trials.parquet"],
        "figure": [unit / "figures" / "tsne.png"],
        "manifest": [results / "toy" / "manifest.parquet"],
        "benchmark": sorted((results / "benchmarks").rglob("*.tsv")),
    }
    return track_all(config, files, "abc123", results / "mlartifacts")


def runs_in(uri: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mmalign")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def test_keys_and_params() -> None:
    assert metric_key("subset", "t2i", "cosine", "hit@10") == "subset/t2i/cosine/hit_at_10"
    assert flatten({"a": {"b": 1, "c": [1, 2]}}) == {"a.b": "1", "a.c": "[1, 2]"}


def test_uri_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri({}) == "sqlite:///results/mlflow.db"
    assert tracking_uri({"mlflow": {"tracking_uri": "sqlite:///x.db"}}) == "sqlite:///x.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking_uri({"mlflow": {"tracking_uri": "sqlite:///x.db"}}) == "sqlite:///env.db"


def log_fake_results(root: Path) -> tuple[str, Path]:
    uri = f"sqlite:///{root / 'mlflow.db'}"
    results = fake_results(root / "results")
    summary = track({**CONFIG, "mlflow": {"tracking_uri": uri}}, results)
    # parent + embed + retrieval + geometry + alignment + gap_shift + mlp_ablation
    # + learned variant + 2 trials
    assert summary["created"] == 10
    return uri, results


@pytest.fixture
def logged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    uri, results = log_fake_results(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri, results


def test_logging_is_idempotent_and_complete(logged: tuple[str, Path]) -> None:
    uri, results = logged
    runs = runs_in(uri)
    assert len(runs) == 10
    by_name = {r.info.run_name: r for r in runs}
    parent = by_name["toy / enc"]
    assert parent.data.tags["git_commit"] == "abc123" and parent.data.tags["dataset"] == "toy"
    assert parent.data.params["encoder.model"] == "m"
    retrieval = by_name["retrieval"]
    assert retrieval.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert retrieval.data.metrics == {
        "subset/t2i/cosine/hit_at_1": 0.5,
        "subset/t2i/cosine/mrr": 0.6,
    }
    assert by_name["embed"].data.metrics["images_per_s"] == 12.5
    assert by_name["mlp_ablation"].data.metrics == {"paper/t2i/hit_at_1": 0.1}
    alignment = by_name["alignment"].data.metrics
    assert alignment == {"spaces/raw/n_items": 10, "spaces/raw/cka/value": 0.4}
    assert by_name["gap_shift"].data.metrics == {
        "raw/lambda_0/t2i/hit_at_1": 0.1, "raw/lambda_1/t2i/hit_at_1": 0.3,
        "raw/lambda_1/pairs/matching_cosine": 0.5, "raw/lambda_0/gap": 2.0,
        "raw/lambda_1/gap": 0.0,
    }  # fmt: skip
    assert by_name["trial 0"].data.params == {"n_layers": "1"}  # no "None" for unused units
    assert by_name["trial 1"].data.params == {"n_layers": "3", "n_units_l1": "200"}
    assert by_name["trial 1"].data.metrics["stopped_early_t2i"] == 1.0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    curve = client.get_metric_history(by_name["trial 1"].info.run_id, "val_losses_t2i")
    assert [(m.step, m.value) for m in curve] == [(1, 0.6), (2, 0.3), (3, 0.35)]
    learned = by_name["learn: mlp_mse"].info.run_id
    assert [f.path for f in client.list_artifacts(learned, "mlp_mse.optuna")] == [
        "mlp_mse.optuna/journal.log"
    ]
    assert (
        by_name["trial 1"].data.tags["mlflow.parentRunId"] == by_name["learn: mlp_mse"].info.run_id
    )

    assert track(CONFIG, results)["created"] == 0  # unchanged: nothing new
    assert len(runs_in(uri)) == 10

    changed = {**CONFIG, "seed": 1}
    assert track(changed, results)["created"] == 10  # new runs, old kept
    assert len(runs_in(uri)) == 20


def test_stage_runs_take_their_jobs_times_and_the_manifest(logged: tuple[str, Path]) -> None:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri, results = logged
    before = int(time.time() * 1000)
    by_name = {r.info.run_name: r for r in runs_in(uri)}

    def span(name: str) -> tuple[int, int]:
        info = by_name[name].info
        return info.start_time, info.end_time

    ms = lambda s: round(s * 1000)  # noqa: E731
    # end = the benchmark file's mtime, start = end - its seconds (repeat rows add
    # up); several jobs: first start to last end.
    assert span("embed") == (ms(T0 + 100 - 40), ms(T0 + 140))  # shard 2: T0+80..T0+130
    assert by_name["embed"].data.metrics | {"images_per_s": 0} == {
        "images_per_s": 0, "dim_image": 8.0, "benchmark/s": 95.0, "benchmark/jobs": 3.0,
        "benchmark/cpu_time": 149.5, "benchmark/max_rss": 900.0,
    }  # fmt: skip
    assert span("geometry") == (ms(T0 + 200 - 12.5), ms(T0 + 200))
    geometry = by_name["geometry"].data.metrics
    assert geometry["benchmark/s"] == 12.5 and "benchmark/cpu_time" not in geometry  # NA
    assert span("learn: mlp_mse") == (ms(T0 + 250), ms(T0 + 400))
    # The parent spans its stage runs (those with jobs' times).
    assert span("toy / enc") == (ms(T0 + 60), ms(T0 + 400))
    assert by_name["toy / enc"].data.metrics["benchmark/s"] == 95 + 12.5 + 150
    # No benchmark file: the time of logging, as before.
    manifest = results / "toy" / "manifest.parquet"
    written = manifest.stat().st_mtime_ns // 10**6  # by fake_results, before tracking
    for name in ("retrieval", "alignment", "trial 0"):
        start, end = span(name)
        assert written <= start <= end <= before
        assert "benchmark/s" not in by_name[name].data.metrics

    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]
    for run in by_name.values():  # every run of the tree: the Dataset column
        (found,) = mlflow.get_run(run.info.run_id).inputs.dataset_inputs
        assert (found.dataset.name, found.dataset.digest) == ("toy", digest)
        assert mlflow.data.get_source(found).uri == str(manifest.resolve())
        context = {t.key: t.value for t in found.tags}["mlflow.data.context"]
        trains = run.info.run_name.startswith(("learn", "trial", "mlp_ablation"))
        assert context == ("train" if trains else "eval")
    dataset = found.dataset
    assert json.loads(dataset.profile) == {"num_rows": 3}
    columns = json.loads(dataset.schema)["mlflow_colspec"]
    assert [(c["name"], c["type"]) for c in columns] == [
        ("image_id", "string"), ("image_path", "string"), ("caption", "string"),
        ("caption_idx", "integer"), ("split", "string"),
    ]  # fmt: skip

    # Times are no content: re-run jobs (new mtimes) with the same results log nothing.
    for bench in (results / "benchmarks").rglob("*.tsv"):
        os.utime(bench)
    assert track(CONFIG, results)["created"] == 0
    assert len(runs_in(uri)) == 10
    assert MlflowClient(uri).get_run(by_name["embed"].info.run_id).info.end_time == ms(T0 + 140)
    # A changed manifest is a new dataset: the tree is logged again.
    pd.read_parquet(manifest).iloc[:2].to_parquet(manifest)
    assert track(CONFIG, results)["created"] == 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str, body: dict | None = None) -> dict:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # slow when loaded
        return json.loads(response.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    uri, _ = log_fake_results(tmp_path_factory.mktemp("served"))
    port = free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [
            mlflow_bin,
            "server",
            "--backend-store-uri",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded 2-core machine starts it slowly
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5):
                    break
            except OSError:  # refused, reset or timed out: not up yet
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail("mlflow server did not start within 180 s")
                time.sleep(0.5)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_server_rest_api_lists_runs_metrics_artifacts(server: str) -> None:
    experiment = get(f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=mmalign")[
        "experiment"
    ]
    runs = get(
        f"{server}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
    )["runs"]
    assert len(runs) == 10
    retrieval = next(r for r in runs if r["info"]["run_name"] == "retrieval")
    assert {m["key"]: m["value"] for m in retrieval["data"]["metrics"]}[
        "subset/t2i/cosine/hit_at_1"
    ] == 0.5
    listed = get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={retrieval['info']['run_id']}")
    assert [f["path"] for f in listed["files"]] == ["retrieval.parquet"]
    geometry = next(r for r in runs if r["info"]["run_name"] == "geometry")
    listed = get(f"{server}/api/2.0/mlflow/artifacts/list?run_id={geometry['info']['run_id']}")
    assert sorted(f["path"] for f in listed["files"]) == ["geometry.json", "tsne.png"]
    parent = next(r for r in runs if r["info"]["run_name"] == "toy / enc")
    (found,) = parent["inputs"]["dataset_inputs"]
    assert found["dataset"]["name"] == "toy" and len(found["dataset"]["digest"]) == 16
    start, end = int(parent["info"]["start_time"]), int(parent["info"]["end_time"])
    assert (start, end) == ((T0 + 60) * 1000, (T0 + 400) * 1000)  # the jobs' span


def test_ui_screenshot_in_headless_chromium(server: str, tmp_path: Path) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip(
            "Debian's chromium is not installed (apt-get install chromium); .ci/run installs it"
        )
    experiment = get(f"{server}/api/2.0/mlflow/experiments/get-by-name?experiment_name=mmalign")[
        "experiment"
    ]
    shot = tmp_path / "experiment.png"
    page = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--window-size=1400,900",
            "--virtual-time-budget=20000",
            f"--screenshot={shot}",
            "--dump-dom",
            f"{server}/#/experiments/{experiment['experiment_id']}/runs",
        ],
        capture_output=True,
        text=True,
        timeout=300,  # a loaded 2-core machine renders slowly
        check=False,
    )
    assert shot.exists() and shot.stat().st_size > 10_000
    # The runs table as rendered: the parent's Dataset column names the manifest
    # (name and digest) and its Duration is the jobs' span, T0+60 to T0+400 s.
    runs = get(
        f"{server}/api/2.0/mlflow/runs/search",
        {"experiment_ids": [experiment["experiment_id"]], "max_results": 100},
    )["runs"]
    parent = next(r for r in runs if r["info"]["run_name"] == "toy / enc")
    digest = parent["inputs"]["dataset_inputs"][0]["dataset"]["digest"]
    assert f"toy ({digest})" in page.stdout and ">5.7min<" in page.stdout
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10  # a rendered page, not a blank one
    keep = Path(__file__).resolve().parents[1] / "results" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / "mlflow_experiment.png")


def test_a_locked_database_is_a_clear_error_and_loses_nothing(
    logged: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    from mmalign.tracking import TrackingError

    uri, results = logged
    changed = {**CONFIG, "seed": 2}
    holder = sqlite3.connect(uri.removeprefix("sqlite:///"))
    holder.execute("BEGIN EXCLUSIVE")  # another process writing, e.g. a second workflow
    try:
        with pytest.raises(TrackingError, match="locked by another process"):
            track(changed, results)
    finally:
        holder.rollback()
        holder.close()
    assert track(changed, results)["created"] == 10  # logged in full now
    assert track(changed, results)["created"] == 0


def test_an_interrupted_tree_is_failed_and_logged_again(
    logged: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    uri, results = logged
    changed = {**CONFIG, "seed": 3}
    real = MlflowClient.log_artifact

    def broken(self, run_id, local_path, artifact_path=None):
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_artifact", broken)
    with pytest.raises(OSError, match="disk full"):
        track(changed, results)
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    failed = [r for r in runs_in(uri) if r.info.status == "FAILED"]
    assert [r.info.run_name for r in failed] == ["toy / enc"]
    assert track(changed, results)["created"] == 10


def test_aligned_figures_go_with_the_aligned_geometry_run(tmp_path: Path) -> None:
    from mmalign import layout
    from mmalign.tracking import unit_runs

    unit = tmp_path / "results" / "toy" / "enc"
    unit.mkdir(parents=True)
    summary = unit / "aligned_geometry.json"
    spaces = {"raw": {"modality_gap": None}, "aligned": {"modality_gap": 0.5}}
    summary.write_text(json.dumps({"n_pairs": 3, "spaces": spaces, "config": {"seed": 1}}))
    aligned = [
        unit / "figures" / f"{name}.{ext}"
        for name in layout.ALIGNED_FIGURES.values()
        for ext in layout.FIGURE_FORMATS
    ]
    files = {"aligned_geometry": [summary], "figure": [*aligned, unit / "figures" / "tsne.png"]}
    runs = {run.name: run for run in unit_runs("toy", "enc", files, CONFIG).children}
    assert set(runs) == {"aligned_geometry"}  # tsne.png belongs to the geometry run
    assert runs["aligned_geometry"].artifacts == [summary, *sorted(aligned)]
    assert runs["aligned_geometry"].metrics == {"n_pairs": 3.0, "spaces/aligned/modality_gap": 0.5}
