"""IMDB "Vision and NLP" (X. Zhang, Kaggle 2022, doi:10.34740/KAGGLE/DS/1937446):
about 4K movie posters, each captioned by its movie's title.

**The file layout below is assumed, not verified.** The dataset is Kaggle's
``raynardj/imdb-vision-and-nlp``; public sources confirm only that it ships a
``reviews.csv`` of user reviews (columns ``review_id, reviewer, movie, rating,
review_summary, ...``), which is not the poster list. What is assumed:

* ``{root}/{captions_file}`` is a CSV with a header row, one row per movie.
  Without ``captions_file`` in the config, the first of
  :data:`DEFAULT_CAPTIONS_FILES` that exists in ``root`` is used, else the
  only ``*.csv`` in ``root`` other than ``reviews.csv``.
* Its columns are found by name, the first present in each list winning:
  the movie id from :data:`ID_COLUMNS`, the title (the caption) from
  :data:`TITLE_COLUMNS`, and optionally a poster file from
  :data:`POSTER_COLUMNS`. It needs a title column and an id or poster column.
* The posters are in ``{root}/{images_dir}``. Without ``images_dir`` in the
  config, the first of :data:`DEFAULT_IMAGES_DIRS` that exists in ``root``
  is used, else ``root`` itself. A poster column's value is a path relative
  to that folder (a URL is ignored); otherwise the poster is the file in that
  folder named by the movie id with one of :data:`IMAGE_EXTENSIONS`.

Adjust the tuples below if the real files differ; the layout that was
actually used is written to the prepare report (``layout``), so a first run
on the real data shows whether the guess held. Each movie has one caption, its
title; the image id is the movie id (or the poster's file name without its
extension when there is no id column).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmalign.datasets.base import DatasetError, PrepareReport, RawImage
from mmalign.datasets.folder import read_csv_rows, resolve

log = logging.getLogger(__name__)

DEFAULT_CAPTIONS_FILES = ("movies.csv", "posters.csv", "movie_info.csv", "imdb.csv", "data.csv")
NOT_CAPTIONS_FILES = ("reviews.csv",)  # the dataset's review table: many rows per movie
DEFAULT_IMAGES_DIRS = ("posters", "poster", "images", "imgs")
ID_COLUMNS = ("imdb_id", "tconst", "movie_id", "id")
TITLE_COLUMNS = ("title", "movie_title", "primaryTitle", "name", "movie")
POSTER_COLUMNS = ("poster_file", "poster_path", "poster", "image", "file_name", "filename", "path")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


def _captions_file(cfg: dict[str, Any]) -> Path:
    if cfg.get("captions_file"):
        return resolve(cfg, "captions_file", "file")
    root = resolve(cfg, "root", "dir")
    for name in DEFAULT_CAPTIONS_FILES:
        if (root / name).is_file():
            return root / name
    csvs = sorted(p for p in root.glob("*.csv") if p.name not in NOT_CAPTIONS_FILES)
    if len(csvs) == 1:
        return csvs[0]
    raise DatasetError(
        f"{root}: cannot tell which CSV lists the posters and titles (found "
        f"{[p.name for p in csvs] or 'no CSV'}, looked for {list(DEFAULT_CAPTIONS_FILES)}); "
        f"set captions_file for this dataset"
    )


def _images_dir(cfg: dict[str, Any]) -> Path:
    if cfg.get("images_dir"):
        return resolve(cfg, "images_dir", "dir")
    root = resolve(cfg, "root", "dir")
    for name in DEFAULT_IMAGES_DIRS:
        if (root / name).is_dir():
            return root / name
    return root


def _first_present(header: list[str], candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        if name in header:
            return name
    return None


def _posters_by_stem(images_dir: Path) -> dict[str, Path]:
    """Poster files in ``images_dir`` by file name without extension."""
    rank = {ext: i for i, ext in enumerate(IMAGE_EXTENSIONS)}
    found: dict[str, Path] = {}
    for path in sorted(images_dir.iterdir()):
        ext = path.suffix.lower()
        if ext in rank and path.is_file():
            best = found.get(path.stem)
            if best is None or rank[ext] < rank[best.suffix.lower()]:
                found[path.stem] = path
    return found


def read(cfg: dict[str, Any], report: PrepareReport) -> Iterator[RawImage]:
    """One record per CSV row: the poster and the movie's title as its only caption."""
    path = _captions_file(cfg)
    images_dir = _images_dir(cfg)
    header, rows = read_csv_rows(path, (), report)
    id_col = _first_present(header, ID_COLUMNS)
    title_col = _first_present(header, TITLE_COLUMNS)
    poster_col = _first_present(header, POSTER_COLUMNS)
    if title_col is None or (id_col is None and poster_col is None):
        raise DatasetError(
            f"{path}: not an IMDB poster list: found the columns {header}, needed a title "
            f"column (one of {list(TITLE_COLUMNS)}) and an id column (one of "
            f"{list(ID_COLUMNS)}) or a poster column (one of {list(POSTER_COLUMNS)}). "
            f"Set captions_file to the right CSV, or extend these names in "
            f"mmalign/datasets/imdb.py"
        )
    layout = {
        "captions_file": str(path),
        "images_dir": str(images_dir),
        "id_column": id_col,
        "title_column": title_col,
        "poster_column": poster_col,
    }
    report.notes["layout"] = layout
    log.info("IMDB layout (assumed, check it): %s", layout)

    by_stem: dict[str, Path] | None = None
    for line, row in rows:
        where = f"{path}:{line}"
        poster = (row.get(poster_col) or "").strip() if poster_col else ""
        if "://" in poster:
            poster = ""  # a download URL, not a local file
        image_id = (row.get(id_col) or "").strip() if id_col else Path(poster).stem
        if not image_id:
            column = id_col or poster_col
            report.bad("malformed_row", where, f"the '{column}' field is empty")
            continue
        if poster:
            image_path = images_dir / poster
        else:
            if by_stem is None:
                by_stem = _posters_by_stem(images_dir)
            image_path = by_stem.get(image_id, images_dir / f"{image_id}{IMAGE_EXTENSIONS[0]}")
        yield RawImage(image_id, image_path, (row.get(title_col) or "",), where)
