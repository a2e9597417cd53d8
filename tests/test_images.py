from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmalign.images import ImageReadError, flatten_on_white, load_image, probe_image

from .conftest import add_drawing


def png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims a huge size; decoding it would need gigabytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_probe_reads_huge_headers_without_decoding(tmp_path: Path) -> None:
    path = tmp_path / "huge.png"
    png_header_only(path, 20990, 29700)
    assert probe_image(path) == (20990, 29700)
    with pytest.raises(ImageReadError, match=r"huge\.png: 20990x29700 pixels exceeds max_pixels"):
        load_image(path, 224)


def test_probe_names_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"garbage")
    with pytest.raises(ImageReadError, match=r"broken\.jpg"):
        probe_image(path)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_becomes_white(mode: str) -> None:
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    im.putpixel((0, 0), (0, 0, 255, 255))
    if mode == "LA":
        im = im.convert("LA")
    elif mode == "P":
        im = im.convert("P")
        im.info["transparency"] = im.getpixel((1, 1))
    out = np.asarray(flatten_on_white(im))
    assert out.shape == (4, 4, 3)
    assert (out[1:, 1:] == 255).all()
    assert (out[0, 0] != 255).any()


def test_svg_is_rendered_at_the_requested_size(tmp_path: Path) -> None:
    add_drawing(tmp_path, "a/b", title="x", size=(300, 150), color=0)
    svg = tmp_path / "svg" / "a" / "b.svg"
    assert probe_image(svg) == (300, 150)
    im = load_image(svg, 224)
    assert im.mode == "RGB"
    assert im.size == (224, 112)
    r, g, b = im.getpixel((100, 50))
    assert r > 200 and g < 80 and b < 80  # the red rectangle, not a blank page
