"""The manifest contract and the checks every dataset adapter shares.

An adapter reads one raw format and yields :class:`RawImage` records (one per
image, its captions in the dataset's own order). :func:`build_manifest` turns
them into the manifest: one row per caption with the columns
``image_id, image_path, caption, caption_idx, split, eval_split``. Bad input is
either an error naming the file and row, or a counted skip recorded in the
report, depending on ``on_bad_input``; nothing is dropped silently.

The two split columns answer two questions and never stand in for each other:

- ``split`` (``splits.source``): train/val/test of the workflow's own
  experiments: the learned stage (the paper's random 80/10/10), the PCA
  adapter's fit and QB-Norm's query bank. A seeded random split by default.
- ``eval_split`` (``splits.eval_source``): the split the ``multicaption``
  protocol scores (``retrieval.multicaption_split`` of it). ``split`` (the
  default) copies ``split``; ``dataset`` takes the split the file gives, e.g.
  Karpathy's 1K Flickr30K test split for the paper's Table 5, whatever
  ``splits.source`` is.

Both are always one of ``train``, ``val``, ``test``, and constant over the
captions of one image.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from mmalign import seeding
from mmalign.config import schema_defaults
from mmalign.images import ImageReadError, probe_image
from mmalign.layout import SPLITS

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ["image_id", "image_path", "caption", "caption_idx", "split", "eval_split"]
# splits.source fills `split`; splits.eval_source fills `eval_split`.
SPLIT_SOURCES = ("random", "dataset")
EVAL_SOURCES = ("split", "dataset")


class DatasetError(ValueError):
    """Bad dataset input. The message names the file, the row and what would fix it."""


@dataclass(frozen=True)
class RawImage:
    """One image and its captions as an adapter read them.

    ``where`` says where the record came from (``"results.csv:17"``), for error
    messages. ``split`` is the dataset's own split (Karpathy JSON, a folder's
    ``split`` column), else None.
    ``caption_where`` optionally locates each caption separately.
    """

    image_id: str
    image_path: Path
    captions: tuple[str, ...]
    where: str
    split: str | None = None
    caption_where: tuple[str, ...] | None = None


@dataclass
class PrepareReport:
    """What happened to every raw record: kept, or skipped and why."""

    dataset: str
    on_bad_input: str = "error"  # "error" or "skip"
    raw_images: int = 0
    raw_captions: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def bad(self, reason: str, where: str, detail: str) -> None:
        """Bad input at ``where``: raise, or record a counted, logged skip."""
        if self.on_bad_input == "error":
            raise DatasetError(
                f"{where}: {reason.replace('_', ' ')}: {detail}. Fix the input, or set "
                f"on_bad_input: skip for dataset '{self.dataset}' to skip and count such rows."
            )
        log.warning("skipping %s: %s (%s)", where, reason.replace("_", " "), detail)
        self.skipped.append({"reason": reason, "where": where, "detail": detail})

    def drop(self, reason: str, where: str, detail: str) -> None:
        """Leave a record out by protocol (not bad input): always counted, never an error."""
        log.debug("leaving out %s: %s (%s)", where, reason.replace("_", " "), detail)
        self.raw_images += 1  # read, then left out before reaching build_manifest
        self.skipped.append({"reason": reason, "where": where, "detail": detail})

    def skipped_by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(s["reason"] for s in self.skipped).items()))

    def to_dict(self, manifest: pd.DataFrame) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "raw_images": self.raw_images,
            "raw_captions": self.raw_captions,
            "images": int(manifest["image_id"].nunique()),
            "pairs": len(manifest),
            "distinct_captions": int(manifest["caption"].nunique()),
            "splits": {
                s: int(manifest.loc[manifest["split"] == s, "image_id"].nunique()) for s in SPLITS
            },
            "eval_splits": {
                s: int(manifest.loc[manifest["eval_split"] == s, "image_id"].nunique())
                for s in SPLITS
            },
            "skipped": self.skipped_by_reason(),
            **self.notes,
        }


_DEFAULTS = schema_defaults("datasets.*")


@dataclass(frozen=True)
class ManifestOptions:
    """The protocol options shared by every dataset kind (see the config schema: the
    defaults are its) and the seed."""

    captions: str = _DEFAULTS["captions"]  # "first" (the paper's 1:1) or "all"
    max_images: int | None = _DEFAULTS["max_images"]
    split_source: str = _DEFAULTS["splits"]["source"]  # "random" or "dataset": fills `split`
    # "split" (a copy of `split`) or "dataset": fills `eval_split`
    eval_source: str = _DEFAULTS["splits"]["eval_source"]
    split_fractions: tuple[float, float, float] = tuple(
        _DEFAULTS["splits"][s] for s in ("train", "val", "test")
    )
    check_images: bool = _DEFAULTS["check_images"]
    seed: int = 0  # the config's top-level seed, passed to from_config

    @classmethod
    def from_config(cls, dataset_cfg: dict[str, Any], seed: int) -> ManifestOptions:
        """From a validated ``datasets.<name>`` entry (every key filled)."""
        splits = dataset_cfg["splits"]
        return cls(
            captions=dataset_cfg["captions"],
            max_images=dataset_cfg["max_images"],
            split_source=splits["source"],
            eval_source=splits["eval_source"],
            split_fractions=(splits["train"], splits["val"], splits["test"]),
            check_images=dataset_cfg["check_images"],
            seed=seed,
        )


def clean_caption(text: str) -> str:
    """Collapse whitespace; the caption's words are kept as they are."""
    return " ".join(str(text).split())


def assign_splits(
    image_ids: list[str], fractions: tuple[float, float, float], seed: int
) -> dict[str, str]:
    """Seeded random train/val/test assignment of whole images.

    The ids are sorted first, so the assignment depends only on the set of ids
    and the seed, not on the order an adapter read them in.
    """
    ids = sorted(image_ids)
    order = seeding.rng(seed).permutation(len(ids))
    total = sum(fractions)
    n_train = round(len(ids) * fractions[0] / total)
    n_val = round(len(ids) * fractions[1] / total)
    out: dict[str, str] = {}
    for rank, i in enumerate(order):
        out[ids[i]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return out


def _check_dataset_splits(kept: list[RawImage], key: str, dataset: str) -> None:
    """Every record has a split of its own, as ``splits.<key>: dataset`` needs."""
    for rec in kept:
        if rec.split not in SPLITS:
            raise DatasetError(
                f"{rec.where}: splits.{key} is 'dataset' but image {rec.image_id!r} has split "
                f"{rec.split!r} (needed one of {list(SPLITS)}); give the file's split (Karpathy "
                f"JSON, a folder's 'split' column), or set datasets.{dataset}.splits.{key}: "
                f"{'random' if key == 'source' else 'split'}."
            )


def build_manifest(
    records: Iterable[RawImage], opts: ManifestOptions, report: PrepareReport
) -> pd.DataFrame:
    """Validate adapter records and apply the protocol options.

    Order of operations: per-record checks (duplicate id, missing or unreadable
    image, empty captions), then the seeded ``max_images`` subset, then the
    two split columns (``split`` and ``eval_split``, see the module
    docstring), then the caption protocol (first caption only, or all of them).
    """
    seen: dict[str, str] = {}
    kept: list[RawImage] = []
    records = list(records)
    for rec in tqdm(records, desc=f"checking {report.dataset}", unit="img", mininterval=2):
        report.raw_images += 1
        report.raw_captions += len(rec.captions)
        if rec.image_id in seen:
            report.bad(
                "duplicate_image_id",
                rec.where,
                f"image id {rec.image_id!r} already given at {seen[rec.image_id]}",
            )
            continue
        seen[rec.image_id] = rec.where
        if not rec.image_path.is_file():
            report.bad("missing_image", rec.where, f"no file at {rec.image_path}")
            continue
        if opts.check_images:
            try:
                probe_image(rec.image_path)
            except ImageReadError as err:
                report.bad("unreadable_image", rec.where, str(err))
                continue
        wheres = rec.caption_where or (rec.where,) * len(rec.captions)
        captions = []
        for text, where in zip(rec.captions, wheres, strict=True):
            cleaned = clean_caption(text)
            if cleaned:
                captions.append(cleaned)
            else:
                report.bad("empty_caption", where, f"image {rec.image_id!r} has an empty caption")
        if not captions:
            if rec.captions:
                continue  # its empty captions are already counted
            report.bad("no_caption", rec.where, f"image {rec.image_id!r} has no caption")
            continue
        kept.append(RawImage(rec.image_id, rec.image_path, tuple(captions), rec.where, rec.split))

    if not kept:
        raise DatasetError(
            f"dataset '{report.dataset}' is empty: {report.raw_images} images read, none usable "
            f"(skipped: {report.skipped_by_reason() or 'none'}). Check its paths in the config."
        )

    if opts.max_images is not None and opts.max_images < len(kept):
        kept.sort(key=lambda r: r.image_id)
        pick = seeding.rng(opts.seed).choice(len(kept), opts.max_images, replace=False)
        kept = [kept[i] for i in sorted(pick)]

    if opts.split_source not in SPLIT_SOURCES:
        raise ValueError(f"splits.source {opts.split_source!r}; known: {SPLIT_SOURCES}")
    if opts.eval_source not in EVAL_SOURCES:
        raise ValueError(f"splits.eval_source {opts.eval_source!r}; known: {EVAL_SOURCES}")
    for key, source in (("source", opts.split_source), ("eval_source", opts.eval_source)):
        if source == "dataset":
            _check_dataset_splits(kept, key, report.dataset)
    file_split = {r.image_id: str(r.split) for r in kept}
    if opts.split_source == "dataset":
        split_of = file_split
    else:
        split_of = assign_splits([r.image_id for r in kept], opts.split_fractions, opts.seed)
    eval_of = file_split if opts.eval_source == "dataset" else split_of

    rows = []
    for rec in kept:
        caps = rec.captions[:1] if opts.captions == "first" else rec.captions
        for idx, cap in enumerate(caps):
            rows.append((
                rec.image_id, str(rec.image_path), cap, idx,
                split_of[rec.image_id], eval_of[rec.image_id],
            ))  # fmt: skip
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    manifest["caption_idx"] = manifest["caption_idx"].astype("int32")
    return manifest.sort_values(["image_id", "caption_idx"], kind="stable").reset_index(drop=True)


def multicaption_note(
    images: pd.DataFrame,
    texts: pd.DataFrame,
    split: str,
    dataset: str,
    captions: str | None = None,
) -> str:
    """Why the ``multicaption`` protocol cannot be scored on ``dataset``, or ``""``.

    ``images`` and ``texts`` are an embeddings folder's ``images.parquet``
    (``eval_split`` per image) and ``texts.parquet`` (``image_row`` per
    caption); ``split`` is ``retrieval.multicaption_split``; ``captions`` the
    dataset's ``captions`` key, when known, to name the fix. The protocol scores
    the images whose ``eval_split`` is ``split``, each with all its captions.
    The note (``"n/a: ..."``) is returned when no image is in that split, or
    when every one of them has exactly one caption: image-to-text precision@K
    could then not exceed 1/K (0.2 at K = 5) and the protocol would repeat
    ``full`` on fewer images. Images with one caption among others with
    several are fine (each query's recall@K divides by its own count).
    """
    if "eval_split" not in images.columns:
        raise DatasetError(
            f"dataset '{dataset}': images.parquet has no eval_split column (embeddings made "
            "before it existed); re-run prepare and the embed rules"
        )
    rows = np.flatnonzero(images["eval_split"].to_numpy() == split)
    if len(rows) == 0:
        return (
            f"n/a: no image of dataset '{dataset}' is in eval split {split!r} "
            f"(retrieval.multicaption_split; datasets.{dataset}.splits.eval_source picks "
            "the eval_split column)"
        )
    per_image = np.bincount(texts["image_row"].to_numpy(dtype=np.int64), minlength=len(images))
    if per_image[rows].max() > 1:
        return ""
    if captions == "first":
        fix = (
            f"datasets.{dataset}.captions is 'first': set it to 'all', or remove 'multicaption' "
            "from retrieval.protocols"
        )
    elif captions == "all":
        fix = (
            f"datasets.{dataset}.captions is 'all' but the data has one caption per image: "
            "remove 'multicaption' from retrieval.protocols for it"
        )
    else:
        fix = (
            f"set datasets.{dataset}.captions: all if the data has several captions per "
            "image, or remove 'multicaption' from retrieval.protocols"
        )
    return (
        f"n/a: every one of the {len(rows)} images in eval split {split!r} of dataset "
        f"'{dataset}' has one caption, so image-to-text precision@K could not exceed 1/K "
        f"(0.2 at K = 5); {fix}"
    )
