from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from mmalign.config import validate_config
from mmalign.datasets import DatasetError, prepare_dataset
from mmalign.datasets.openclipart import filename_caption, svg_metadata


def dataset_cfg(root: Path, **extra) -> dict:
    cfg = {"kind": "openclipart", "root": str(root), "max_pixels": 5000, **extra}
    full = validate_config(
        {"datasets": {"oc": cfg}, "encoders": {"e": {"kind": "hf_clip", "model": "m"}}}
    )
    return full["datasets"]["oc"]


def test_svg_metadata_reads_the_work_not_the_agents(openclipart_root: Path) -> None:
    meta = svg_metadata(openclipart_root / "svg" / "animals" / "cat_01.svg")
    assert meta == {"title": "Sleeping Cat", "description": "", "keywords": ""}


def test_filename_caption() -> None:
    assert filename_caption("chemistry_flask_02") == "chemistry flask"
    assert filename_caption("MatieresToxiques") == "matieres toxiques"
    assert filename_caption("star_73pt03step") == "star"


def test_caption_rules(openclipart_root: Path) -> None:
    manifest, summary, skipped = prepare_dataset("oc", dataset_cfg(openclipart_root), seed=0)
    captions = dict(zip(manifest["image_id"], manifest["caption"], strict=True))
    assert captions == {
        "animals/cat_01": "Sleeping Cat",
        "animals/dog_02": "Happy Dog",  # underscore read as a space
        "food/apple": 'Red "Apple"',  # double-escaped entity decoded
        "office/icons/fileimport": "fileimport",  # shared title -> file name
        "office/icons/tab_first": "tab first",
        "office/icons/folder_txt": "folder txt",
        "tools/hammer": "A claw hammer",  # no title -> description
        "tools/wrench": "wrench, tool",  # no title, no description -> keywords
        "maps/big_map_v.2_final": "World Map",
    }
    # "gramastar" x3, keyword "stars" x3, file name "star" x3: no distinct caption.
    assert summary["skipped"] == {
        "duplicate_caption": 1,
        "no_distinct_caption": 3,
        "symlink_duplicate": 1,
    }
    assert summary["caption_sources"] == {
        "title": 4,
        "filename": 3,
        "description": 1,
        "keywords": 1,
    }
    assert manifest["caption"].is_unique
    assert {row["reason"] for row in skipped} == set(summary["skipped"])
    assert all(manifest["caption_idx"] == 0)


def test_huge_png_is_read_from_its_svg(openclipart_root: Path) -> None:
    manifest, summary, _ = prepare_dataset("oc", dataset_cfg(openclipart_root), seed=0)
    path = manifest.set_index("image_id").loc["maps/big_map_v.2_final", "image_path"]
    assert path.endswith("svg/maps/big_map_v.2_final.svg")  # a dot in the name
    assert summary["read_from_svg_over_max_pixels"] == 1
    others = manifest[manifest["image_id"] != "maps/big_map_v.2_final"]["image_path"]
    assert others.str.endswith(".png").all()


def test_max_share_is_configurable(openclipart_root: Path) -> None:
    manifest, _, _ = prepare_dataset("oc", dataset_cfg(openclipart_root, max_share=3), seed=0)
    # "flat icons" (x3) is now allowed for the first of those drawings; the
    # other two repeat it and are left out as duplicates.
    assert "flat icons" in set(manifest["caption"])


def test_corrupt_png_is_counted_or_named(openclipart_root: Path) -> None:
    bad = openclipart_root / "png" / "animals" / "cat_01.png"
    bad.unlink()
    bad.write_bytes(b"not a png at all")
    _, summary, _ = prepare_dataset("oc", dataset_cfg(openclipart_root, on_bad_input="skip"), 0)
    assert summary["skipped"]["unreadable_image"] == 1
    with pytest.raises(DatasetError, match=r"cat_01\.png.*unreadable image"):
        prepare_dataset("oc", dataset_cfg(openclipart_root), seed=0)


def test_missing_library_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="apt-get install openclipart-png"):
        prepare_dataset("oc", dataset_cfg(tmp_path / "nowhere"), seed=0)


def test_real_library_if_installed() -> None:
    """The Debian package itself: at least 3,000 distinct captions."""
    root = Path("/usr/share/openclipart")
    if not (root / "png").is_dir():
        pytest.skip("openclipart-png is not installed (apt-get install openclipart-png)")
    manifest, summary, _ = prepare_dataset(
        "oc", dataset_cfg(root, max_pixels=16_000_000, check_images=False), seed=0
    )
    assert summary["pairs"] >= 3000
    assert manifest["caption"].str.casefold().is_unique
    assert isinstance(manifest, pd.DataFrame)
