"""Shared fixtures: a tiny OpenClipArt tree in the exact Debian layout."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from PIL import Image

SVG = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<svg width="{w}" height="{h}" xmlns="http://www.w3.org/2000/svg"
     xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <metadata><rdf:RDF><cc:Work rdf:about="">
    <dc:title>{title}</dc:title>
    <dc:description>{description}</dc:description>
    <dc:subject><rdf:Bag>{keywords}</rdf:Bag></dc:subject>
    <dc:creator><cc:Agent><dc:title>Some Author</dc:title></cc:Agent></dc:creator>
  </cc:Work></rdf:RDF></metadata>
  <rect x="0" y="0" width="{w}" height="{h}" fill="{color}"/>
</svg>
"""

COLORS = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def add_drawing(
    root: Path,
    rel: str,
    title: str = "",
    description: str = "",
    keywords: tuple[str, ...] = (),
    size: tuple[int, int] = (32, 24),
    mode: str = "RGBA",
    color: int = 0,
) -> Path:
    """Write png/<rel>.png and svg/<rel>.svg as openclipart-png/-svg install them."""
    png = root / "png" / f"{rel}.png"
    svg = root / "svg" / f"{rel}.svg"
    png.parent.mkdir(parents=True, exist_ok=True)
    svg.parent.mkdir(parents=True, exist_ok=True)
    rgb = tuple(int(COLORS[color % len(COLORS)][i : i + 2], 16) for i in (1, 3, 5))
    Image.new("RGB", size, rgb).convert(mode).save(png)
    kws = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
    svg.write_text(
        SVG.format(
            w=size[0],
            h=size[1],
            title=title,
            description=description,
            keywords=kws,
            color=COLORS[color % len(COLORS)],
        )
    )
    return png


def make_openclipart(root: Path) -> Path:
    """A library with every caption rule exercised (see test_openclipart.py)."""
    add_drawing(root, "animals/cat_01", title="Sleeping Cat", color=0)
    add_drawing(root, "animals/dog_02", title="Happy_Dog", color=1, mode="P")
    add_drawing(root, "food/apple", title="Red &amp;quot;Apple&amp;quot;", color=2, mode="LA")
    # A collection title shared by three drawings: not a caption.
    for i, name in enumerate(["star_73pt03step", "star_49pt04step", "star_12pt01step"]):
        add_drawing(root, f"shapes/stars/{name}", title="gramastar", keywords=("stars",), color=i)
    add_drawing(root, "office/icons/fileimport", title="flat icons", description="", color=3)
    add_drawing(root, "office/icons/tab_first", title="flat icons", color=4)
    add_drawing(root, "office/icons/folder_txt", title="flat icons", color=5)
    add_drawing(root, "tools/hammer", title="", description="A claw hammer", color=6)
    add_drawing(root, "tools/wrench", title="", keywords=("wrench", "tool"), color=7)
    # The same caption twice: only the first (by path) is kept.
    add_drawing(root, "zz/another_cat", title="Sleeping Cat", color=1)
    # A drawing too large for max_pixels in the tests' config: read from its SVG.
    add_drawing(root, "maps/big_map_v.2_final", title="World Map", size=(120, 80), color=2)
    # A symlinked PNG: the same drawing under a second name.
    link = root / "png" / "animals" / "cat_copy.png"
    os.symlink(root / "png" / "animals" / "cat_01.png", link)
    (root / "svg" / "animals" / "cat_copy.svg").symlink_to(root / "svg" / "animals" / "cat_01.svg")
    return root


@pytest.fixture
def openclipart_root(tmp_path: Path) -> Path:
    return make_openclipart(tmp_path / "openclipart")
