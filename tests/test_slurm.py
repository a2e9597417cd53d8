"""profiles/slurm, checked against the plugin and run on a real (one-node) SLURM.

The fast tests read the profiles; the slow one starts a loopback cluster
(tests/slurm_cluster.py), runs a tiny study through a profile derived from
profiles/slurm, checks that every job went through sbatch, and compares the
outputs with a local run of the same config through profiles/local.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from mmalign import resources

from .conftest import make_openclipart
from .models import tiny_pair_spec
from .slurm_cluster import SlurmCluster, SlurmUnavailable, write_config
from .test_envs import rule_blocks
from .test_workflow import ROOT, run, snakemake, tool

SLURM_PROFILE = ROOT / "profiles/slurm/config.yaml"
LOCAL_PROFILE = ROOT / "profiles/local/config.yaml"
# The tiny study's jobs: one manifest, two shards (one array), one merge.
EXPECTED_JOBS = {"prepare": 1, "embed_shard": 2, "embed_merge": 1}
TARGET = "results/openclipart/tiny/embeddings/meta.json"
# Seconds for the SLURM run as a whole; a hang (a status check that never
# sees its job) fails the test instead of blocking it.
SLURM_RUN_TIMEOUT = 240


def plugin_settings() -> set[str]:
    """The plugin's command-line settings, as a profile spells them (slurm-...)."""
    from snakemake_executor_plugin_slurm import ExecutorSettings

    return {"slurm-" + f.name.replace("_", "-") for f in dataclasses.fields(ExecutorSettings)}


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def workflow_rules(cwd: Path = ROOT) -> set[str]:
    proc = snakemake("--list-rules", cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return set(proc.stdout.split())


def gpu_rules() -> set[str]:
    """Rules whose resources declare a GPU (gpu=N, or a device's **<STAGE>_GPU)."""
    declares = re.compile(r"^\s+(gpu\s*=|\*\*[A-Z]+_GPU)", re.M)
    return {rule for rule, text in rule_blocks().items() if declares.search(text)}


# --- the profiles, against the plugin and the workflow ----------------------------


def test_slurm_profile_settings_exist() -> None:
    """Every key is a snakemake option or a setting of the installed plugin:
    a misspelt `slurm-` key would otherwise only show up on the cluster."""
    profile = load(SLURM_PROFILE)
    assert profile["executor"] == "slurm"
    help_text = run([tool("snakemake"), "--help"]).stdout
    settings = plugin_settings()
    for key in profile:
        if key.startswith("slurm-"):
            assert key in settings, f"{key}: not a setting of the SLURM plugin ({sorted(settings)})"
        else:
            assert f"--{key}" in help_text, f"{key}: not a snakemake option"
    # A global gpu limit would serialise every GPU job on the whole cluster.
    assert "resources" not in profile, "no global `resources:` on a cluster (see the comment)"
    assert {"runtime", "mem_mb"} <= set(profile["default-resources"])
    assert int(profile["retries"]) >= 1


def test_profiles_name_real_rules_and_request_gpus() -> None:
    """Snakemake ignores unknown rule names in set-resources, set-threads and
    slurm-array-jobs, so a renamed rule would silently lose its settings."""
    rules = workflow_rules()
    profile = load(SLURM_PROFILE)
    named = set(profile.get("set-resources", {})) | set(profile.get("set-threads", {}))
    named |= {r.strip() for r in profile.get("slurm-array-jobs", "").split(",") if r.strip()}
    assert named - {"all"} <= rules, f"unknown rules in the profile: {named - rules}"
    for rule in gpu_rules():
        res = profile["set-resources"].get(rule, {})
        assert res.get("gpu") or "gpu" in str(res.get("gres", "")), f"{rule}: no GPU request"
        assert not (res.get("gpu") and res.get("gres")), f"{rule}: gpu and gres both set"
    local = load(LOCAL_PROFILE)
    assert local["cores"] == "all" and local["resources"] == {"gpu": 1}


def _planned_resources(tmp_path: Path, attempt: int) -> dict[str, dict[str, str]]:
    """Each rule's resources in a dry run of the SLURM profile at one attempt."""
    config = load(ROOT / "config.yaml")
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    proc = snakemake(
        "--profile",
        str(SLURM_PROFILE.parent),
        "-n",
        "--attempt",
        str(attempt),
        "--directory",
        str(tmp_path),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    planned = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        res = re.search(r"^\s+resources: (.*)$", block, re.M)
        if rule and res:
            planned[rule.group(1)] = dict(
                item.split("=", 1) for item in res.group(1).split(", ") if "=" in item
            )
    return planned


def test_a_retried_job_asks_for_more(tmp_path: Path) -> None:
    """The rules' requests (mmalign.resources, not the profile, which sets none)
    double on the second attempt; the profile's GPU requests stay."""
    first = _planned_resources(tmp_path, attempt=1)
    second = _planned_resources(tmp_path, attempt=2)
    for res in load(SLURM_PROFILE)["set-resources"].values():
        assert not {"mem_mb", "runtime"} & set(res), "the rules compute mem_mb and runtime"
    checked = set()
    for rule in set(first) & set(resources.FALLBACK):
        for key in ("mem_mb", "runtime"):
            assert int(second[rule][key]) == 2 * int(first[rule][key]), (rule, key)
        checked.add(rule)
    assert {"embed_shard", "retrieval_protocol", "learn"} <= checked, checked
    assert first["embed_shard"]["gpu"] == "1"


# --- a real run on a loopback cluster ---------------------------------------------


def declared_threads(rule: str) -> int:
    match = re.search(r"^\s+threads: (?:analysis_threads\()?(\d+)", rule_blocks()[rule], re.M)
    return int(match.group(1)) if match else 1


def cluster_profile(cluster: SlurmCluster, folder: Path) -> Path:
    """profiles/slurm for the test cluster: its partition, an account, squeue
    for job status (no accounting database here), short status intervals and
    SLURM's logs kept. Threads and CPUs per job are the rules' own, as in the
    local run (the same threads give the same numbers), not the site's."""
    profile = load(SLURM_PROFILE)
    profile["default-resources"].update(slurm_partition=cluster.partition, slurm_account="mmalign")
    profile["slurm-status-command"] = "squeue"
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["slurm-keep-successful-logs"] = True
    profile["latency-wait"] = 5
    profile.pop("set-threads", None)
    for rule, res in profile["set-resources"].items():
        for key in ("cpus_per_gpu", "cpus_per_task"):
            if key in res:
                res[key] = declared_threads(rule)
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return folder


def tiny_study(tmp_path: Path) -> dict:
    config = load(ROOT / "config.yaml")
    library = make_openclipart(tmp_path / "openclipart")
    config["datasets"]["openclipart"].update(root=str(library), max_pixels=5000)
    config["encoders"] = {"tiny": tiny_pair_spec(tmp_path / "models")}
    return config


@dataclasses.dataclass
class Study:
    """One snakemake run of the tiny study, in the background."""

    folder: Path
    proc: subprocess.Popen
    started: float
    seconds: float | None = None

    @classmethod
    def start(cls, folder: Path, config: dict, profile: Path, env: dict, timeout: int) -> Study:
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(config))
        args = [tool("snakemake"), "--snakefile", str(ROOT / "Snakefile")]
        args += ["--profile", str(profile), "--set-scatter", "embed=2"]
        args += ["--directory", str(folder), TARGET]
        # timeout -k: a wedged run is killed, and the test fails instead of hanging.
        cmd = ["timeout", "-k", "10", str(timeout), *args]
        with open(folder / "snakemake.out", "w") as out:
            proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
        return cls(folder, proc, time.monotonic())

    def wait(self) -> tuple[int, str, float]:
        """Exit status, output and seconds taken."""
        while self.proc.poll() is None:
            time.sleep(0.5)
        if self.seconds is None:
            self.seconds = time.monotonic() - self.started
        return self.proc.returncode, (self.folder / "snakemake.out").read_text(), self.seconds

    @staticmethod
    def wait_all(*studies: Study) -> None:
        """Wait for all, noting each one's time as it ends."""
        while any(study.proc.poll() is None for study in studies):
            time.sleep(0.5)
            for study in studies:
                if study.seconds is None and study.proc.poll() is not None:
                    study.seconds = time.monotonic() - study.started


def submitted_ids(log: str) -> dict[str, list[str]]:
    """SLURM job ids from the executor's log: plain jobs and array tasks."""
    plain = re.findall(r"has been submitted with SLURM jobid (\d+)", log)
    arrays = re.findall(
        r"Submitted array job with Snakemake IDs [\d,]+ and SLURM job ID (\d+)\. "
        r"The individual task IDs are (\d+)-(\d+)",
        log,
    )
    tasks = [f"{a}_{i}" for a, lo, hi in arrays for i in range(int(lo), int(hi) + 1)]
    return {"jobs": plain, "arrays": [a for a, _, _ in arrays], "tasks": tasks}


def rule_of(comment: str) -> str:
    """The rule from the plugin's job comment, rule_<rule>[_wildcards_<...>]."""
    return re.sub(r"_wildcards_.*$", "", comment.removeprefix("rule_"))


def assert_same_outputs(local: Path, slurm: Path) -> None:
    for rel in ("results/openclipart/manifest.parquet",):
        pd.testing.assert_frame_equal(pd.read_parquet(local / rel), pd.read_parquet(slurm / rel))
    emb = "results/openclipart/tiny/embeddings"
    arrays = sorted(p.name for p in (local / emb).glob("*.npy"))
    assert arrays == ["image.npy", "text.npy"]
    for name in arrays:
        a, b = np.load(local / emb / name), np.load(slurm / emb / name)
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.array_equal(a, b), f"{name} differs between the local and the SLURM run"
        assert (local / emb / name).read_bytes() == (slurm / emb / name).read_bytes()
    for path in sorted((local / emb).glob("*.parquet")):
        pd.testing.assert_frame_equal(
            pd.read_parquet(path), pd.read_parquet(slurm / emb / path.name)
        )


@pytest.mark.workflow
def test_tiny_study_on_slurm_matches_a_local_run(tmp_path: Path) -> None:
    started = time.monotonic()
    # A short folder: munge's socket path must fit a UNIX socket name.
    cluster_dir = Path(tempfile.mkdtemp(prefix="mmalign-slurm-", dir="/tmp"))
    try:
        cluster = write_config(cluster_dir, min_cpus=4, min_memory_mb=64000, gpus=2)
        cluster.start()
    except SlurmUnavailable as err:
        shutil.rmtree(cluster_dir, ignore_errors=True)
        pytest.skip(f"no SLURM cluster could be started here: {err}")
    try:
        config = tiny_study(tmp_path)
        profile = cluster_profile(cluster, tmp_path / "profile")
        # Both runs at once: the local one computes while the SLURM one waits
        # for its status checks.
        local_env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM")}
        local = Study.start(tmp_path / "local", config, LOCAL_PROFILE.parent, local_env, 300)
        slurm = Study.start(tmp_path / "slurm", config, profile, cluster.env, SLURM_RUN_TIMEOUT)
        Study.wait_all(local, slurm)
        code, log, slurm_s = slurm.wait()
        local_code, local_log, local_s = local.wait()
        assert local_code == 0, local_log
        assert code == 0, f"exit {code}\n{log}\n{cluster.logs()}"

        # Every job went through sbatch: the executor's log, SLURM's queue
        # (finished jobs stay MinJobAge seconds) and slurmctld agree.
        ids = submitted_ids(log)
        run_id = re.search(r"SLURM run ID: (\S+)", log).group(1)
        queue = cluster.run("squeue", "--states=all", "-h", "-n", run_id, "-o", "%i|%T|%k").stdout
        rows = [line.split("|") for line in queue.split()]
        ctld = set(
            re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", cluster.ctld_log.read_text())
        )
        print(
            f"\nSLURM run {run_id}: sbatch jobs {ids['jobs']}, arrays {ids['arrays']} "
            f"(tasks {ids['tasks']}); squeue: {queue.split()}; slurmctld submissions: "
            f"{sorted(ctld, key=int)}; local run {local_s:.0f} s, SLURM run {slurm_s:.0f} s"
        )
        assert set(ids["jobs"]) | set(ids["arrays"]) == ctld
        assert {row[0] for row in rows} == set(ids["jobs"]) | set(ids["tasks"])
        assert all(state == "COMPLETED" for _, state, _ in rows), queue
        per_rule = Counter(rule_of(comment) for _, _, comment in rows)
        assert per_rule == EXPECTED_JOBS, per_rule
        # ... and they are all the jobs snakemake ran: none ran on this host.
        finished = Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log))
        assert finished == EXPECTED_JOBS, finished
        # The shards went in as one array, each task with the profile's GPU request.
        assert len(ids["arrays"]) == 1 and len(ids["tasks"]) == EXPECTED_JOBS["embed_shard"]
        shards = cluster.run("scontrol", "show", "job", ids["arrays"][0]).stdout
        n_shards = EXPECTED_JOBS["embed_shard"]
        assert shards.count("TresPerJob=gres:gpu:1") == n_shards, shards
        assert shards.count(f"CpusPerTres=gres:gpu:{declared_threads('embed_shard')}") == n_shards
        # mem_mb at the first attempt, grown from the manifest (mmalign.resources;
        # the plugin adds a MB or so to an array's).
        manifest = tmp_path / "slurm/results/openclipart/manifest.parquet"
        mem_mb = resources.request(
            "embed_shard", [str(manifest)], config, {"scatteritem": f"1-of-{n_shards}"}
        ).mem_mb
        memory = [int(m) for m in re.findall(r"MinMemoryNode=(\d+)M", shards)]
        assert len(memory) == n_shards and all(mem_mb <= m <= mem_mb + 16 for m in memory), shards
        # Snakemake ran each job inside its allocation: SLURM's log of the job
        # is the job-side snakemake's, naming the rule.
        slurm_logs = sorted((tmp_path / "slurm/.snakemake/slurm_logs").rglob("*.log"))
        assert len(slurm_logs) == sum(EXPECTED_JOBS.values()), slurm_logs
        for path in slurm_logs:
            rule = path.relative_to(tmp_path / "slurm/.snakemake/slurm_logs").parts[0]
            assert f"{rule.removeprefix('rule_')}:" in path.read_text(), path

        assert_same_outputs(tmp_path / "local", tmp_path / "slurm")
        print(f"SLURM test: {time.monotonic() - started:.0f} s in all")
    finally:
        cluster.stop()
        shutil.rmtree(cluster_dir, ignore_errors=True)
