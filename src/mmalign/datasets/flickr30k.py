"""Flickr30K: 31,783 images with 5 captions each, in either of its two common formats.

The format follows the extension of ``captions_file``:

``.csv`` — Kaggle's ``results.csv`` (hsankesara/flickr-image-dataset)::

    image_name| comment_number| comment
    1000092795.jpg| 0| Two young guys with shaggy hair look at their hands ...
    1000092795.jpg| 1| Two young , White males are outside near many bushes .

``|``-separated with spaces around the fields, five rows per image
(``comment_number`` 0-4). Captions are ordered by ``comment_number``. A row
that does not split into three fields is bad input (``malformed_row``): the
real file has one, ``2199200615.jpg| 4   A dog runs across the grass .``.

``.json`` — Karpathy's ``dataset_flickr30k.json``::

    {"images": [{"filename": "1000092795.jpg", "imgid": 0, "split": "train",
                 "sentences": [{"raw": "Two young guys ...", "tokens": [...]}, ...]},
                ...],
     "dataset": "flickr30k"}

Captions are the sentences' ``raw`` text in file order. The file's split is
kept ("restval" counts as "train"), so ``splits: {source: dataset}`` gives the
standard 1K test split.

The image id is the file name without its extension; the image is
``{images_dir}/{file name}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmalign.datasets.base import DatasetError, PrepareReport, RawImage
from mmalign.datasets.folder import load_json, resolve

CSV_HEADER = ["image_name", "comment_number", "comment"]
SPLIT_ALIASES = {"restval": "train"}


def read(cfg: dict[str, Any], report: PrepareReport) -> Iterator[RawImage]:
    """Read ``captions_file`` as Kaggle's results.csv or Karpathy's JSON, by extension."""
    captions_file = resolve(cfg, "captions_file", "file")
    images_dir = resolve(cfg, "images_dir", "dir")
    suffix = captions_file.suffix.lower()
    if suffix == ".csv":
        return read_results_csv(captions_file, images_dir, report)
    if suffix == ".json":
        return read_karpathy_json(captions_file, images_dir, report)
    raise DatasetError(
        f"{captions_file}: unknown Flickr30K captions format {suffix!r}; use Kaggle's "
        f"results.csv ('.csv') or Karpathy's dataset_flickr30k.json ('.json')"
    )


def read_results_csv(path: Path, images_dir: Path, report: PrepareReport) -> Iterator[RawImage]:
    """Kaggle's ``results.csv``: ``image_name| comment_number| comment`` rows."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err}); is this results.csv?") from err
    header = [field.strip() for field in lines[0].split("|")] if lines else []
    if header != CSV_HEADER:
        raise DatasetError(
            f"{path}:1: not Kaggle's Flickr30K results.csv: found the columns {header}, "
            f"needed {CSV_HEADER} separated by '|'. Use that file, or a .json captions_file "
            f"for Karpathy's format"
        )

    # image name -> (first row, [(comment number, comment, row)])
    images: dict[str, tuple[int, list[tuple[int, str, int]]]] = {}
    for number, text in enumerate(lines[1:], start=2):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        fields = text.split("|", 2)
        if len(fields) != 3:
            report.bad(
                "malformed_row",
                where,
                f"{len(fields)} '|'-separated field(s), needed 3 ({', '.join(CSV_HEADER)}): "
                f"{text.strip()[:80]!r}",
            )
            continue
        name, comment_number, comment = (field.strip() for field in fields)
        if not name:
            report.bad("malformed_row", where, "the image_name field is empty")
            continue
        try:
            order = int(comment_number)
        except ValueError:
            report.bad(
                "malformed_row", where, f"comment_number {comment_number!r} is not an integer"
            )
            continue
        images.setdefault(name, (number, []))[1].append((order, comment, number))

    for name, (first, rows) in images.items():
        rows.sort(key=_comment_order)  # stable: equal numbers keep file order
        yield RawImage(
            image_id=Path(name).stem,
            image_path=images_dir / name,
            captions=tuple(comment for _, comment, _ in rows),
            where=f"{path}:{first}",
            caption_where=tuple(f"{path}:{row}" for _, _, row in rows),
        )


def _comment_order(row: tuple[int, str, int]) -> int:
    return row[0]


def read_karpathy_json(path: Path, images_dir: Path, report: PrepareReport) -> Iterator[RawImage]:
    """Karpathy's ``dataset_flickr30k.json``: images with their split and sentences."""
    data = load_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            f"{path}: not Karpathy's dataset_flickr30k.json: found {found}, needed an object "
            f"with an 'images' list. Use that file, or a .csv captions_file for Kaggle's "
            f"results.csv"
        )
    for i, entry in enumerate(data["images"]):
        where = f"{path}:images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
            report.bad("malformed_row", where, "the entry has no 'filename'")
            continue
        sentences = entry.get("sentences", [])
        if not isinstance(sentences, list):
            report.bad("malformed_row", where, "'sentences' is not a list")
            continue
        captions = []
        for sentence in sentences:
            raw = sentence.get("raw") if isinstance(sentence, dict) else None
            if raw is None and isinstance(sentence, dict) and sentence.get("tokens"):
                raw = " ".join(map(str, sentence["tokens"]))
            captions.append(raw if isinstance(raw, str) else "")
        split = entry.get("split")
        yield RawImage(
            image_id=Path(entry["filename"]).stem,
            image_path=images_dir / entry["filename"],
            captions=tuple(captions),
            where=where,
            split=SPLIT_ALIASES.get(split, split),
            caption_where=tuple(f"{where}.sentences[{j}]" for j in range(len(captions))),
        )
