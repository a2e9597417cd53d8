"""The shared manifest rules: protocol options, splits, and the bad-input policy."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from mmalign.datasets.base import (
    MANIFEST_COLUMNS,
    DatasetError,
    ManifestOptions,
    PrepareReport,
    RawImage,
    assign_splits,
    build_manifest,
)


def records(tmp_path: Path, n: int = 20, captions: int = 3) -> list[RawImage]:
    out = []
    for i in range(n):
        path = tmp_path / f"img{i:02d}.png"
        Image.new("RGB", (4, 4), (i, 0, 0)).save(path)
        caps = tuple(f"image {i} caption {c}" for c in range(captions))
        out.append(RawImage(f"img{i:02d}", path, caps, where=f"list.csv:{i + 2}"))
    return out


def build(recs, on_bad_input="error", **opts):
    report = PrepareReport("toy", on_bad_input=on_bad_input)
    return build_manifest(recs, ManifestOptions(**opts), report), report


def test_columns_and_first_caption(tmp_path: Path) -> None:
    manifest, _ = build(records(tmp_path))
    assert list(manifest.columns) == MANIFEST_COLUMNS
    assert len(manifest) == 20
    assert (manifest["caption_idx"] == 0).all()
    assert manifest.loc[0, "caption"] == "image 0 caption 0"


def test_all_captions_share_their_image_split(tmp_path: Path) -> None:
    manifest, _ = build(records(tmp_path), captions="all")
    assert len(manifest) == 60
    assert all(idx == [0, 1, 2] for idx in manifest.groupby("image_id")["caption_idx"].apply(list))
    assert manifest.groupby("image_id")["split"].nunique().eq(1).all()


def test_splits_are_seeded_and_order_free() -> None:
    ids = [f"id{i}" for i in range(1000)]
    a = assign_splits(ids, (0.8, 0.1, 0.1), seed=3)
    b = assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), seed=3)
    c = assign_splits(ids, (0.8, 0.1, 0.1), seed=4)
    assert a == b
    assert a != c
    counts = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 800, "val": 100, "test": 100}


def test_max_images_is_a_seeded_subset(tmp_path: Path) -> None:
    recs = records(tmp_path)
    a, _ = build(recs, max_images=7, seed=1)
    b, _ = build(list(reversed(recs)), max_images=7, seed=1)
    c, _ = build(recs, max_images=7, seed=2)
    assert a.equals(b)
    assert len(a) == 7
    assert set(a["image_id"]) != set(c["image_id"])


def file_split(i: int) -> str:
    """The split a fixture file gives image ``i``: 0-4 test, 5-7 val, the rest train."""
    return "test" if i < 5 else "val" if i < 8 else "train"


def with_file_splits(tmp_path: Path) -> list[RawImage]:
    return [
        RawImage(r.image_id, r.image_path, r.captions, r.where, file_split(i))
        for i, r in enumerate(records(tmp_path))
    ]


def test_dataset_splits_are_kept(tmp_path: Path) -> None:
    manifest, _ = build(with_file_splits(tmp_path), split_source="dataset")
    assert (manifest.set_index("image_id").loc[["img00", "img04"], "split"] == "test").all()
    assert manifest["eval_split"].equals(manifest["split"])  # eval_source: split copies it
    with pytest.raises(DatasetError, match=r"splits\.source is 'dataset'.*splits\.source: random"):
        build(records(tmp_path), split_source="dataset")
    with pytest.raises(DatasetError, match=r"splits\.eval_source is 'dataset'.*eval_source: split"):
        build(records(tmp_path), eval_source="dataset")


def test_eval_split_is_the_files_and_split_stays_random(tmp_path: Path) -> None:
    """Karpathy's layout: the file's split fills eval_split, and split is the
    seeded random one, exactly as assign_splits draws it (not the file's)."""
    manifest, report = build(with_file_splits(tmp_path), captions="all", eval_source="dataset")
    per_image = manifest.drop_duplicates("image_id").set_index("image_id")
    assert per_image["eval_split"].to_dict() == {f"img{i:02d}": file_split(i) for i in range(20)}
    expected = assign_splits([f"img{i:02d}" for i in range(20)], (0.8, 0.1, 0.1), seed=0)
    assert per_image["split"].to_dict() == expected
    assert (per_image["split"] != per_image["eval_split"]).any()
    # Constant over each image's captions.
    assert manifest.groupby("image_id")[["split", "eval_split"]].nunique().eq(1).all().all()
    summary = report.to_dict(manifest)
    assert summary["eval_splits"] == {"train": 12, "val": 3, "test": 5}
    assert summary["splits"] == {"train": 16, "val": 2, "test": 2}


def test_a_changed_seed_changes_split_but_not_the_files_eval_split(tmp_path: Path) -> None:
    recs = with_file_splits(tmp_path)
    a, _ = build(recs, eval_source="dataset", seed=0)
    b, _ = build(recs, eval_source="dataset", seed=1)
    assert (a["split"] != b["split"]).any()
    assert a["eval_split"].equals(b["eval_split"])


@pytest.mark.parametrize(
    ("damage", "reason", "message"),
    [
        ("missing", "missing_image", r"list\.csv:5: missing image: no file at .*img03\.png"),
        ("corrupt", "unreadable_image", r"list\.csv:5: unreadable image: .*img03\.png"),
        ("empty", "empty_caption", r"list\.csv:5: empty caption"),
        ("duplicate", "duplicate_image_id", r"list\.csv:5: duplicate image id: .*list\.csv:2"),
    ],
)
def test_bad_input_errors_or_counts(tmp_path: Path, damage: str, reason: str, message: str) -> None:
    recs = records(tmp_path, n=6, captions=1)
    r = recs[3]
    if damage == "missing":
        r.image_path.unlink()
    elif damage == "corrupt":
        r.image_path.write_bytes(b"\x89PNG garbage")
    elif damage == "empty":
        recs[3] = RawImage(r.image_id, r.image_path, ("   ",), r.where)
    else:
        recs[3] = RawImage("img00", r.image_path, r.captions, r.where)
    with pytest.raises(DatasetError, match=message):
        build(recs)
    manifest, report = build(recs, on_bad_input="skip")
    assert report.skipped_by_reason() == {reason: 1}
    assert len(manifest) == 5


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="dataset 'toy' is empty"):
        build([])
    recs = records(tmp_path, n=2, captions=1)
    for r in recs:
        r.image_path.unlink()
    with pytest.raises(DatasetError, match=r"empty: 2 images read.*missing_image': 2"):
        build(recs, on_bad_input="skip")


def test_atomic_outputs_have_the_usual_mode(tmp_path: Path) -> None:
    import os
    import stat

    from mmalign.io import write_json

    write_json({"a": 1}, tmp_path / "out.json")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "out.json").stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left
