"""A generic folder of images with a captions file: the format for your own data.

Layout::

    {root}/{images_dir}/...                 the images (any sub-folders)
    {root}/{captions_file}                  captions.csv or captions.jsonl

``captions_file`` is a CSV with a header row that has (at least) the columns
``image`` and ``caption``, or a JSONL file with one object per line,
``{"image": "cats/01.jpg", "caption": "A cat asleep on a sofa."}``. ``image``
is the image's path relative to ``images_dir`` (an absolute path stays
absolute); it is also the image's id. Several rows for one image are several
captions, in file order. Blank JSONL lines are ignored.

An optional ``split`` column (key) gives the dataset's own split of each
image (``train``, ``val`` or ``test``), the one ``splits.source: dataset`` and
``splits.eval_source: dataset`` take; an empty value is no split. The rows of
one image must agree on it: a row that gives another split than the image's
earlier rows is bad input (``conflicting_split``).

A file without an ``image`` or ``caption`` column is unusable as a whole
(:class:`DatasetError`); a row that is malformed (wrong number of CSV fields,
invalid JSON, an empty ``image``) is bad input: an error or a counted skip,
per ``on_bad_input``.

This module also holds the file helpers every adapter shares:
:func:`resolve`, :func:`load_json` and :func:`read_csv_rows`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from mmalign.datasets.base import DatasetError, PrepareReport, RawImage

NEEDED_COLUMNS = ("image", "caption")
SPLIT_COLUMN = "split"
CSV_SUFFIXES = (".csv",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")


def resolve(cfg: dict[str, Any], key: str, kind: Literal["file", "dir"] | None = None) -> Path:
    """The path in ``cfg[key]``, relative to ``cfg["root"]`` unless it is absolute.

    ``resolve(cfg, "root")`` is the root itself (relative to the working directory).

    With ``kind``, the path must exist as that kind, else :class:`DatasetError`
    naming the config key and the path tried.
    """
    value = cfg.get(key)
    if not value:
        raise DatasetError(
            f"dataset config: '{key}' is not set; give it (a path relative to 'root', "
            f"or an absolute path)"
        )
    path = Path(str(value)).expanduser()
    if not path.is_absolute() and key != "root":
        root = cfg.get("root")
        if not root:
            raise DatasetError(
                f"dataset config: '{key}' is the relative path {value!r} but 'root' is not "
                f"set; set 'root' to the dataset's folder, or make '{key}' absolute"
            )
        path = Path(str(root)).expanduser() / path
    if kind == "file" and not path.is_file():
        raise DatasetError(f"{path}: no such file (config key '{key}'); check 'root' and '{key}'")
    if kind == "dir" and not path.is_dir():
        raise DatasetError(f"{path}: no such folder (config key '{key}'); check 'root' and '{key}'")
    return path


def load_json(path: Path) -> Any:
    """Parse a whole JSON file; a file that is not JSON is a :class:`DatasetError`."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            return json.load(fh)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno}); "
            f"is this the right file?"
        ) from err
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err}); is this the right file?") from err


def read_csv_rows(
    path: Path, needed: Sequence[str], report: PrepareReport
) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Open a CSV with a header row: its columns, and its rows as ``(line, row)``.

    ``line`` is the 1-based line the row starts on (the header is line 1). A
    header without every column in ``needed`` is a :class:`DatasetError`. A row
    whose field count differs from the header's is bad input (``malformed_row``)
    and is not yielded.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err}); is this the right file?") from err
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [col.strip() for col in next(reader, [])]
    except csv.Error as err:
        raise DatasetError(f"{path}:1: cannot read the CSV header ({err})") from err
    missing = [col for col in needed if col not in header]
    if missing:
        raise DatasetError(
            f"{path}: the CSV header lacks the column(s) {missing}: found {header}, "
            f"needed {list(needed)}. Rename the columns, or point captions_file at the "
            f"right file"
        )

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        start = reader.line_num + 1
        try:
            for fields in reader:
                line, start = start, reader.line_num + 1
                if not fields or (len(fields) == 1 and not fields[0].strip()):
                    continue  # a blank line
                if len(fields) != len(header):
                    report.bad(
                        "malformed_row",
                        f"{path}:{line}",
                        f"{len(fields)} fields, the header has {len(header)} "
                        f"({header}); quote fields that contain commas",
                    )
                    continue
                yield line, dict(zip(header, fields, strict=True))
        except csv.Error as err:
            raise DatasetError(f"{path}:{reader.line_num}: unreadable CSV ({err})") from err

    return header, rows()


def _jsonl_rows(path: Path, report: PrepareReport) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line, object)`` for each JSON object line; invalid lines are bad input."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            lines = fh.readlines()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text ({err})") from err
    rows = []
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as err:
            report.bad("malformed_row", f"{path}:{number}", f"invalid JSON ({err.msg})")
            continue
        if not isinstance(obj, dict):
            report.bad(
                "malformed_row",
                f"{path}:{number}",
                f"a JSON {type(obj).__name__}, not an object like "
                '{"image": "a.jpg", "caption": "..."}',
            )
            continue
        rows.append((number, obj))
    found = sorted({key for _, obj in rows for key in obj})
    missing = [col for col in NEEDED_COLUMNS if col not in found]
    if rows and missing:
        raise DatasetError(
            f"{path}: no line has the key(s) {missing}: found {found}, needed "
            f"{list(NEEDED_COLUMNS)}. Rename the keys, or point captions_file at the right file"
        )
    return iter(rows)


def read(cfg: dict[str, Any], report: PrepareReport) -> list[RawImage]:
    """One :class:`RawImage` per distinct ``image``, its captions in file order."""
    captions_file = resolve(cfg, "captions_file", "file")
    images_dir = resolve(cfg, "images_dir", "dir")
    suffix = captions_file.suffix.lower()
    if suffix in CSV_SUFFIXES:
        _, rows = read_csv_rows(captions_file, NEEDED_COLUMNS, report)
    elif suffix in JSONL_SUFFIXES:
        rows = _jsonl_rows(captions_file, report)
    else:
        raise DatasetError(
            f"{captions_file}: unknown captions file type {suffix!r}; use a CSV "
            f"({', '.join(CSV_SUFFIXES)}) or JSONL ({', '.join(JSONL_SUFFIXES)}) file"
        )

    grouped: dict[str, tuple[Path, str, list[str], list[str]]] = {}
    split_of: dict[str, tuple[str | None, str]] = {}  # image id -> (split, where it was given)
    for line, row in rows:
        where = f"{captions_file}:{line}"
        image, caption = row.get("image"), row.get("caption")
        if not isinstance(image, str) or not image.strip():
            report.bad("malformed_row", where, f"'image' is empty or not a path: {image!r}")
            continue
        if not isinstance(caption, str):
            report.bad("malformed_row", where, f"'caption' is missing or not text: {caption!r}")
            continue
        raw_split = row.get(SPLIT_COLUMN)
        if raw_split is not None and not isinstance(raw_split, str):
            report.bad("malformed_row", where, f"'split' is not text: {raw_split!r}")
            continue
        split = (raw_split or "").strip() or None
        image_id = Path(image.strip()).as_posix()
        if image_id in split_of and split_of[image_id][0] != split:
            first_split, first_where = split_of[image_id]
            report.bad(
                "conflicting_split",
                where,
                f"image {image_id!r} has split {split!r} here but {first_split!r} at "
                f"{first_where}; give every row of an image the same split",
            )
            continue
        split_of.setdefault(image_id, (split, where))
        if image_id not in grouped:
            grouped[image_id] = (images_dir / image_id, where, [], [])
        grouped[image_id][2].append(caption)
        grouped[image_id][3].append(where)
    return [
        RawImage(
            image_id, path, tuple(caps), where, split_of[image_id][0], caption_where=tuple(wheres)
        )
        for image_id, (path, where, caps, wheres) in grouped.items()
    ]
