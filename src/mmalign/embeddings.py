"""The embeddings folder: its format, its writer and its reader (torch-free).

``results/{dataset}/{encoder}/embeddings/`` holds, rows in manifest order:

- ``image.npy`` (n_images x d_image float32) and ``images.parquet``
  (``image_id, split, eval_split``), one row per distinct image;
- ``text.npy`` (n_captions x d_text float32) and ``texts.parquet``
  (``image_id, caption_idx, split, eval_split, image_row``), one row per
  manifest row (the two splits: see :mod:`mmalign.datasets.base`);
  ``image_row`` is the row of the caption's image in ``image.npy``;
- ``meta.json``: dimensions, where the embeddings come from, and the config
  that produced them.

Three rules write it: ``embed_merge`` (:mod:`mmalign.embed`), ``adapt`` and
``embed_precomputed`` (:mod:`mmalign.precomputed`); every later stage reads it
with :meth:`Embeddings.load`. This module imports no model library, so the
precomputed path runs without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmalign.io import atomic_path, write_json, write_parquet

# The manifest's two split columns, carried into images.parquet and texts.parquet
# (those of them a frame has: the manifest has both).
SPLIT_COLUMNS = ("split", "eval_split")


def split_columns(frame: pd.DataFrame) -> list[str]:
    """The :data:`SPLIT_COLUMNS` that ``frame`` has, in that order."""
    return [c for c in SPLIT_COLUMNS if c in frame.columns]


def split_manifest(manifest: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(images, texts): distinct images in order of first appearance, and
    every caption with ``image_row``, the row of its image."""
    splits = split_columns(manifest)
    images = manifest.drop_duplicates("image_id")[["image_id", "image_path", *splits]]
    images = images.reset_index(drop=True)
    row_of = pd.Series(np.arange(len(images)), index=images["image_id"])
    texts = manifest[["image_id", "caption", "caption_idx", *splits]].reset_index(drop=True)
    texts["image_row"] = row_of.loc[texts["image_id"]].to_numpy()
    return images, texts


def write_embeddings(
    out_dir: Path,
    image: np.ndarray,
    text: np.ndarray,
    images: pd.DataFrame,
    texts: pd.DataFrame,
    meta: dict[str, Any],
) -> None:
    """Write the folder, each file atomically (``images``/``texts``: from
    :func:`split_manifest`, rows matching ``image``/``text``)."""
    for name, array in (("image.npy", image), ("text.npy", text)):
        with atomic_path(out_dir / name) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array.astype(np.float32, copy=False))
    write_parquet(images[["image_id", *split_columns(images)]], out_dir / "images.parquet")
    write_parquet(
        texts[["image_id", "caption_idx", *split_columns(texts), "image_row"]],
        out_dir / "texts.parquet",
    )
    write_json(meta, out_dir / "meta.json")


@dataclass
class Embeddings:
    """A merged embeddings folder, memory-mapped."""

    image: np.ndarray
    text: np.ndarray
    images: pd.DataFrame
    texts: pd.DataFrame
    meta: dict[str, Any]

    @classmethod
    def load(cls, folder: str | Path, mmap: bool = True) -> Embeddings:
        folder = Path(folder)
        mode = "r" if mmap else None
        return cls(
            np.load(folder / "image.npy", mmap_mode=mode),
            np.load(folder / "text.npy", mmap_mode=mode),
            pd.read_parquet(folder / "images.parquet"),
            pd.read_parquet(folder / "texts.parquet"),
            json.loads((folder / "meta.json").read_text()),
        )
