"""The registries of names (mmalign.layout) are the only copy: the config
schema's enums and the library agree with them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mmalign import layout

SCHEMA = Path(__file__).resolve().parents[1] / "src" / "mmalign" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA.read_text())


def section(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return schema["properties"][name]["properties"]


def test_learn_variants_enum_is_the_registry(schema: dict[str, Any]) -> None:
    variants = section(schema, "learn")["variants"]
    assert tuple(variants["items"]["enum"]) == layout.VARIANTS
    assert tuple(variants["default"]) == layout.VARIANTS


def test_retrieval_protocols_and_metrics_enums_are_the_registry(schema: dict[str, Any]) -> None:
    retrieval = section(schema, "retrieval")
    assert tuple(retrieval["protocols"]["items"]["enum"]) == layout.PROTOCOLS
    metrics = layout.FIXED_METRICS + layout.CALIBRATED_METRICS
    assert tuple(retrieval["metrics"]["items"]["enum"]) == metrics
    assert tuple(retrieval["metrics"]["default"]) == metrics
    assert tuple(retrieval["multicaption_split"]["enum"]) == layout.SPLITS


def test_gap_shift_protocols_are_fixed_protocols(schema: dict[str, Any]) -> None:
    assert set(section(schema, "gap_shift")["protocol"]["enum"]) <= set(layout.PROTOCOLS)


def test_the_library_uses_the_registry() -> None:
    import mmalign.datasets.base as base
    import mmalign.error_analysis as error_analysis
    import mmalign.learn as learn
    import mmalign.learn.common as common
    import mmalign.learn.mlp as mlp
    import mmalign.metrics as metrics
    import mmalign.report as report
    import mmalign.retrieval as retrieval

    assert base.SPLITS is layout.SPLITS and common.SPLITS is layout.SPLITS
    assert common.DIRECTIONS is layout.DIRECTIONS is error_analysis.DIRECTIONS
    assert error_analysis.DIRECTION_NAMES is layout.DIRECTION_NAMES
    assert metrics.FIXED_METRICS is layout.FIXED_METRICS
    assert metrics.CALIBRATED_METRICS is layout.CALIBRATED_METRICS
    assert learn.VARIANTS is layout.VARIANTS and mlp.MLP_VARIANTS is layout.MLP_VARIANTS
    assert retrieval.PROTOCOLS is layout.PROTOCOLS
    assert tuple(layout.MLP_VARIANTS) == report.LEARNED_METRICS
    assert report.ALIGNMENT_MEASURES is layout.SIMILARITY_MEASURES
