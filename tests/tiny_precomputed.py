"""An embeddings folder exported as ``kind: precomputed`` input (see
:mod:`mmalign.precomputed`), for tests that run the workflow on it.

Torch-free: reads the folder with :class:`mmalign.embeddings.Embeddings`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmalign.embeddings import Embeddings
from mmalign.precomputed import EMBEDDING_COLUMN, KEYS, ids_files


def embedding_column(matrix: np.ndarray) -> pa.Array:
    """One fixed-size list of floats per row of ``matrix``, of its dtype."""
    matrix = np.ascontiguousarray(matrix)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def write_parquet_source(path: Path, ids: pd.DataFrame, matrix: np.ndarray) -> None:
    """The parquet form: the id columns and ``embedding``."""
    table = pa.Table.from_pandas(ids.reset_index(drop=True), preserve_index=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table.append_column(EMBEDDING_COLUMN, embedding_column(matrix)), path)


def write_npy_source(
    path: Path, ids: pd.DataFrame, matrix: np.ndarray, ids_as: str = "csv"
) -> None:
    """The .npy form: the matrix and its ids beside it (``<name>.ids.csv`` or ``.parquet``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, matrix)
    ids_path = next(p for p in ids_files(path) if p.suffix == f".{ids_as}")
    if ids_as == "csv":
        ids.to_csv(ids_path, index=False)
    else:
        ids.to_parquet(ids_path, index=False)


def export_precomputed(embeddings_dir: Path, folder: Path, form: str = "parquet") -> dict[str, Any]:
    """Write the embeddings folder ``embeddings_dir``'s matrices into ``folder``
    in the precomputed format (``form``: ``parquet``, or ``npy`` with ids CSVs),
    rows in reverse order (the reader must put them back in manifest order);
    returns the encoder's spec (absolute paths)."""
    emb = Embeddings.load(embeddings_dir, mmap=False)
    folder = Path(folder).resolve()
    spec: dict[str, Any] = {"kind": "precomputed"}
    for modality, matrix, frame in (
        ("image", emb.image, emb.images),
        ("text", emb.text, emb.texts),
    ):
        ids = frame[list(KEYS[modality])].iloc[::-1].reset_index(drop=True)
        rows = np.asarray(matrix)[::-1]
        path = folder / f"{modality}.{form}"
        if form == "parquet":
            write_parquet_source(path, ids, rows)
        elif form == "npy":
            write_npy_source(path, ids, rows)
        else:
            raise ValueError(f"form {form!r}: parquet or npy")
        spec[modality] = str(path)
    return spec
