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

Times: a stage run starts and ends when its jobs did (:func:`job_time`, from
Snakemake's benchmark files), so the UI's Duration is compute time; a run with
several jobs spans them, the parent spans its stage runs. Each run's Dataset is
its dataset's manifest (:func:`manifest_input`).
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


@dataclass(frozen=True)
class ManifestInput:
    """A dataset's manifest as an MLflow dataset input (the UI's Dataset column):
    the fields of :class:`mlflow.entities.Dataset`, JSON where MLflow wants JSON."""

    name: str
    #: the first 16 hex digits of the manifest file's SHA-256.
    digest: str
    #: the manifest's absolute path (MLflow's "local" source JSON: ``{"uri": ...}``).
    source: str
    schema: str
    profile: str


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
    #: the run's start and end (ms since the epoch) from its jobs' benchmark files
    #: (:func:`timed`); ``None``: the time of logging, as MLflow does by default.
    start_ms: int | None = None
    end_ms: int | None = None
    #: the jobs' ``benchmark/*`` metrics. Logged, but not part of :meth:`digest`:
    #: a job re-run that writes the same bytes leaves the logged tree as it is.
    timing: dict[str, float] = field(default_factory=dict)
    #: the manifest the run read, and in what role (MLflow's dataset context).
    dataset: ManifestInput | None = None
    context: str = "eval"

    def digest(self) -> str:
        h = hashlib.sha256()
        source = [self.dataset.name, self.dataset.digest, self.context] if self.dataset else None
        h.update(
            json.dumps(
                [self.name, self.params, self.metrics, self.series, source],
                sort_keys=True,
                default=str,
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
    "aligned_geometry": "aligned_geometry",
    "alignment": "similarity",
    "gap_shift": "gap_shift",
    "mlp_ablation": "ablation",
}
#: Per-unit figures by the stage run they belong to (the rest go with retrieval).
FIGURE_STAGES = {
    **{name: "geometry" for name in layout.GEOMETRY_FIGURES},
    **{name: "aligned_geometry" for name in layout.ALIGNED_FIGURES.values()},
    "gap_shift": "gap_shift",
    "mlp_ablation": "mlp_ablation",
}


#: The rules with a ``benchmark:`` whose jobs a unit's runs span: rule -> (its
#: stage run, the wildcards after dataset and encoder in its benchmark path).
#: Each ``learn`` job is one learned variant's run. Other rules' jobs (the
#: retrieval rule that concatenates the protocols, error analysis) have no
#: benchmark and are not counted.
STAGE_BENCHMARKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embed_shard": ("embed", ("scatteritem",)),
    "embed_merge": ("embed", ()),
    "embed_precomputed": ("embed", ()),
    "adapt": ("embed", ()),
    "retrieval_protocol": ("retrieval", ("protocol",)),
    "geometry": ("geometry", ()),
    "aligned_geometry": ("aligned_geometry", ()),
    "representation_similarity": ("alignment", ()),
    "gap_shift": ("gap_shift", ()),
    "mlp_ablation": ("mlp_ablation", ()),
    "learn": ("learn", ("variant",)),
}


def benchmark_file(rule: str, dataset: str, encoder: str, **extra: str) -> str:
    """The benchmark file of one job of ``rule`` (:data:`STAGE_BENCHMARKS`), as
    the rule's ``benchmark: layout.benchmark(rule, "dataset", "encoder", ...)`` names it."""
    names = STAGE_BENCHMARKS[rule][1]
    if set(extra) != set(names):
        raise ValueError(f"{rule}'s benchmark files need the wildcards {names}, not {tuple(extra)}")
    template = layout.benchmark(rule, "dataset", "encoder", *names)
    return template.format(dataset=dataset, encoder=encoder, **extra)


def benchmark_wildcards(file: str | Path) -> tuple[str, dict[str, str]]:
    """The rule and wildcards of a benchmark file (the inverse of :func:`benchmark_file`)."""
    for rule, (_, names) in STAGE_BENCHMARKS.items():
        found = layout.match(layout.benchmark(rule, "dataset", "encoder", *names), str(file))
        if found is not None:
            return rule, found
    raise ValueError(f"{file} is not the benchmark file of a rule in STAGE_BENCHMARKS")


@dataclass(frozen=True)
class JobTime:
    """One job's times, from its Snakemake benchmark file (:func:`job_time`)."""

    start_ms: int
    end_ms: int
    #: wall seconds, CPU seconds (user + system; NaN when not sampled), peak RSS (MB).
    seconds: float
    cpu_time: float
    max_rss: float


def job_time(benchmark: Path) -> JobTime:
    """When a job ran, from its benchmark file.

    What Snakemake records (snakemake/benchmark.py, 9.x): per run of the job,
    its wall seconds ``s``, ``h:m:s``, ``max_rss``/``max_vms``/``max_uss``/
    ``max_pss`` (MB), ``io_in``/``io_out`` (MB), ``mean_load`` and ``cpu_time``
    (seconds), ``NA`` where the job ended before the first sample.
    ``--benchmark-extended`` adds jobid, rule, wildcards, params, threads,
    cpu_usage, resources and input sizes: no timestamp in either format.

    So: end = the file's modification time, start = end - the seconds. The
    executor writes the file right after the job's command returns
    (snakemake/executors/local.py), before Snakemake's own bookkeeping, and
    Snakemake's report makes the same choice (the endtime it keeps for a job
    is its output's modification time). With ``repeat()`` the rows ran one
    after another in the job, so their seconds add up. The start leaves out
    what came before the command (scheduling, a conda activation, a cluster
    queue), and on a cluster the end is the file server's clock.

    Modification times are not reproducible: a re-run job, a copy without
    ``-p`` or a ``touch`` move them. That is why times stay out of
    :meth:`RunSpec.digest`: the content decides whether a tree is logged, and
    the times logged are those of the jobs that made that content.
    """
    if benchmark.suffix == ".jsonl":
        frame = pd.read_json(benchmark, lines=True)
    else:
        frame = pd.read_csv(benchmark, sep="\t", na_values=["NA", "-"])
    if frame.empty or "s" not in frame:
        raise ValueError(f"{benchmark}: not a Snakemake benchmark file (no row with `s`)")
    seconds = float(frame["s"].sum())
    cpu = pd.to_numeric(frame.get("cpu_time"), errors="coerce")
    rss = pd.to_numeric(frame.get("max_rss"), errors="coerce")
    end_ms = benchmark.stat().st_mtime_ns // 1_000_000
    return JobTime(
        start_ms=end_ms - round(seconds * 1000),
        end_ms=end_ms,
        seconds=seconds,
        cpu_time=float(cpu.sum(min_count=1)) if cpu is not None else math.nan,
        max_rss=float(rss.max()) if rss is not None else math.nan,
    )


def timed(spec: RunSpec, times: Sequence[JobTime]) -> RunSpec:
    """``spec`` spanning ``times`` (first start to last end), with the jobs'
    ``benchmark/s`` and ``benchmark/cpu_time`` (summed: jobs that ran side by
    side add up to more than the span), ``benchmark/max_rss`` (MB, the largest)
    and ``benchmark/jobs``. No times: ``spec`` unchanged."""
    if not times:
        return spec
    spec.start_ms = min(t.start_ms for t in times)
    spec.end_ms = max(t.end_ms for t in times)
    spec.timing = {
        "benchmark/s": round(sum(t.seconds for t in times), 4),
        "benchmark/jobs": float(len(times)),
    }
    cpu = [t.cpu_time for t in times if math.isfinite(t.cpu_time)]
    rss = [t.max_rss for t in times if math.isfinite(t.max_rss)]
    if cpu:
        spec.timing["benchmark/cpu_time"] = round(sum(cpu), 4)
    if rss:
        spec.timing["benchmark/max_rss"] = max(rss)
    return spec


def manifest_input(dataset: str, manifest: Path) -> ManifestInput:
    """``manifest`` as an MLflow dataset: digest of its bytes, its columns as
    MLflow's column schema and its row count, read from the Parquet footer
    (no rows are loaded: a COCO manifest has 600k)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from mlflow.types import ColSpec, DataType, Schema

    h = hashlib.sha256()
    with manifest.open("rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)

    def kind(t: pa.DataType) -> DataType | None:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return DataType.string
        if pa.types.is_boolean(t):
            return DataType.boolean
        if pa.types.is_integer(t):
            small = t.bit_width < 32 or (t.bit_width == 32 and pa.types.is_signed_integer(t))
            return DataType.integer if small else DataType.long
        if pa.types.is_float32(t):
            return DataType.float
        if pa.types.is_floating(t):
            return DataType.double
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return DataType.binary
        if pa.types.is_timestamp(t) or pa.types.is_date(t):
            return DataType.datetime
        return None  # nested: left out of the schema (a manifest has none)

    parquet = pq.ParquetFile(manifest)
    columns = [
        ColSpec(found, col.name)
        for col in parquet.schema_arrow
        if (found := kind(col.type)) is not None
    ]
    return ManifestInput(
        name=dataset,
        digest=h.hexdigest()[:16],
        source=json.dumps({"uri": str(manifest.resolve())}),
        schema=json.dumps({"mlflow_colspec": Schema(columns).to_dict()}),
        profile=json.dumps({"num_rows": parquet.metadata.num_rows}),
    )


def unit_files(files: Mapping[str, Sequence[str | Path]]) -> dict[tuple[str, str], UnitFiles]:
    """The track rule's named inputs (artifact name -> files; see
    :mod:`mmalign.layout`; ``benchmark``: files of :data:`STAGE_BENCHMARKS`),
    grouped by (dataset, encoder)."""
    units: dict[tuple[str, str], UnitFiles] = {}
    for artifact, paths in files.items():
        for file in paths:
            if artifact == "benchmark":
                found = benchmark_wildcards(file)[1]
            else:
                found = layout.wildcards(artifact, str(file))
            unit = units.setdefault((found["dataset"], found["encoder"]), {})
            unit.setdefault(artifact, []).append(Path(file))
    return units


def _one(files: UnitFiles, artifact: str) -> Path | None:
    found = files.get(artifact, [])
    return found[0] if found else None


def unit_runs(
    dataset: str,
    encoder: str,
    files: UnitFiles,
    config: dict[str, Any],
    manifest: ManifestInput | None = None,
) -> RunSpec:
    """The parent run of one (dataset, encoder) and its stage runs, from its
    files: each stage run timed by its jobs' benchmark files (``benchmark``),
    the parent spanning them; every run with ``manifest`` as its dataset."""
    parent = RunSpec(
        name=f"{dataset} / {encoder}",
        params={
            **flatten(config["datasets"][dataset], "dataset"),
            **flatten(config["encoders"][encoder], "encoder"),
            "seed": str(config["seed"]),
        },
        tags={"dataset": dataset, "encoder": encoder},
    )
    times: dict[str, list[JobTime]] = {}
    for benchmark in sorted(files.get("benchmark", [])):
        rule, found = benchmark_wildcards(benchmark)
        stage = STAGE_BENCHMARKS[rule][0]
        key = f"learn: {found['variant']}" if stage == "learn" else stage
        times.setdefault(key, []).append(job_time(benchmark))
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
        elif stage == "aligned_geometry":  # the geometry measures in the heads' space
            run.params = flatten(config.get("geometry", {}), "geometry")
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
            run.context = "train"  # it trains the MLPs it compares
            run.params = flatten(config.get("learn", {}).get("ablation", {}), "ablation")
            run.metrics = row_metrics(
                pd.read_parquet(source),
                lambda r: (r["metric"].removeprefix("mlp_ablation:"), r["direction"]),
            )
            run.artifacts[1:1] = files.get("ablation_curves", [])
        parent.children.append(timed(run, times.get(stage, [])))
    trials = {
        layout.wildcards("variant_trials", str(t))["variant"]: t
        for t in files.get("variant_trials", [])
    }
    for summary in sorted(files.get("variant_summary", [])):
        variant = layout.wildcards("variant_summary", str(summary))["variant"]
        learned = learned_run(summary, variant, trials.get(variant))
        parent.children.append(timed(learned, times.get(learned.name, [])))
    # The parent spans its stage runs: the jobs of the runs it holds.
    timed(parent, [t for child in parent.children for t in times.get(child.name, [])])
    if manifest is not None:
        for run in _walk(parent):
            run.dataset = manifest
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
        context="train",
    )
    if trials is not None:
        run.children.extend(trial_run(row) for row in pd.read_parquet(trials).to_dict("records"))
    return run


def trial_run(row: dict[str, Any]) -> RunSpec:
    """One row of a trials table: ``params_*`` as params, numbers and flags
    (``stopped_early_*`` as 0/1) as metrics, per-epoch loss lists as step series."""
    spec = RunSpec(
        f"trial {row.get('number', '?')}",
        tags={"state": str(row.get("state", ""))},
        context="train",
    )
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
        from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        tags = {**common, **spec.tags, KEY_TAG: key, "mlflow.runName": spec.name}
        if parent:
            tags["mlflow.parentRunId"] = parent
            tags[HASH_TAG] = digest
        # Start and end: the jobs' (spec.start_ms/end_ms), else the logging time.
        run = self.client.create_run(
            self.experiment_id, start_time=spec.start_ms, tags=tags, run_name=spec.name
        )
        run_id = run.info.run_id
        if not parent:
            root.append(run_id)
        now = spec.end_ms or int(time.time() * 1000)
        params = [Param(k[:250], v[:6000]) for k, v in spec.params.items()]
        values = {**spec.metrics, **spec.timing}
        metrics = [Metric(k[:250], v, now, 0) for k, v in values.items()]
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
        if spec.dataset is not None:
            manifest = spec.dataset
            entity = Dataset(
                name=manifest.name,
                digest=manifest.digest,
                source_type="local",
                source=manifest.source,
                schema=manifest.schema,
                profile=manifest.profile,
            )
            context = InputTag(MLFLOW_DATASET_CONTEXT, spec.context)
            self.client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[context])])
        for child in spec.children:
            self._create(child, f"{key}/{child.name}", child.digest(), common, run_id, root)
        self.client.set_terminated(run_id, end_time=spec.end_ms)
        return run_id


def track_all(
    config: dict[str, Any],
    files: Mapping[str, Sequence[str | Path]],
    commit: str,
    artifacts_dir: Path,
    extra_artifacts: Sequence[Path] = (),
) -> dict[str, Any]:
    """Log every (dataset, encoder) of ``config`` from ``files`` (the track rule's
    inputs: artifact name -> paths; ``manifest``: the datasets' manifests, each
    its runs' MLflow dataset; ``benchmark``: the jobs' benchmark files, their
    times); return what was logged."""
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
    per_unit = {name: paths for name, paths in files.items() if name != "manifest"}
    units = unit_files(per_unit)
    manifests = {
        layout.wildcards("manifest", str(f))["dataset"]: Path(f) for f in files.get("manifest", [])
    }
    for dataset in sorted(config["datasets"]):
        manifest = manifests.get(dataset)
        source = manifest_input(dataset, manifest) if manifest is not None else None
        for encoder in sorted(config["encoders"]):
            found = units.get((dataset, encoder), {})
            spec = unit_runs(dataset, encoder, found, config, source)
            spec.artifacts += [p for p in extra_artifacts if p.exists()]
            run_id, created = tracker.log(spec, f"{dataset}/{encoder}", common)
            summary["runs"][f"{dataset}/{encoder}"] = run_id
            summary["created"] += created
    log.info("MLflow %s, experiment %r: %d runs created", uri, experiment, summary["created"])
    return summary
