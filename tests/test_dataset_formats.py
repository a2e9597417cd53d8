"""The dataset adapters on tiny fixtures in each raw format's exact layout.

Every format: the happy path through ``prepare_dataset`` (manifest rows checked
exactly, first vs all captions), then each kind of bad input both as an error
(naming the file and row) and as a counted skip.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from PIL import Image

from mmalign.config import ConfigError, validate_config
from mmalign.datasets import DatasetError, PrepareReport, folder, prepare_dataset
from mmalign.datasets.base import assign_splits
from mmalign.datasets.folder import resolve

GARBAGE = b"\x00\x01 this is not an image \xff\xfe"
FLICKR_HEADER = "image_name| comment_number| comment"


def dataset_cfg(**cfg: Any) -> dict[str, Any]:
    """The dataset's config as the workflow sees it: validated, defaults filled."""
    full = validate_config(
        {"datasets": {"d": cfg}, "encoders": {"e": {"kind": "hf_clip", "model": "x"}}}
    )
    return full["datasets"]["d"]


def prepare(cfg: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any], list[dict[str, str]]]:
    return prepare_dataset("d", cfg, seed=0)


def write_image(path: Path, color: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), (color * 40 % 256, 80, 160)).save(path)
    return path


def rows_of(manifest: pd.DataFrame) -> list[tuple[str, str, int]]:
    return list(manifest[["image_id", "caption", "caption_idx"]].itertuples(index=False, name=None))


# ---- fixture builders: (dataset config, where the defect is) --------------------------------
# Each writes a small dataset in the real format; `defect` breaks one record, and the returned
# location ("file:row") is what the error message and the skip record must name.

FLICKR_IMAGES = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg"]


def flickr_caption(name: str, k: int) -> str:
    return f"Image {name[:-4]} comment {k} ."


def build_flickr_csv(root: Path, defect: str | None = None) -> tuple[dict[str, Any], str]:
    """Kaggle's results.csv; the second image's rows are written in reverse comment order."""
    images = root / "flickr30k_images"
    for i, name in enumerate(FLICKR_IMAGES):
        write_image(images / name, i)
    lines = [FLICKR_HEADER]
    for name in FLICKR_IMAGES:
        order = range(4, -1, -1) if name == "10002456.jpg" else range(5)
        lines += [f"{name}| {k}| {flickr_caption(name, k)}" for k in order]
    where = ""
    if defect == "missing_image":
        (images / "10002456.jpg").unlink()
        where = "results.csv:7"  # the image's first row
    elif defect == "unreadable_image":
        (images / "10002456.jpg").write_bytes(GARBAGE)
        where = "results.csv:7"
    elif defect == "empty_caption":
        lines[8] = "10002456.jpg| 2|  "  # line 9
        where = "results.csv:9"
    elif defect == "duplicate_image_id":
        write_image(images / "10002456.png", 5)  # same id, "10002456"
        lines += [f"10002456.png| {k}| another picture {k} ." for k in range(5)]
        where = "results.csv:17"
    elif defect == "malformed_row":
        lines[11] = "1000268201.jpg| 4   A dog runs across the grass ."  # the real defect
        where = "results.csv:12"
    elif defect == "wrong_columns":
        lines[0] = "image| caption"
        where = "results.csv:1"
    elif defect == "empty_dataset":
        lines = [FLICKR_HEADER]
    (root / "results.csv").write_text("\n".join(lines) + "\n")
    return {"kind": "flickr30k", "root": str(root)}, where


KARPATHY = [
    ("1000092795.jpg", "train"),
    ("10002456.jpg", "val"),
    ("1000268201.jpg", "test"),
    ("1000344755.jpg", "restval"),
]


def build_karpathy(root: Path, defect: str | None = None) -> tuple[dict[str, Any], str]:
    """Karpathy's dataset_flickr30k.json and its flickr30k-images folder."""
    images = root / "flickr30k-images"
    entries = []
    for i, (name, split) in enumerate(KARPATHY):
        write_image(images / name, i)
        raws = [f"Photo {name[:-4]} sentence {j} ." for j in range(5)]
        entries.append(
            {
                "filename": name,
                "imgid": i,
                "split": split,
                "sentids": list(range(5 * i, 5 * i + 5)),
                "sentences": [
                    {
                        "raw": raw,
                        "tokens": raw.lower().split()[:-1],
                        "imgid": i,
                        "sentid": 5 * i + j,
                    }
                    for j, raw in enumerate(raws)
                ],
            }
        )
    where = ""
    if defect == "missing_image":
        (images / "10002456.jpg").unlink()
        where = "dataset_flickr30k.json:images[1]"
    elif defect == "unreadable_image":
        (images / "10002456.jpg").write_bytes(GARBAGE)
        where = "dataset_flickr30k.json:images[1]"
    elif defect == "empty_caption":
        entries[1]["sentences"][2]["raw"] = " "
        where = "dataset_flickr30k.json:images[1].sentences[2]"
    elif defect == "duplicate_image_id":
        entries.append({**entries[1], "imgid": 4})
        where = "dataset_flickr30k.json:images[4]"
    elif defect == "malformed_row":
        del entries[2]["filename"]
        where = "dataset_flickr30k.json:images[2]"
    elif defect == "empty_dataset":
        entries = []
    data: dict[str, Any] = {"images": entries, "dataset": "flickr30k"}
    if defect == "wrong_columns":
        data = {"annotations": entries}
        where = "dataset_flickr30k.json"
    (root / "dataset_flickr30k.json").write_text(json.dumps(data))
    cfg = {
        "kind": "flickr30k",
        "root": str(root),
        "captions_file": "dataset_flickr30k.json",
        "images_dir": "flickr30k-images",
    }
    return cfg, where


COCO_IDS = [9, 25, 30]


def coco_caption(image_id: int, ann_id: int) -> str:
    return f"Image {image_id} annotation {ann_id}."


def build_coco(root: Path, defect: str | None = None) -> tuple[dict[str, Any], str]:
    """captions_train2017.json with annotations out of id order, and train2017/."""
    images, annotations = [], []
    for i, image_id in enumerate(COCO_IDS):
        name = f"{image_id:012d}.jpg"
        write_image(root / "train2017" / name, i)
        images.append(
            {
                "license": 1,
                "file_name": name,
                "coco_url": f"http://x/{name}",
                "height": 3,
                "width": 4,
                "date_captured": "2013-11-14 17:02:52",
                "flickr_url": "",
                "id": image_id,
            }
        )
    ann_id = 1000
    for image_id in COCO_IDS:
        for _ in range(5):
            ann_id -= 7  # ids fall through the file: the lowest is each image's last
            annotations.append(
                {"image_id": image_id, "id": ann_id, "caption": coco_caption(image_id, ann_id)}
            )
    where = ""
    if defect == "missing_image":
        (root / "train2017" / "000000000025.jpg").unlink()
        where = "captions_train2017.json:images[1]"
    elif defect == "unreadable_image":
        (root / "train2017" / "000000000025.jpg").write_bytes(GARBAGE)
        where = "captions_train2017.json:images[1]"
    elif defect == "empty_caption":
        annotations[7]["caption"] = ""
        where = "captions_train2017.json:annotations[7]"
    elif defect == "duplicate_image_id":
        images.append({**images[1], "file_name": "000000000030.jpg"})
        where = "captions_train2017.json:images[3]"
    elif defect == "orphan_caption":
        annotations.insert(3, {"image_id": 999, "id": 5, "caption": "Nobody's image."})
        where = "captions_train2017.json:annotations[3]"
    elif defect == "no_caption":
        annotations = [a for a in annotations if a["image_id"] != 25]
        where = "captions_train2017.json:images[1]"
    elif defect == "empty_dataset":
        images, annotations = [], []
    data: dict[str, Any] = {
        "info": {"description": "COCO 2017 Dataset"},
        "licenses": [{"url": "", "id": 1, "name": "x"}],
        "images": images,
        "annotations": annotations,
    }
    if defect == "wrong_columns":
        del data["annotations"]
        where = "captions_train2017.json"
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "captions_train2017.json").write_text(json.dumps(data))
    return {"kind": "coco", "root": str(root)}, where


IMDB_MOVIES = [
    ("tt0111161", "The Shawshank Redemption"),
    ("tt0068646", "The Godfather"),
    ("tt0468569", "The Dark Knight"),
]


def build_imdb(root: Path, defect: str | None = None) -> tuple[dict[str, Any], str]:
    """The assumed layout: movies.csv (imdb_id, title, ...) and posters/<imdb_id>.jpg."""
    lines = ["imdb_id,title,year,genre"]
    for i, (imdb_id, title) in enumerate(IMDB_MOVIES):
        write_image(root / "posters" / f"{imdb_id}.jpg", i)
        lines.append(f'{imdb_id},"{title}",199{i},Drama')
    # The dataset's review table sits beside it and must not be taken for the poster list.
    (root / "reviews.csv").write_text("review_id,reviewer,movie,rating\nrw1,a,The Godfather,9\n")
    where = ""
    if defect == "missing_image":
        (root / "posters" / "tt0068646.jpg").unlink()
        where = "movies.csv:3"
    elif defect == "unreadable_image":
        (root / "posters" / "tt0068646.jpg").write_bytes(GARBAGE)
        where = "movies.csv:3"
    elif defect == "empty_caption":
        lines[2] = 'tt0068646,"",1972,Crime'
        where = "movies.csv:3"
    elif defect == "duplicate_image_id":
        lines.append("tt0068646,The Godfather Part II,1974,Crime")
        where = "movies.csv:5"
    elif defect == "malformed_row":
        lines[3] = "tt0468569,The Dark Knight, Rises,2012,Action"  # an unquoted comma
        where = "movies.csv:4"
    elif defect == "wrong_columns":
        lines[0] = "imdb_id,year_released,genre,rank"
        where = "movies.csv"
    elif defect == "empty_dataset":
        lines = lines[:1]
    (root / "movies.csv").write_text("\n".join(lines) + "\n")
    return {"kind": "imdb", "root": str(root)}, where


FOLDER_ROWS = [
    ("cats/tabby.jpg", "A tabby cat asleep on a sofa."),
    ("dog.png", "A dog with a red ball."),
    ("cats/tabby.jpg", "A striped cat, curled up."),  # a second caption: contains a comma
    ("bird.jpg", "A small bird on a branch."),
]


def build_folder(
    root: Path, defect: str | None = None, fmt: str = "csv"
) -> tuple[dict[str, Any], str]:
    """images/ and a captions.csv or captions.jsonl with the columns image, caption."""
    for i, rel in enumerate(sorted({rel for rel, _ in FOLDER_ROWS})):
        write_image(root / "images" / rel, i)
    rows: list[dict[str, Any]] = [{"image": r, "caption": c} for r, c in FOLDER_ROWS]
    header = 1 if fmt == "csv" else 0  # CSV rows start on line 2, JSONL rows on line 1
    bad_line: str | None = None
    where = ""
    if defect == "missing_image":
        (root / "images" / "dog.png").unlink()
        where = f"captions.{fmt}:{2 + header}"
    elif defect == "unreadable_image":
        (root / "images" / "dog.png").write_bytes(GARBAGE)
        where = f"captions.{fmt}:{2 + header}"
    elif defect == "empty_caption":
        rows[3]["caption"] = "   "
        where = f"captions.{fmt}:{4 + header}"
    elif defect == "malformed_row":
        if fmt == "jsonl":
            bad_line = '{"image": "bird.jpg", "caption": "unclosed'
        else:
            bad_line = "bird.jpg,A bird,on a branch"
        where = f"captions.{fmt}:{4 + header}"
    elif defect == "wrong_columns":
        rows = [{"file": r["image"], "text": r["caption"]} for r in rows]
        where = f"captions.{fmt}"
    elif defect == "empty_dataset":
        rows = []
    if fmt == "csv":
        frame = pd.DataFrame(rows, columns=list(rows[0]) if rows else ["image", "caption"])
        lines = frame.to_csv(index=False).splitlines()
    else:
        lines = [json.dumps(row) for row in rows]
    if bad_line is not None:
        lines[3 + header] = bad_line
    (root / f"captions.{fmt}").write_text("\n".join(lines) + "\n")
    cfg = {
        "kind": "folder",
        "root": str(root),
        "captions_file": f"captions.{fmt}",
        "images_dir": "images",
    }
    return cfg, where


def build_folder_jsonl(root: Path, defect: str | None = None) -> tuple[dict[str, Any], str]:
    return build_folder(root, defect, fmt="jsonl")


Builder = Callable[..., tuple[dict[str, Any], str]]
BUILDERS: dict[str, Builder] = {
    "flickr_csv": build_flickr_csv,
    "karpathy": build_karpathy,
    "coco": build_coco,
    "imdb": build_imdb,
    "folder_csv": build_folder,
    "folder_jsonl": build_folder_jsonl,
}

# (format, defect, images kept when skipping, pairs kept with captions: all)
BAD_ROWS = [
    ("flickr_csv", "missing_image", 2, 10),
    ("flickr_csv", "unreadable_image", 2, 10),
    ("flickr_csv", "empty_caption", 3, 14),
    ("flickr_csv", "duplicate_image_id", 3, 15),
    ("flickr_csv", "malformed_row", 3, 14),
    ("karpathy", "missing_image", 3, 15),
    ("karpathy", "unreadable_image", 3, 15),
    ("karpathy", "empty_caption", 4, 19),
    ("karpathy", "duplicate_image_id", 4, 20),
    ("karpathy", "malformed_row", 3, 15),
    ("coco", "missing_image", 2, 10),
    ("coco", "unreadable_image", 2, 10),
    ("coco", "empty_caption", 3, 14),
    ("coco", "duplicate_image_id", 3, 15),
    ("coco", "orphan_caption", 3, 15),
    ("coco", "no_caption", 2, 10),
    ("imdb", "missing_image", 2, 2),
    ("imdb", "unreadable_image", 2, 2),
    ("imdb", "empty_caption", 2, 2),
    ("imdb", "duplicate_image_id", 3, 3),
    ("imdb", "malformed_row", 2, 2),
    ("folder_csv", "missing_image", 2, 3),
    ("folder_csv", "unreadable_image", 2, 3),
    ("folder_csv", "empty_caption", 2, 3),
    ("folder_csv", "malformed_row", 2, 3),
    ("folder_jsonl", "missing_image", 2, 3),
    ("folder_jsonl", "unreadable_image", 2, 3),
    ("folder_jsonl", "empty_caption", 2, 3),
    ("folder_jsonl", "malformed_row", 2, 3),
]


def case_id(case: tuple[Any, ...]) -> str:
    return f"{case[0]}-{case[1]}"


# ---- happy paths -----------------------------------------------------------------------------


def test_flickr_results_csv(tmp_path: Path) -> None:
    cfg, _ = build_flickr_csv(tmp_path)
    manifest, summary, skipped = prepare(dataset_cfg(**cfg))
    ids = sorted(name[:-4] for name in FLICKR_IMAGES)
    assert rows_of(manifest) == [(i, flickr_caption(f"{i}.jpg", 0), 0) for i in ids]
    assert list(manifest["image_path"]) == [
        str(tmp_path / "flickr30k_images" / f"{i}.jpg") for i in ids
    ]
    assert skipped == []
    assert summary["raw_images"] == 3 and summary["raw_captions"] == 15

    manifest, _, _ = prepare(dataset_cfg(**cfg, captions="all"))
    # Ordered by comment_number, though one image's rows are in reverse order in the file.
    assert rows_of(manifest) == [
        (i, flickr_caption(f"{i}.jpg", k), k) for i in ids for k in range(5)
    ]


def test_karpathy_json_keeps_the_files_splits(tmp_path: Path) -> None:
    cfg, _ = build_karpathy(tmp_path)
    manifest, summary, _ = prepare(dataset_cfg(**cfg, splits={"source": "dataset"}))
    ids = sorted(name[:-4] for name, _ in KARPATHY)
    assert rows_of(manifest) == [(i, f"Photo {i} sentence 0 .", 0) for i in ids]
    splits = dict(zip(manifest["image_id"], manifest["split"], strict=True))
    assert splits == {
        "1000092795": "train",
        "10002456": "val",
        "1000268201": "test",
        "1000344755": "train",  # restval counts as train
    }
    assert summary["splits"] == {"train": 2, "val": 1, "test": 1}

    manifest, _, _ = prepare(dataset_cfg(**cfg, captions="all", splits={"source": "dataset"}))
    assert rows_of(manifest) == [(i, f"Photo {i} sentence {j} .", j) for i in ids for j in range(5)]
    # The 1K test split with all its captions (the paper's Table 5 protocol), in miniature.
    test = manifest[manifest["split"] == "test"]
    assert list(test["image_id"].unique()) == ["1000268201"] and len(test) == 5


def test_karpathy_test_split_is_the_eval_split_and_split_stays_random(tmp_path: Path) -> None:
    """configs/paper.yaml's Flickr30K: eval_split is Karpathy's, split the seeded random one."""
    cfg, _ = build_karpathy(tmp_path)
    splits = {"source": "random", "eval_source": "dataset", "train": 1, "val": 1, "test": 2}
    manifest, summary, _ = prepare(dataset_cfg(**cfg, captions="all", splits=splits))
    per_image = manifest.drop_duplicates("image_id").set_index("image_id")
    assert per_image["eval_split"].to_dict() == {
        "1000092795": "train", "10002456": "val", "1000268201": "test", "1000344755": "train",
    }  # fmt: skip
    ids = sorted(name[:-4] for name, _ in KARPATHY)
    assert per_image["split"].to_dict() == assign_splits(ids, (1, 1, 2), seed=0)
    assert summary["eval_splits"] == {"train": 2, "val": 1, "test": 1}
    assert summary["splits"] == {"train": 1, "val": 1, "test": 2}
    evaluated = manifest[manifest["eval_split"] == "test"]
    assert evaluated["caption_idx"].tolist() == [0, 1, 2, 3, 4]


def test_flickr_csv_has_no_dataset_split(tmp_path: Path) -> None:
    cfg, _ = build_flickr_csv(tmp_path)
    for key in ("source", "eval_source"):
        with pytest.raises(ConfigError, match=rf"splits\.{key}: 'dataset'.*Kaggle's results"):
            dataset_cfg(**cfg, splits={key: "dataset"})
        # Past the config check (a config that skipped it), the adapter still refuses.
        unchecked = dataset_cfg(**cfg)
        unchecked["splits"][key] = "dataset"
        with pytest.raises(DatasetError, match=rf"results\.csv:\d+: splits\.{key} is 'dataset'"):
            prepare(unchecked)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_folder_split_column_is_the_files_split(tmp_path: Path, fmt: str) -> None:
    write_image(tmp_path / "a.jpg", 0)
    write_image(tmp_path / "b.jpg", 1)
    write_image(tmp_path / "c.jpg", 2)
    rows = [
        {"image": "a.jpg", "caption": "A one.", "split": "test"},
        {"image": "a.jpg", "caption": "A two.", "split": "test"},
        {"image": "b.jpg", "caption": "B one.", "split": "train"},
        {"image": "c.jpg", "caption": "C one.", "split": ""},
    ]
    name = f"captions.{fmt}"
    if fmt == "csv":
        (tmp_path / name).write_text(pd.DataFrame(rows).to_csv(index=False))
    else:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = {"kind": "folder", "root": str(tmp_path), "captions_file": name, "captions": "all"}
    records = folder.read(dataset_cfg(**cfg), PrepareReport("d"))
    assert [(r.image_id, r.split) for r in records] == [
        ("a.jpg", "test"), ("b.jpg", "train"), ("c.jpg", None),
    ]  # fmt: skip
    # c.jpg has no split: eval_source: dataset refuses, naming the row and the key.
    with pytest.raises(DatasetError, match=rf"{name}:\d: splits\.eval_source is 'dataset'"):
        prepare(dataset_cfg(**cfg, splits={"eval_source": "dataset"}))
    rows[3]["split"] = "val"
    if fmt == "csv":
        (tmp_path / name).write_text(pd.DataFrame(rows).to_csv(index=False))
    else:
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest, _, _ = prepare(dataset_cfg(**cfg, splits={"eval_source": "dataset"}))
    assert manifest["eval_split"].tolist() == ["test", "test", "train", "val"]


def test_folder_conflicting_split_is_bad_input(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg", 0)
    (tmp_path / "captions.csv").write_text(
        "image,caption,split\na.jpg,A one.,test\na.jpg,A two.,train\n"
    )
    cfg = dataset_cfg(kind="folder", root=str(tmp_path), captions="all")
    with pytest.raises(DatasetError, match=r"captions\.csv:3: conflicting split: .*'train' here "
                       r"but 'test' at .*captions\.csv:2"):  # fmt: skip
        prepare(cfg)
    manifest, summary, _ = prepare({**cfg, "on_bad_input": "skip"})
    assert summary["skipped"] == {"conflicting_split": 1}
    assert manifest["caption"].tolist() == ["A one."]


def test_coco_captions_ordered_by_annotation_id(tmp_path: Path) -> None:
    cfg, _ = build_coco(tmp_path)
    data = json.loads((tmp_path / "annotations" / "captions_train2017.json").read_text())
    ann_ids = {
        i: sorted(a["id"] for a in data["annotations"] if a["image_id"] == i) for i in COCO_IDS
    }
    manifest, _, skipped = prepare(dataset_cfg(**cfg))
    # String ids sort as strings: "25" < "30" < "9".
    assert rows_of(manifest) == [(str(i), coco_caption(i, ann_ids[i][0]), 0) for i in (25, 30, 9)]
    assert manifest.loc[0, "image_path"] == str(tmp_path / "train2017" / "000000000025.jpg")
    assert skipped == []

    manifest, _, _ = prepare(dataset_cfg(**cfg, captions="all"))
    assert rows_of(manifest) == [
        (str(i), coco_caption(i, a), k) for i in (25, 30, 9) for k, a in enumerate(ann_ids[i])
    ]


def test_imdb_assumed_layout_found_from_root_alone(tmp_path: Path) -> None:
    cfg, _ = build_imdb(tmp_path)
    manifest, summary, _ = prepare(dataset_cfg(**cfg))  # as configs/paper.yaml gives it
    assert rows_of(manifest) == sorted((i, t, 0) for i, t in IMDB_MOVIES)
    assert list(manifest["image_path"]) == [
        str(tmp_path / "posters" / f"{i}.jpg") for i, _ in sorted(IMDB_MOVIES)
    ]
    assert summary["layout"] == {
        "captions_file": str(tmp_path / "movies.csv"),
        "images_dir": str(tmp_path / "posters"),
        "id_column": "imdb_id",
        "title_column": "title",
        "poster_column": None,
    }
    manifest, _, _ = prepare(dataset_cfg(**cfg, captions="all"))
    assert rows_of(manifest) == sorted((i, t, 0) for i, t in IMDB_MOVIES)


def test_imdb_poster_column_and_explicit_paths(tmp_path: Path) -> None:
    lines = ["movie_id,poster,name"]
    for i, (imdb_id, title) in enumerate(IMDB_MOVIES):
        write_image(tmp_path / "img" / f"p{i}.png", i)
        lines.append(f"{imdb_id},p{i}.png,{title}")
    (tmp_path / "list.csv").write_text("\n".join(lines) + "\n")
    cfg = dataset_cfg(kind="imdb", root=str(tmp_path), captions_file="list.csv", images_dir="img")
    manifest, _, _ = prepare(cfg)
    poster = {i: f"p{k}.png" for k, (i, _) in enumerate(IMDB_MOVIES)}
    assert rows_of(manifest) == sorted((i, t, 0) for i, t in IMDB_MOVIES)
    assert list(manifest["image_path"]) == [
        str(tmp_path / "img" / poster[i]) for i in manifest["image_id"]
    ]


def test_imdb_ambiguous_csv_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("imdb_id,title\n")
    (tmp_path / "b.csv").write_text("imdb_id,title\n")
    with pytest.raises(DatasetError, match=r"found \['a.csv', 'b.csv'\].*set captions_file"):
        prepare(dataset_cfg(kind="imdb", root=str(tmp_path)))


@pytest.mark.parametrize("builder", [build_folder, build_folder_jsonl], ids=["csv", "jsonl"])
def test_folder_several_rows_are_several_captions(tmp_path: Path, builder: Builder) -> None:
    cfg, _ = builder(tmp_path)
    manifest, summary, _ = prepare(dataset_cfg(**cfg))
    assert rows_of(manifest) == [
        ("bird.jpg", "A small bird on a branch.", 0),
        ("cats/tabby.jpg", "A tabby cat asleep on a sofa.", 0),
        ("dog.png", "A dog with a red ball.", 0),
    ]
    assert manifest.loc[1, "image_path"] == str(tmp_path / "images" / "cats" / "tabby.jpg")
    assert summary["raw_images"] == 3 and summary["raw_captions"] == 4

    manifest, _, _ = prepare(dataset_cfg(**cfg, captions="all"))
    assert rows_of(manifest) == [
        ("bird.jpg", "A small bird on a branch.", 0),
        ("cats/tabby.jpg", "A tabby cat asleep on a sofa.", 0),
        ("cats/tabby.jpg", "A striped cat, curled up.", 1),  # file order
        ("dog.png", "A dog with a red ball.", 0),
    ]


def test_folder_images_dir_defaults_to_root(tmp_path: Path) -> None:
    write_image(tmp_path / "a.jpg")
    (tmp_path / "captions.csv").write_text("caption,image,extra\nA red square.,./a.jpg,x\n")
    manifest, _, _ = prepare(dataset_cfg(kind="folder", root=str(tmp_path)))
    assert rows_of(manifest) == [("a.jpg", "A red square.", 0)]
    assert manifest.loc[0, "image_path"] == str(tmp_path / "a.jpg")


# ---- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", BAD_ROWS, ids=case_id)
def test_bad_input_is_an_error_naming_file_and_row(tmp_path: Path, case: tuple) -> None:
    fmt, defect, _, _ = case
    cfg, where = BUILDERS[fmt](tmp_path, defect)
    with pytest.raises(DatasetError) as err:
        prepare(dataset_cfg(**cfg))
    message = str(err.value)
    assert where in message
    assert defect.replace("_", " ") in message
    assert "on_bad_input: skip" in message


@pytest.mark.parametrize("case", BAD_ROWS, ids=case_id)
def test_bad_input_is_skipped_and_counted(tmp_path: Path, case: tuple) -> None:
    fmt, defect, images, pairs = case
    cfg, where = BUILDERS[fmt](tmp_path, defect)
    manifest, summary, skipped = prepare(dataset_cfg(**cfg, on_bad_input="skip"))
    assert summary["skipped"] == {defect: 1}
    assert [row["reason"] for row in skipped] == [defect]
    assert skipped[0]["where"].endswith(where)
    assert summary["images"] == images
    manifest, _, _ = prepare(dataset_cfg(**cfg, on_bad_input="skip", captions="all"))
    assert len(manifest) == pairs


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
@pytest.mark.parametrize("on_bad_input", ["error", "skip"])
def test_wrong_columns_are_a_file_error(tmp_path: Path, fmt: str, on_bad_input: str) -> None:
    cfg, where = BUILDERS[fmt](tmp_path, "wrong_columns")
    with pytest.raises(DatasetError) as err:
        prepare(dataset_cfg(**cfg, on_bad_input=on_bad_input))
    message = str(err.value)
    assert where in message
    assert "found" in message and "needed" in message


def test_folder_wrong_columns_name_found_and_needed(tmp_path: Path) -> None:
    cfg, _ = build_folder(tmp_path, "wrong_columns")
    with pytest.raises(DatasetError) as err:
        prepare(dataset_cfg(**cfg))
    assert str(err.value).startswith(str(tmp_path / "captions.csv"))
    assert "found ['file', 'text'], needed ['image', 'caption']" in str(err.value)


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
@pytest.mark.parametrize("on_bad_input", ["error", "skip"])
def test_empty_dataset_is_an_error(tmp_path: Path, fmt: str, on_bad_input: str) -> None:
    cfg, _ = BUILDERS[fmt](tmp_path, "empty_dataset")
    with pytest.raises(DatasetError, match="dataset 'd' is empty: 0 images read"):
        prepare(dataset_cfg(**cfg, on_bad_input=on_bad_input))


def test_csv_rows_are_located_by_their_first_line(tmp_path: Path) -> None:
    write_image(tmp_path / "b.jpg")
    # a.jpg is missing; its caption spans lines 2-3, so b.jpg's row is line 4.
    (tmp_path / "captions.csv").write_text('image,caption\na.jpg,"two\nlines"\nb.jpg,\n')
    cfg = dataset_cfg(kind="folder", root=str(tmp_path), on_bad_input="skip")
    with pytest.raises(DatasetError, match="is empty"):
        prepare(cfg)
    report = PrepareReport("d", on_bad_input="skip")
    records = list(folder.read(cfg, report))
    assert [r.where.rsplit("/", 1)[1] for r in records] == ["captions.csv:2", "captions.csv:4"]
    assert records[0].captions == ("two\nlines",)


def test_flickr_malformed_row_message(tmp_path: Path) -> None:
    cfg, _ = build_flickr_csv(tmp_path, "malformed_row")
    with pytest.raises(DatasetError, match=r"results\.csv:12: malformed row: 2 '\|'-separated"):
        prepare(dataset_cfg(**cfg))


# ---- paths -----------------------------------------------------------------------------------


def test_paths_are_relative_to_root_unless_absolute(tmp_path: Path) -> None:
    cfg = {"root": str(tmp_path), "captions_file": "c.csv", "images_dir": str(tmp_path / "x")}
    assert resolve(cfg, "captions_file") == tmp_path / "c.csv"
    assert resolve(cfg, "images_dir") == tmp_path / "x"
    assert resolve(cfg, "root") == tmp_path
    with pytest.raises(DatasetError, match="'root' is not set"):
        resolve({"captions_file": "c.csv"}, "captions_file")


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_missing_captions_file_names_the_path(tmp_path: Path, fmt: str) -> None:
    cfg, _ = BUILDERS[fmt](tmp_path / "data")
    cfg["root"] = str(tmp_path / "elsewhere")
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(DatasetError, match=r"elsewhere.*no such (file|folder)|cannot tell"):
        prepare(dataset_cfg(**cfg))


def test_unknown_flickr_extension(tmp_path: Path) -> None:
    cfg, _ = build_flickr_csv(tmp_path)
    (tmp_path / "results.txt").write_text(FLICKR_HEADER + "\n")
    with pytest.raises(DatasetError, match=r"results\.txt: unknown Flickr30K captions format"):
        prepare(dataset_cfg(**cfg | {"captions_file": "results.txt"}))
