"""Dataset adapters: each raw format becomes the manifest contract.

``ADAPTERS`` maps a dataset ``kind`` (config) to a reader
``read(cfg, report) -> Iterable[RawImage]``. Readers raise :class:`DatasetError`
for a file they cannot use at all (wrong columns, not JSON) and call
``report.bad(...)`` for one bad row, which raises or skips per the config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import pandas as pd

from mmalign.datasets import coco, flickr30k, folder, imdb, openclipart
from mmalign.datasets.base import (
    MANIFEST_COLUMNS,
    DatasetError,
    ManifestOptions,
    PrepareReport,
    RawImage,
    build_manifest,
    multicaption_note,
)
from mmalign.io import write_csv, write_json, write_parquet

log = logging.getLogger(__name__)

Reader = Callable[[dict[str, Any], PrepareReport], Iterable[RawImage]]

ADAPTERS: dict[str, Reader] = {
    "openclipart": openclipart.read,
    "flickr30k": flickr30k.read,
    "coco": coco.read,
    "imdb": imdb.read,
    "folder": folder.read,
}


def prepare_dataset(
    name: str, dataset_cfg: dict[str, Any], seed: int
) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, str]]]:
    """Read dataset ``name`` and return (manifest, report summary, skipped rows)."""
    kind = dataset_cfg["kind"]
    if kind not in ADAPTERS:
        raise DatasetError(
            f"datasets.{name}.kind: unknown dataset kind {kind!r}; known: {sorted(ADAPTERS)}"
        )
    report = PrepareReport(dataset=name, on_bad_input=dataset_cfg.get("on_bad_input", "error"))
    opts = ManifestOptions.from_config(dataset_cfg, seed)
    manifest = build_manifest(ADAPTERS[kind](dataset_cfg, report), opts, report)
    return manifest, report.to_dict(manifest), report.skipped


__all__ = [
    "ADAPTERS",
    "MANIFEST_COLUMNS",
    "DatasetError",
    "ManifestOptions",
    "PrepareReport",
    "RawImage",
    "build_manifest",
    "multicaption_note",
    "prepare_dataset",
    "prepare_to_files",
]


def prepare_to_files(
    name: str, config: dict[str, Any], manifest_path: str, report_path: str, skipped_path: str
) -> dict[str, Any]:
    """Run :func:`prepare_dataset` for ``config["datasets"][name]`` and write its
    three outputs atomically: the manifest, a JSON summary, and every left-out
    record with its reason (CSV)."""
    manifest, summary, skipped = prepare_dataset(name, config["datasets"][name], config["seed"])
    examples: dict[str, list[str]] = {}
    for row in skipped:
        examples.setdefault(row["reason"], [])
        if len(examples[row["reason"]]) < 5:
            examples[row["reason"]].append(f"{row['where']}: {row['detail']}")
    summary["skipped_examples"] = examples
    summary["config"] = config["datasets"][name]
    write_parquet(manifest, manifest_path)
    write_csv(pd.DataFrame(skipped, columns=["reason", "where", "detail"]), skipped_path)
    write_json(summary, report_path)
    log.info(
        "%s: %d images, %d pairs (%d distinct captions); left out: %s",
        name,
        summary["images"],
        summary["pairs"],
        summary["distinct_captions"],
        summary["skipped"] or "nothing",
    )
    return summary
