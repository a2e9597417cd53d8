"""Kill and resume, determinism: the tiny default study killed with SIGKILL in the
middle of embedding and in the middle of an Optuna study, then resumed, ends with
the score files of an uninterrupted run, bit for bit."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .test_workflow import ROOT, snakemake, tiny_study, tool

UNIT = "results/openclipart/minilm_effnet"
# What the seed decides, in files whose every byte is a score (no timings).
SCORE_FILES = [
    f"{UNIT}/retrieval.parquet",
    f"{UNIT}/ranks.parquet",
    f"{UNIT}/alignment.json",
    f"{UNIT}/learn/mlp_contrastive.parquet",
    f"{UNIT}/learn/align.parquet",
    "results/openclipart/minilm_effnet_pca384/gap_shift.parquet",
    "results/openclipart/minilm_effnet_pca384/retrieval.parquet",
]


# The tiny study's score files as the main branch wrote them (paths under results/).
REFERENCE = ROOT / "tests" / "data" / "tiny_study"
REFERENCE_FILES = sorted(
    p.relative_to(REFERENCE).as_posix()
    for p in REFERENCE.rglob("*")
    if p.is_file() and p.name != "PLATFORM.json"
)


def kill_when(
    args: list[str], cwd: Path, ready: Callable[[str], bool], timeout: float = 500
) -> str:
    """Start snakemake in its own process group and SIGKILL the whole group once
    ``ready(what it printed so far)`` is true (the jobs it started die with it,
    as on a node failure).
    The killed run leaves its lock; `snakemake --unlock` lifts it, as a user would.
    Returns what the killed run printed."""
    cmd = [tool("snakemake"), "--snakefile", str(ROOT / "Snakefile"), *args]
    log = cwd / f"killed_{time.monotonic_ns()}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=out, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready(log.read_text()):
            if proc.poll() is not None:
                raise AssertionError(
                    "the workflow ended before the kill point:\n" + log.read_text()
                )
            assert time.monotonic() < deadline, "the kill point was never reached"
            time.sleep(0.2)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    unlock = snakemake(*args, "--unlock", cwd=cwd)
    assert unlock.returncode == 0, unlock.stdout + unlock.stderr
    return log.read_text()


def shards_started(log: str) -> list[str]:
    """The embedding shards a run started (Snakemake prints each job's output)."""
    return sorted(re.findall(r"output: \S*/shards/(\d+-of-\d+)\.npz", log))


def outputs_are_whole(results: Path) -> None:
    """Every file at an output's name is complete; only dot-prefixed temporaries
    (atomic writes: temp file + rename) may be left by a kill."""
    for path in results.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".parquet":
            pd.read_parquet(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".npy", ".npz"):
            np.load(path)


def completed_trials(journal: Path) -> int:
    """Optuna journal lines that set a trial's state to COMPLETE (op 6, state 1)."""
    if not journal.exists():
        return 0
    lines = [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]
    return sum(1 for e in lines if e.get("op_code") == 6 and e.get("state") == 1)


def assert_same_scores(a: Path, b: Path) -> None:
    for name in SCORE_FILES:
        if name.endswith(".parquet"):
            pd.testing.assert_frame_equal(pd.read_parquet(a / name), pd.read_parquet(b / name))
        else:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name


def platform_fingerprint() -> dict[str, str]:
    """What decides the bits of the tiny study's floats, besides the code."""
    import platform

    import onnxruntime
    import pyarrow
    import torch

    return {
        "machine": platform.machine(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,  # embed.cpu_inference: onnx
        "numpy": np.__version__,
        "pyarrow": pyarrow.__version__,
        "pandas": pd.__version__,
    }


def without_timings(obj: object) -> object:
    """A JSON document without its ``*_seconds`` keys (timings change every run)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def differs(new: Path, old: Path, new_study: Path, old_study: str) -> bool:
    """Whether a score file differs from its reference: bytes, except that JSON
    is compared without timings, and
    a table with image paths with each study's own folder taken out of them."""
    if new.suffix == ".json":
        return without_timings(json.loads(new.read_text())) != without_timings(
            json.loads(old.read_text())
        )
    if new.read_bytes() == old.read_bytes():
        return False
    if new.suffix != ".parquet":  # arrays: only their bytes
        return True
    a, b = pd.read_parquet(new), pd.read_parquet(old)
    if "image_path" not in a.columns:
        return True
    a["image_path"] = a["image_path"].str.removeprefix(str(new_study))
    b["image_path"] = b["image_path"].str.removeprefix(old_study)
    return not a.equals(b)


def assert_same_as_reference(study: Path) -> None:
    """Every score file of the tiny study as tests/data/tiny_study holds it
    (recorded on the commit PLATFORM.json names: a restructuring must not change
    a single score). A deliberate change of the numbers records it anew, in a
    commit of its own that says why: ``python -m tests.test_reliability``."""
    recorded = json.loads((REFERENCE / "PLATFORM.json").read_text())
    if platform_fingerprint() != recorded["platform"]:
        pytest.skip(f"reference bytes are for {recorded['platform']}, not {platform_fingerprint()}")
    changed = [
        name
        for name in REFERENCE_FILES
        if differs(study / "results" / name, REFERENCE / name, study, recorded["study_folder"])
    ]
    assert changed == [], f"score files that changed: {changed}"


def test_killed_twice_and_resumed_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    straight.mkdir(), killed.mkdir()
    # Only the score files (not the figures, report or MLflow).
    args = [*tiny_study(straight, n_trials=3), *(f"results/{n}" for n in REFERENCE_FILES)]
    # Every stage of both units: slow when the machine is shared (pytest -n auto).
    assert snakemake(*args, cwd=straight, timeout=1500).returncode == 0
    assert_same_as_reference(straight)

    # Shards one at a time (2 threads each, on --cores 2), so that one can finish while
    # the other runs; on the CPU they run side by side with 1 thread, and the frozen
    # image tower gives the same embeddings with any thread count (test_embed).
    args = [*tiny_study(killed, n_trials=3), *SCORE_FILES, "--set-threads", "embed_shard=2"]
    shards = killed / UNIT / "shards"
    # 1. In the middle of embedding: one shard finished (as Snakemake sees it), one not.
    first = kill_when(args, killed, lambda log: "(Rule: embed_shard)" in log)
    outputs_are_whole(killed / "results")
    finished = sorted(p.name.removesuffix(".npz") for p in shards.glob("*-of-2.npz"))
    assert len(finished) == 1 and finished[0] in shards_started(first), finished

    # 2. In the middle of an Optuna study: one of three trials complete.
    journal = killed / UNIT / "learn/mlp_contrastive.optuna/journal.log"
    second = kill_when(args, killed, lambda _: completed_trials(journal) >= 1)
    outputs_are_whole(killed / "results")
    redone = set(shards_started(second))
    assert redone and not redone & set(finished), "a finished shard was redone"
    done_before = completed_trials(journal)
    assert 1 <= done_before < 3

    resumed = snakemake(*args, cwd=killed)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert shards_started(resumed.stdout + resumed.stderr) == []
    summary = json.loads((killed / UNIT / "learn/mlp_contrastive.json").read_text())
    assert summary["trials_run_now"] == 3 - done_before, "a finished trial was redone"
    outputs_are_whole(killed / "results")
    # Determinism across processes, and resumption that changes nothing.
    assert_same_scores(straight, killed)


def test_an_unwritable_results_folder_is_named(tmp_path: Path) -> None:
    from mmalign.io import OutputError, write_json

    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    with pytest.raises(OutputError, match=r"cannot write .*results/unit/x\.json.*writable folder"):
        write_json({}, blocker / "unit" / "x.json")
    with pytest.raises(OutputError, match=r"cannot write /proc/mmalign\.json"):
        write_json({}, "/proc/mmalign.json")  # read-only even for root


def test_loading_is_safe() -> None:
    """No remote code, no pickle-capable loads, YAML without tags, a local-only UI."""
    source = "\n".join(p.read_text() for p in (ROOT / "src").rglob("*.py"))
    source += "\n".join(p.read_text() for p in (ROOT / "scripts").glob("*.py"))
    assert "trust_remote_code=True" not in source
    assert re.findall(r"yaml\.load\(", source) == [] and "yaml.safe_load(" in source
    assert "pickle" not in source and "allow_pickle=True" not in source
    loads = re.findall(r"torch\.load\(([^)]*)\)", source)
    assert loads and all("weights_only=True" in args for args in loads)
    readme = (ROOT / "README.md").read_text()
    uis = re.findall(r"^mlflow (?:ui|server) .*$", readme, flags=re.MULTILINE)
    assert uis and all("--host 127.0.0.1" in line for line in uis)


def test_a_different_seed_changes_the_random_choices_and_nothing_else(tmp_path: Path) -> None:
    from mmalign.datasets.base import MANIFEST_COLUMNS
    from mmalign.retrieval import RetrievalOptions, build_protocol

    from .test_manifest import build, records
    from .test_retrieval import embeddings

    recs = records(tmp_path, n=30, captions=2)
    (a, _), (b, _) = build(recs, seed=0), build(recs, seed=1)
    same = [c for c in MANIFEST_COLUMNS if c not in ("split", "eval_split")]
    pd.testing.assert_frame_equal(a[same], b[same])  # the same pairs, in the same order
    assert (a["split"] != b["split"]).any()  # split differently
    assert (a["eval_split"] != b["eval_split"]).any()
    # The seeded max_images subset: other images (each split anew).
    (c, _), (d, _) = build(recs, seed=0, max_images=10), build(recs, seed=1, max_images=10)
    assert len(c) == len(d) == 10
    assert set(c["image_id"]) != set(d["image_id"])
    emb = embeddings(50, captions=1)
    subsets = [
        build_protocol(emb, "subset", RetrievalOptions(subset_size=20, seed=s)) for s in (0, 1)
    ]
    assert not np.array_equal(subsets[0].text_rows, subsets[1].text_rows)
    full = [build_protocol(emb, "full", RetrievalOptions(seed=s)) for s in (0, 1)]
    assert np.array_equal(full[0].t2i.queries, full[1].t2i.queries)


def test_one_job_writes_the_mlflow_store() -> None:
    """Parallel jobs never meet on the SQLite store: only `track` writes it, after
    every score file exists (the tiny study runs with --cores 2 in test_workflow)."""
    writers = [
        p.relative_to(ROOT).as_posix()
        for p in [*(ROOT / "scripts").glob("*.py"), *(ROOT / "src").rglob("*.py")]
        if re.search(r"^\s*(?:import|from) (?:mlflow|mmalign\.tracking)\b", p.read_text(), re.M)
    ]
    assert sorted(writers) == ["scripts/track.py", "src/mmalign/tracking.py"]
    rules = (ROOT / "rules/report.smk").read_text()
    assert re.search(r"rule track:\n    input:\n        FINAL_TARGETS,", rules)


def record_reference() -> None:
    """Run the tiny study (as the test's straight run) and store its score files
    and this platform in tests/data/tiny_study."""
    import shutil
    import tempfile

    study = Path(tempfile.mkdtemp(prefix="tiny_reference_"))
    args = [*tiny_study(study, n_trials=3), *(f"results/{n}" for n in REFERENCE_FILES)]
    proc = snakemake(*args, cwd=study, timeout=3000)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in REFERENCE_FILES:
        shutil.copyfile(study / "results" / name, REFERENCE / name)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    record = {"commit": commit, "platform": platform_fingerprint(), "study_folder": str(study)}
    (REFERENCE / "PLATFORM.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"recorded {len(REFERENCE_FILES)} score files from {study}")


if __name__ == "__main__":
    record_reference()
