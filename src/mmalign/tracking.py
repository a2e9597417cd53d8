"""MLflow tracking: the only module that talks to MLflow.

It reads the score files the stages wrote and logs, for every
(dataset, encoder), one parent run with nested runs per stage (embed,
retrieval, geometry, each learned variant, each Optuna trial). Params are the
config that produced the numbers, metrics every figure, artifacts the files.

Logging is idempotent: every run carries a content hash of what it logs (the
files' bytes and its params). A parent whose hash already exists in the
experiment is skipped with all its children, so re-running the workflow
unchanged creates no runs; a changed config or result creates a new parent
and leaves the old ones. One job writes the SQLite store, so parallel writers
never meet ("database is locked").
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mmalign import layout

log = logging.getLogger(__name__)

#: One unit's files by artifact name (mmalign.layout).
UnitFiles = dict[str, list[Path]]

DEFAULT_URI = f"sqlite:///{layout.path('mlflow_db')}"
KEY_TAG, HASH_TAG = "mmalign.key", "mmalign.hash"


def tracking_uri(config: dict[str, Any]) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else the config's ``mlflow.tracking_uri``,
    else ``sqlite:///results/mlflow.db``."""
    return (
        os.environ.get("MLFLOW_TRACKING_URI")
        or config.get("mlflow", {}).get("tracking_uri")
        or DEFAULT_URI
    )


def git_commit(folder: str | Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": "1"}`` (MLflow params are flat strings)."""
    if isinstance(obj, dict):
        out: dict[str, str] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: json.dumps(obj) if isinstance(obj, list) else str(obj)}


def metric_key(*parts: Any) -> str:
    """A key MLflow accepts: ``hit@1`` -> ``hit_at_1``; parts joined by ``/``."""
    return "/".join(
        str(p).replace("@", "_at_") for p in parts if p is not None and str(p) != "<NA>"
    )


def row_metrics(
    frame: pd.DataFrame, key: Callable[[dict[str, Any]], tuple[Any, ...]]
) -> dict[str, float]:
    """Long-form score rows as metrics: ``key(row)`` names the row, then its
    ``measure@k`` (or ``measure``); rows without a value are left out."""
    return {
        metric_key(*key(r), f"{r['measure']}@{r['k']}" if pd.notna(r["k"]) else r["measure"]):
        float(r["value"])
        for r in frame.dropna(subset=["value"]).to_dict("records")
    }  # fmt: skip


def file_digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.name).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


@dataclass
class RunSpec:
    """What one MLflow run will hold."""

    name: str
    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    #: per-step metrics (step = position + 1, e.g. the epoch): loss curves.
    series: dict[str, list[float]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    artifacts: list[Path] = field(default_factory=list)
    children: list[RunSpec] = field(default_factory=list)

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(
            json.dumps(
                [self.name, self.params, self.metrics, self.series], sort_keys=True, default=str
            ).encode()
        )
        h.update(file_digest([p for p in self.artifacts if p.exists()]).encode())
        for child in self.children:
            h.update(child.digest().encode())
        return h.hexdigest()[:16]


def _numbers(obj: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or (isinstance(value, int | float) and math.isfinite(value)):
            out[name] = float(value)
        elif isinstance(value, dict) and key != "config":
            out.update(_numbers(value, f"{name}/"))
    return out


#: The track rule's per-unit inputs: MLflow stage run -> its score file's artifact.
STAGE_FILES = {
    "embed": "embedding_file",
    "retrieval": "retrieval",
    "geometry": "geometry",
    "alignment": "similarity",
    "gap_shift": "gap_shift",
    "mlp_ablation": "ablation",
}
#: Per-unit figures by the stage run they belong to (the rest go with retrieval).
FIGURE_STAGES = {
    **{name: "geometry" for name in layout.GEOMETRY_FIGURES},
    "gap_shift": "gap_shift",
    "mlp_ablation": "mlp_ablation",
}


def unit_files(files: Mapping[str, Sequence[str | Path]]) -> dict[tuple[str, str], UnitFiles]:
    """The track rule's named inputs (artifact name -> files; see
    :mod:`mmalign.layout`), grouped by (dataset, encoder)."""
    units: dict[tuple[str, str], UnitFiles] = {}
    for artifact, paths in files.items():
        for file in paths:
            found = layout.wildcards(artifact, str(file))
            unit = units.setdefault((found["dataset"], found["encoder"]), {})
            unit.setdefault(artifact, []).append(Path(file))
    return units


def _one(files: UnitFiles, artifact: str) -> Path | None:
    found = files.get(artifact, [])
    return found[0] if found else None


def unit_runs(dataset: str, encoder: str, files: UnitFiles, config: dict[str, Any]) -> RunSpec:
    """The parent run of one (dataset, encoder) and its stage runs, from its files."""
    parent = RunSpec(
        name=f"{dataset} / {encoder}",
        params={
            **flatten(config["datasets"][dataset], "dataset"),
            **flatten(config["encoders"][encoder], "encoder"),
            "seed": str(config["seed"]),
        },
        tags={"dataset": dataset, "encoder": encoder},
    )
    figures: dict[str, list[Path]] = {}
    for figure in files.get("figure", []):
        stage = FIGURE_STAGES.get(layout.wildcards("figure", str(figure))["name"], "retrieval")
        figures.setdefault(stage, []).append(figure)
    for stage, artifact in STAGE_FILES.items():
        source = _one(files, artifact)
        if source is None:
            continue
        run = RunSpec(stage, artifacts=[source, *sorted(figures.get(stage, []))])
        if stage == "embed":
            run.params = flatten(config.get("embed", {}), "embed")
            run.metrics = _numbers(json.loads(source.read_text()))
        elif stage == "retrieval":
            run.params = flatten(config.get("retrieval", {}), "retrieval")
            run.metrics = row_metrics(
                pd.read_parquet(source), lambda r: (r["protocol"], r["direction"], r["metric"])
            )
        elif stage in ("geometry", "alignment"):
            run.params = flatten(config.get(stage, {}), stage)
            run.metrics = _numbers(json.loads(source.read_text()))
        elif stage == "gap_shift":
            frame = pd.read_parquet(source).dropna(subset=["value"])
            run.params = flatten(config.get("gap_shift", {}), "gap_shift")
            run.metrics = row_metrics(
                frame, lambda r: (r["space"], f"lambda_{r['lambda']:g}", r["direction"])
            )
            gaps = frame.groupby(["space", "lambda"])["gap"].first()
            run.metrics |= {f"{s}/lambda_{lam:g}/gap": float(g) for (s, lam), g in gaps.items()}
        else:  # mlp_ablation
            run.params = flatten(config.get("learn", {}).get("ablation", {}), "ablation")
            run.metrics = row_metrics(
                pd.read_parquet(source),
                lambda r: (r["metric"].removeprefix("mlp_ablation:"), r["direction"]),
            )
            run.artifacts[1:1] = files.get("ablation_curves", [])
        parent.children.append(run)
    trials = {
        layout.wildcards("variant_trials", str(t))["variant"]: t
        for t in files.get("variant_trials", [])
    }
    for summary in sorted(files.get("variant_summary", [])):
        variant = layout.wildcards("variant_summary", str(summary))["variant"]
        parent.children.append(learned_run(summary, variant, trials.get(variant)))
    return parent


def learned_run(summary: Path, variant: str, trials: Path | None) -> RunSpec:
    """A learned variant: its summary, trials table and Optuna journal (the
    ``variant_study`` folder beside them); each trial as a child run with its
    loss curves."""
    data = json.loads(summary.read_text())
    study = summary.parent / Path(layout.ARTIFACTS["variant_study"]).name.format(variant=variant)
    run = RunSpec(
        f"learn: {variant}",
        params=flatten(data.get("best_params", {}), "best")
        | flatten(data.get("config", {}), "learn"),
        metrics=_numbers({k: v for k, v in data.items() if k not in ("best_params", "config")}),
        artifacts=[summary, *([trials] if trials else []), *([study] if study.is_dir() else [])],
    )
    if trials is not None:
        run.children.extend(trial_run(row) for row in pd.read_parquet(trials).to_dict("records"))
    return run


def trial_run(row: dict[str, Any]) -> RunSpec:
    """One row of a trials table: ``params_*`` as params, numbers and flags
    (``stopped_early_*`` as 0/1) as metrics, per-epoch loss lists as step series."""
    spec = RunSpec(f"trial {row.get('number', '?')}", tags={"state": str(row.get("state", ""))})
    for key, value in row.items():
        if key.startswith("params_"):
            if value is not None and not pd.isna(value):
                spec.params[key.removeprefix("params_")] = str(value)
        elif isinstance(value, bool | int | float) and math.isfinite(float(value)):
            spec.metrics[key] = float(value)
        elif hasattr(value, "__len__") and not isinstance(value, str):
            spec.series[key] = [float(v) for v in value]
    return spec


def _walk(spec: RunSpec) -> Iterator[RunSpec]:
    yield spec
    for child in spec.children:
        yield from _walk(child)


class TrackingError(RuntimeError):
    """The MLflow store cannot be written; the message says which and what to do."""


def locked(err: BaseException, uri: str) -> TrackingError | None:
    """A :class:`TrackingError` for SQLite's "database is locked", else ``None``."""
    if "database is locked" not in str(err):
        return None
    return TrackingError(
        f"{uri}: the MLflow database is locked by another process (an `mlflow ui` or another "
        "workflow writing it?). Nothing computed is lost; when it is free, log again with "
        "`snakemake --forcerun track` (runs already logged are not duplicated)."
    )


class Tracker:
    """Writes :class:`RunSpec` trees to MLflow, skipping trees already there.

    A tree counts as logged only once complete: its root gets the content hash
    last, so a tree interrupted mid-way (a killed job, a locked database) is
    marked FAILED and logged again in full next time."""

    def __init__(self, uri: str, experiment: str, artifact_root: Path) -> None:
        from mlflow.tracking import MlflowClient

        self.uri = uri
        # Not mlflow.set_tracking_uri: it also writes os.environ, which would leak.
        self.client = MlflowClient(uri)
        try:
            found = self.client.get_experiment_by_name(experiment)
        except Exception as err:
            raise (locked(err, uri) or err) from err
        if found is None:
            artifact_root.mkdir(parents=True, exist_ok=True)
            self.experiment_id = self.client.create_experiment(
                experiment,
                artifact_location=artifact_root.resolve().as_uri(),
                # The UI then opens on the runs table ("Model training"), not GenAI traces.
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        else:
            self.experiment_id = found.experiment_id

    def existing(self, key: str, digest: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{KEY_TAG}` = '{key}' and tags.`{HASH_TAG}` = '{digest}'",
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def log(self, spec: RunSpec, key: str, common_tags: dict[str, str]) -> tuple[str, int]:
        """Log ``spec`` and its children unless an identical tree exists: (run id, runs created)."""
        digest = spec.digest()
        root: list[str] = []
        try:
            found = self.existing(key, digest)
            if found:
                log.info("%s: unchanged (run %s), nothing logged", key, found)
                return found, 0
            run_id = self._create(spec, key, digest, common_tags, None, root)
            self.client.set_tag(run_id, HASH_TAG, digest)  # complete: only now it counts
        except Exception as err:
            if root:
                with contextlib.suppress(Exception):
                    self.client.set_terminated(root[0], "FAILED")
            raise (locked(err, self.uri) or err) from err
        return run_id, sum(1 for _ in _walk(spec))

    def _create(
        self,
        spec: RunSpec,
        key: str,
        digest: str,
        common: dict[str, str],
        parent: str | None,
        root: list[str],
    ) -> str:
        from mlflow.entities import Metric, Param

        tags = {**common, **spec.tags, KEY_TAG: key, "mlflow.runName": spec.name}
        if parent:
            tags["mlflow.parentRunId"] = parent
            tags[HASH_TAG] = digest
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=spec.name)
        run_id = run.info.run_id
        if not parent:
            root.append(run_id)
        now = int(time.time() * 1000)
        params = [Param(k[:250], v[:6000]) for k, v in spec.params.items()]
        metrics = [Metric(k[:250], v, now, 0) for k, v in spec.metrics.items()]
        metrics += [
            Metric(k[:250], v, now, step)
            for k, values in spec.series.items()
            for step, v in enumerate(values, start=1)
            if math.isfinite(v)
        ]
        for lo in range(0, max(len(params), len(metrics)), 100):
            self.client.log_batch(
                run_id, metrics=metrics[lo : lo + 100], params=params[lo : lo + 100]
            )
        for path in spec.artifacts:
            if path.is_dir():
                self.client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.exists():
                self.client.log_artifact(run_id, str(path))
        for child in spec.children:
            self._create(child, f"{key}/{child.name}", child.digest(), common, run_id, root)
        self.client.set_terminated(run_id)
        return run_id


def track_all(
    config: dict[str, Any],
    files: Mapping[str, Sequence[str | Path]],
    commit: str,
    artifacts_dir: Path,
    extra_artifacts: Sequence[Path] = (),
) -> dict[str, Any]:
    """Log every (dataset, encoder) of ``config`` from ``files`` (the track rule's
    inputs: artifact name -> paths); return what was logged."""
    from mmalign.config import config_hash

    uri = tracking_uri(config)
    experiment = config.get("mlflow", {}).get("experiment", "mmalign")
    tracker = Tracker(uri, experiment, artifacts_dir)
    common = {"git_commit": commit, "config_hash": config_hash(config)}
    summary: dict[str, Any] = {
        "tracking_uri": uri,
        "experiment": experiment,
        "runs": {},
        "created": 0,
    }
    units = unit_files(files)
    for dataset in sorted(config["datasets"]):
        for encoder in sorted(config["encoders"]):
            spec = unit_runs(dataset, encoder, units.get((dataset, encoder), {}), config)
            spec.artifacts += [p for p in extra_artifacts if p.exists()]
            run_id, created = tracker.log(spec, f"{dataset}/{encoder}", common)
            summary["runs"][f"{dataset}/{encoder}"] = run_id
            summary["created"] += created
    log.info("MLflow %s, experiment %r: %d runs created", uri, experiment, summary["created"])
    return summary
