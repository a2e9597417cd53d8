"""mmalign.layout: one template per artifact, filled and read back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mmalign import layout

ROOT = Path(__file__).resolve().parents[1]


def test_unfilled_wildcards_stay_patterns_and_filled_ones_read_back() -> None:
    assert layout.path("retrieval") == "results/{dataset}/{encoder}/retrieval.parquet"
    assert layout.path("variant_rows", variant="align") == (
        "results/{dataset}/{encoder}/learn/align.parquet"
    )
    for artifact, template in layout.ARTIFACTS.items():
        names = re.findall(r"\{(\w+)\}", template)
        values = {name: f"v_{i}" for i, name in enumerate(names)}
        filled = layout.path(artifact, **values)
        assert "{" not in filled
        assert layout.wildcards(artifact, f"/some/study/{filled}") == values, artifact
    assert layout.unit_of("geometry", "/x/results/coco/clip/geometry.json") == ("coco", "clip")


def test_a_file_of_another_artifact_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a 'geometry' file"):
        layout.wildcards("geometry", "results/coco/clip/retrieval.parquet")
    with pytest.raises(KeyError, match="no artifact 'geometri'"):
        layout.path("geometri")


def test_logs_and_benchmarks_sit_side_by_side() -> None:
    assert layout.log("learn", "dataset", "encoder", "variant") == (
        "results/logs/learn/{dataset}/{encoder}/{variant}.log"
    )
    assert layout.benchmark("learn", "dataset", "encoder", "variant") == (
        "results/benchmarks/learn/{dataset}/{encoder}/{variant}.tsv"
    )
    assert layout.log("report") == "results/logs/report/report.log"
    assert layout.benchmark("report") == "results/benchmarks/report/report.tsv"


def test_the_rules_spell_no_path_themselves() -> None:
    """Every results path of a rule comes from mmalign.layout."""
    for rules in [ROOT / "Snakefile", *(ROOT / "rules").glob("*.smk")]:
        assert "results/" not in rules.read_text(), rules.name


def test_each_script_is_named_like_its_rule() -> None:
    rules = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    pairs = re.findall(
        r"^rule (\w+):\n(?:(?!^rule ).*\n)*?    script:\n        \"\.\./scripts/(\w+)\.py\"",
        rules,
        re.M,
    )
    assert len(pairs) == len(re.findall(r"^rule \w+:", rules, re.M))  # every rule runs a script
    assert [rule for rule, script in pairs if rule != script] == []
    assert {p.stem for p in (ROOT / "scripts").glob("*.py")} == {rule for rule, _ in pairs}
