"""A rule's log holds why it failed: the traceback of an uncaught exception,
warnings and whatever went to stderr, as well as the log records."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child Python; its output decoded as is (carriage returns kept)."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, timeout=60
    )
    return subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode()
    )


def read(path: Path) -> str:
    """A file's text as written (``read_text`` would turn carriage returns into newlines)."""
    return path.read_bytes().decode()


def test_an_uncaught_exception_lands_in_the_log_and_on_stderr(tmp_path: Path) -> None:
    proc = run_python(
        """
        import logging
        from mmalign.logs import setup_logging
        log = setup_logging("logs/job.log")
        log.info("starting")
        raise ValueError("no such dataset root: /nowhere")
        """,
        tmp_path,
    )
    assert proc.returncode == 1
    text = read(tmp_path / "logs/job.log")
    for where in (text, proc.stderr):
        assert "starting" in where
        assert "Traceback (most recent call last)" in where
        assert "ValueError: no such dataset root: /nowhere" in where
    assert text.count("Traceback") == 1 and proc.stderr.count("Traceback") == 1


def test_an_exception_in_a_thread_lands_in_the_log(tmp_path: Path) -> None:
    proc = run_python(
        """
        import threading
        from mmalign.logs import setup_logging
        setup_logging("job.log")
        def work():
            raise RuntimeError("worker failed")
        t = threading.Thread(target=work, name="loader")
        t.start(); t.join()
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr  # as without the hook: a thread's error is not fatal
    text = read(tmp_path / "job.log")
    assert "in thread loader" in text and "RuntimeError: worker failed" in text
    assert "Traceback" in text, text


def test_stderr_warnings_and_progress_bars_are_copied_to_the_log(tmp_path: Path) -> None:
    proc = run_python(
        """
        import sys, warnings
        from tqdm import tqdm
        from mmalign.logs import setup_logging
        setup_logging("job.log")
        print("a library's own message", file=sys.stderr)
        warnings.warn("this option is deprecated", FutureWarning)
        for _ in tqdm(range(50), desc="embedding", mininterval=0, miniters=1):
            pass
        sys.stderr.write("unfinished line")
        """,
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    text = read(tmp_path / "job.log")
    assert "a library's own message" in text
    assert "FutureWarning: this option is deprecated" in text
    # The bar's redraws reach the terminal; the log keeps its final state only.
    bars = [line for line in text.splitlines() if "embedding" in line]
    assert len(bars) == 1 and "50/50" in bars[0], bars
    assert "\r" not in text
    assert proc.stderr.count("\r") > 1 and "50/50" in proc.stderr
    assert text.rstrip().endswith("unfinished line")
    # Log records go to each place once: the terminal copy is not teed back.
    assert proc.stderr.count("this option is deprecated") == 1
    assert text.count("this option is deprecated") == 1


def test_a_rule_script_that_fails_leaves_its_traceback_in_the_rule_log(tmp_path: Path) -> None:
    """The repository's own prepare script, run by Snakemake as a rule, with a
    dataset kind that does not exist."""
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            f"""
            rule prepare:
                output:
                    manifest="results/{{dataset}}/manifest.parquet",
                    report="results/{{dataset}}/prepare_report.json",
                    skipped="results/{{dataset}}/skipped.csv",
                log:
                    "logs/prepare/{{dataset}}.log",
                params:
                    dataset={{"kind": "no_such_kind", "root": "/nonexistent"}},
                    seed=0,
                script:
                    {str(ROOT / "scripts/prepare.py")!r}
            """
        )
    )
    snakemake = Path(sys.executable).with_name("snakemake")
    proc = subprocess.run(
        [str(snakemake), "results/broken/manifest.parquet", "--cores", "1", "--quiet", "all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert proc.returncode != 0, proc.stdout + proc.stderr
    log = tmp_path / "logs/prepare/broken.log"
    assert log.exists(), proc.stdout + proc.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text, text
    assert "DatasetError" in text and "unknown dataset kind 'no_such_kind'" in text, text
