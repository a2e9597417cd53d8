"""Embeddings computed elsewhere (encoder ``kind: precomputed``), validated
against the manifest and written as a standard embeddings folder.

No model library is imported (numpy, pandas and pyarrow only): the rule
``embed_precomputed`` runs in the data environment.

The input, per modality (``image:`` and ``text:`` in the encoder's config;
``{dataset}`` in a path is replaced by the dataset's name):

- a ``.parquet`` with the id columns and an ``embedding`` column of float
  lists (every row the same length), or
- a ``.npy`` 2-D matrix with its ids beside it: ``<name>.ids.parquet`` or
  ``<name>.ids.csv`` (for ``image.npy``: ``image.ids.parquet``), one row per
  matrix row, in the same order.

The id columns are ``image_id`` for images and ``image_id, caption_idx`` for
captions: those of the dataset's manifest (``results/{dataset}/manifest.parquet``).
Rows may come in any order; they are put in manifest order. Any integer or
floating dtype is converted to float32 (and the log says so). A file that
lacks a manifest id, holds an id twice, has rows of different lengths, or
holds NaN or inf stops the rule with an error that names the file and what to
fix; rows with ids the manifest lacks are an error too, or are dropped with
``extra_ids: ignore``. The output is :mod:`mmalign.embeddings`'s folder, as
``embed_merge`` writes it, so every later stage runs unchanged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmalign import layout
from mmalign.embeddings import split_manifest, write_embeddings

log = logging.getLogger(__name__)

#: The id columns of each modality's file.
KEYS = {"image": ("image_id",), "text": ("image_id", "caption_idx")}
#: The embedding column of a parquet input.
EMBEDDING_COLUMN = "embedding"
#: The suffixes of a ``.npy`` input's ids file, in the order they are looked for.
IDS_SUFFIXES = (".ids.parquet", ".ids.csv")
#: Ids named in an error message, at most.
SHOWN = 5


class PrecomputedError(ValueError):
    """Precomputed embeddings that do not fit the manifest; the message names
    the file and what to fix."""


def source_path(spec: dict[str, Any], modality: str, dataset: str) -> Path:
    """The file of ``modality`` (``image`` or ``text``) for ``dataset``."""
    return Path(spec[modality].replace("{dataset}", dataset))


def ids_files(matrix: Path) -> list[Path]:
    """The ids files that may sit beside a ``.npy`` matrix (see :data:`IDS_SUFFIXES`)."""
    stem = matrix.name.removesuffix(".npy")
    return [matrix.with_name(stem + suffix) for suffix in IDS_SUFFIXES]


def input_files(spec: dict[str, Any], dataset: str) -> list[str]:
    """What the rule reads for ``dataset``: both files, and each ``.npy``'s ids
    file where one exists (a missing one is :func:`read_source`'s error, which
    says what to write)."""
    files = []
    for modality in KEYS:
        path = source_path(spec, modality, dataset)
        files.append(str(path))
        if path.suffix == ".npy":
            files += [str(p) for p in ids_files(path) if p.exists()]
    return files


# ---------------------------------------------------------------- reading


def _parquet_source(path: Path, keys: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise PrecomputedError(f"{path}: not a readable parquet file ({err})") from err
    missing = [c for c in (*keys, EMBEDDING_COLUMN) if c not in table.column_names]
    if missing:
        raise PrecomputedError(
            f"{path}: no column {', '.join(map(repr, missing))} (it has "
            f"{table.column_names}); write the id columns {list(keys)} and "
            f"{EMBEDDING_COLUMN!r}, a list of floats per row"
        )
    ids = table.select(list(keys)).to_pandas()
    column = table.column(EMBEDDING_COLUMN).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
            or pa.types.is_fixed_size_list(column.type)):  # fmt: skip
        raise PrecomputedError(
            f"{path}: column {EMBEDDING_COLUMN!r} is {column.type}, not a list of floats; "
            "write one list (or array) of floats per row"
        )
    if column.null_count:
        first = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
        raise PrecomputedError(
            f"{path}: {column.null_count} rows have no {EMBEDDING_COLUMN!r} (null), first "
            f"{_label(ids, keys, first)}; write an embedding for every row"
        )
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        other = int(np.flatnonzero(lengths != lengths[0])[0])
        raise PrecomputedError(
            f"{path}: the {EMBEDDING_COLUMN!r} rows have different lengths ({lengths[0]} for "
            f"{_label(ids, keys, 0)}, {lengths[other]} for {_label(ids, keys, other)}); every "
            "row must have the same dimension"
        )
    values = column.flatten()
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise PrecomputedError(
            f"{path}: the {EMBEDDING_COLUMN!r} values are {values.type}, not numbers; write "
            "floats (float32 is stored as is, other numbers are converted)"
        )
    dim = int(lengths[0]) if len(lengths) else 0
    matrix = values.to_numpy(zero_copy_only=False).reshape(len(column), dim)
    return ids, matrix


def _npy_source(path: Path, keys: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    try:
        matrix = np.load(path, mmap_mode="r")  # no object arrays: numpy refuses them by default
    except (OSError, ValueError) as err:
        raise PrecomputedError(
            f"{path}: not a readable .npy matrix ({err}); save it with numpy.save, "
            "a plain numeric array (no objects)"
        ) from err
    if matrix.ndim != 2:
        raise PrecomputedError(
            f"{path}: a {matrix.ndim}-D array of shape {matrix.shape}; write a 2-D matrix, "
            "one row per id"
        )
    found = [p for p in ids_files(path) if p.exists()]
    if not found:
        raise PrecomputedError(
            f"{path}: no ids file beside it; write {ids_files(path)[0]} (or "
            f"{ids_files(path)[1]}) with the columns {list(keys)}, one row per matrix row, "
            "in the matrix's order"
        )
    if len(found) > 1:
        raise PrecomputedError(
            f"{path}: two ids files beside it ({found[0]} and {found[1]}); keep one"
        )
    ids_path = found[0]
    try:
        if ids_path.suffix == ".csv":
            ids = pd.read_csv(ids_path, dtype={"image_id": str}, keep_default_na=False)
        else:
            ids = pd.read_parquet(ids_path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise PrecomputedError(f"{ids_path}: not a readable ids file ({err})") from err
    missing = [c for c in keys if c not in ids.columns]
    if missing:
        raise PrecomputedError(
            f"{ids_path}: no column {', '.join(map(repr, missing))} (it has "
            f"{list(ids.columns)}); write the id columns {list(keys)} of {path}'s rows"
        )
    if len(ids) != len(matrix):
        raise PrecomputedError(
            f"{path}: {len(matrix)} rows, but {ids_path} names {len(ids)} ids; write one id "
            "per matrix row, in the matrix's order"
        )
    return ids[list(keys)], matrix


def read_source(path: Path, keys: tuple[str, ...]) -> tuple[pd.DataFrame, np.ndarray]:
    """(ids, matrix) of one input file, as stored: the ids' rows are the matrix's."""
    if not path.exists():
        raise PrecomputedError(f"{path}: no such file; write it, or fix the path in the config")
    if path.suffix == ".parquet":
        ids, matrix = _parquet_source(path, keys)
    elif path.suffix == ".npy":
        ids, matrix = _npy_source(path, keys)
    else:
        raise PrecomputedError(f"{path}: not a .parquet or .npy file")
    if matrix.shape[1] == 0:
        raise PrecomputedError(f"{path}: the embeddings have 0 dimensions")
    return _normal_ids(path, ids, keys), matrix


def _normal_ids(path: Path, ids: pd.DataFrame, keys: tuple[str, ...]) -> pd.DataFrame:
    """Ids as the manifest spells them: ``image_id`` text, ``caption_idx`` int64."""
    out = pd.DataFrame(index=range(len(ids)))
    if ids["image_id"].isna().any():
        first = int(np.flatnonzero(ids["image_id"].isna().to_numpy())[0])
        raise PrecomputedError(f"{path}: image_id is empty in row {first}; give every row its id")
    out["image_id"] = ids["image_id"].astype(str).to_numpy()
    if "caption_idx" in keys:
        idx = pd.to_numeric(ids["caption_idx"], errors="coerce")
        bad = idx.isna().to_numpy() | (idx.fillna(0) % 1 != 0).to_numpy()
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise PrecomputedError(
                f"{path}: caption_idx {ids['caption_idx'].iloc[first]!r} in row {first} is not "
                "a whole number; write the manifest's caption_idx (0 for an image's first caption)"
            )
        out["caption_idx"] = idx.to_numpy().astype(np.int64)
    return out


def _label(ids: pd.DataFrame, keys: tuple[str, ...], row: int) -> str:
    """Row ``row``'s id as messages write it: ``'a'``, or ``'a'#2`` for a caption."""
    if "caption_idx" in keys:
        return f"{ids['image_id'].iloc[row]!r}#{ids['caption_idx'].iloc[row]}"
    return repr(str(ids["image_id"].iloc[row]))


def _first(ids: pd.DataFrame, keys: tuple[str, ...], rows: np.ndarray) -> str:
    shown = ", ".join(_label(ids, keys, int(r)) for r in rows[:SHOWN])
    return shown + (", ..." if len(rows) > SHOWN else "")


# ---------------------------------------------------------------- validation


@dataclass
class Modality:
    """One modality's embeddings in manifest order, and what was done to fit them."""

    matrix: np.ndarray  # float32, one row per manifest id
    dtype: str  # the file's dtype
    extra: int  # rows dropped: ids the manifest lacks (extra_ids: ignore)


def to_float32(path: Path, matrix: np.ndarray) -> tuple[np.ndarray, str]:
    """``matrix`` as float32, and the dtype it had; a non-number dtype is an error."""
    dtype = matrix.dtype
    if dtype.kind not in "iuf":
        raise PrecomputedError(
            f"{path}: the embeddings are {dtype}, not numbers; write floats (float32 is "
            "stored as is, other integer and float types are converted)"
        )
    if dtype != np.float32:
        with np.errstate(over="ignore"):
            matrix = np.asarray(matrix, dtype=np.float32)
        log.info("%s: converted the embeddings from %s to float32", path, dtype)
    return np.asarray(matrix), str(dtype)


def manifest_rows(
    path: Path,
    ids: pd.DataFrame,
    wanted: pd.DataFrame,
    keys: tuple[str, ...],
    where: dict[str, str],
) -> tuple[np.ndarray, int]:
    """The file's row of each of ``wanted``'s ids (manifest order), and the
    number of its rows whose ids ``wanted`` lacks (an error unless
    ``where["extra_ids"]`` is ``ignore``)."""
    what = "caption" if "caption_idx" in keys else "image"
    found = pd.MultiIndex.from_frame(ids[list(keys)])
    twice = np.flatnonzero(found.duplicated(keep="first"))
    if len(twice):
        raise PrecomputedError(
            f"{path}: {len(twice)} rows repeat an id already given (first: "
            f"{_first(ids, keys, twice)}); give each {what} one row"
        )
    want = pd.DataFrame({"image_id": wanted["image_id"].astype(str).to_numpy()})
    if "caption_idx" in keys:
        want["caption_idx"] = wanted["caption_idx"].to_numpy().astype(np.int64)
    rows = found.get_indexer(pd.MultiIndex.from_frame(want))
    missing = np.flatnonzero(rows < 0)
    if len(missing):
        raise PrecomputedError(
            f"{path}: {len(missing)} of the manifest's {len(want)} {what}s have no row (first: "
            f"{_first(want, keys, missing)}); write a row for every {' and '.join(keys)} of "
            f"{where['manifest']} (dataset {where['dataset']!r})"
        )
    extra = np.setdiff1d(np.arange(len(ids)), rows)
    if len(extra) and where["extra_ids"] != "ignore":
        raise PrecomputedError(
            f"{path}: {len(extra)} rows have ids that {where['manifest']} lacks (first: "
            f"{_first(ids, keys, extra)}); they may be {what}s the manifest left out "
            "(max_images, captions: first, skipped bad input): remove them, or set "
            f"encoders.{where['encoder']}.extra_ids: ignore to drop them"
        )
    if len(extra):
        log.info("%s: dropped %d rows whose ids %s lacks", path, len(extra), where["manifest"])
    return rows, len(extra)


def check_finite(path: Path, matrix: np.ndarray, ids: pd.DataFrame, keys: tuple[str, ...]) -> None:
    """NaN or inf in ``matrix`` (rows matching ``ids``) is an error naming the first id."""
    bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
    if len(bad):
        raise PrecomputedError(
            f"{path}: {len(bad)} embeddings contain NaN or inf (after conversion to "
            f"float32), first {_label(ids, keys, int(bad[0]))}; fix or recompute them"
        )


def load_modality(
    path: Path, modality: str, wanted: pd.DataFrame, where: dict[str, str]
) -> Modality:
    """Read, check and order one modality's file against ``wanted`` (the
    manifest's images or texts)."""
    keys = KEYS[modality]
    ids, matrix = read_source(path, keys)
    rows, extra = manifest_rows(path, ids, wanted, keys, where)
    ordered, dtype = to_float32(path, matrix[rows] if len(rows) else matrix[:0])
    check_finite(path, ordered, wanted.reset_index(drop=True), keys)
    return Modality(np.ascontiguousarray(ordered), dtype, extra)


def embed_precomputed(
    manifest: pd.DataFrame,
    spec: dict[str, Any],
    dataset: str,
    encoder: str,
    out_dir: str | Path,
    meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Validate the encoder's files against ``manifest`` and write the
    embeddings folder ``out_dir``; returns its ``meta.json``.

    ``spec`` is the validated encoder config (``kind: precomputed``; its
    ``adapter``, if any, is the ``adapt`` rule's)."""
    where = {
        "dataset": dataset,
        "encoder": encoder,
        "manifest": layout.path("manifest", dataset=dataset),
        "extra_ids": spec["extra_ids"],
    }
    images, texts = split_manifest(manifest)
    paths = {modality: source_path(spec, modality, dataset) for modality in KEYS}
    image = load_modality(paths["image"], "image", images, where)
    text = load_modality(paths["text"], "text", texts, where)
    summary = {
        "dataset": dataset,
        "encoder": encoder,
        "config": spec,
        **(meta or {}),
        "n_images": len(images),
        "n_texts": len(texts),
        "dim_image": int(image.matrix.shape[1]),
        "dim_text": int(text.matrix.shape[1]),
        "precomputed": {
            "files": {m: str(p) for m, p in paths.items()},
            "dtype": {"image": image.dtype, "text": text.dtype},
            "extra_rows_dropped": {"image": image.extra, "text": text.extra},
        },
    }
    write_embeddings(Path(out_dir), image.matrix, text.matrix, images, texts, summary)
    log.info(
        "%s/%s: %d images (%d-d) and %d captions (%d-d) from %s and %s",
        dataset, encoder, len(images), summary["dim_image"], len(texts), summary["dim_text"],
        paths["image"], paths["text"],
    )  # fmt: skip
    return summary
