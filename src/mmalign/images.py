"""Reading images safely: header probes, transparency, and vector sources.

Raster images are decoded with Pillow. Transparent images (RGBA, LA, and
palette images with a transparency entry) are composited on white, because
the encoders expect opaque RGB and a transparent background would otherwise
turn black. SVG files are rendered with ``rsvg-convert`` (Debian's
``librsvg2-bin``) straight at the size the encoder needs, which is how huge
drawings are read without decoding gigabytes of pixels.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

from PIL import Image, UnidentifiedImageError

_PROBE_LOCK = threading.Lock()


class ImageReadError(OSError):
    """An image file that cannot be read; the message names the file."""


def probe_image(path: str | Path) -> tuple[int, int]:
    """Return ``(width, height)`` from the file's header without decoding pixels.

    Pillow's decompression-bomb guard is lifted for the probe only: reading a
    header is safe, and the size is exactly what the caller needs to decide how
    to read the image.
    """
    path = Path(path)
    if path.suffix.lower() == ".svg":
        return _probe_svg(path)
    with _PROBE_LOCK:
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            with Image.open(path) as im:
                return im.size
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ImageReadError(f"{path}: not a readable image ({err})") from err
        finally:
            Image.MAX_IMAGE_PIXELS = limit


def _svg_length(value: str | None) -> float:
    if not value:
        return 0.0
    digits = value.strip().rstrip("abcdefghijklmnopqrstuvwxyz%")
    try:
        return float(digits)
    except ValueError:
        return 0.0


def _probe_svg(path: Path) -> tuple[int, int]:
    try:
        for _, elem in ET.iterparse(path, events=("start",)):
            if not elem.tag.endswith("svg"):
                raise ImageReadError(f"{path}: the root element is <{elem.tag}>, not <svg>")
            width, height = _svg_length(elem.get("width")), _svg_length(elem.get("height"))
            if (not width or not height) and elem.get("viewBox"):
                parts = elem.get("viewBox", "").replace(",", " ").split()
                if len(parts) == 4:
                    width, height = float(parts[2]), float(parts[3])
            return max(1, round(width)), max(1, round(height))
    except ET.ParseError as err:
        raise ImageReadError(f"{path}: not a readable SVG ({err})") from err
    raise ImageReadError(f"{path}: empty SVG file")


def flatten_on_white(im: Image.Image) -> Image.Image:
    """Opaque RGB: transparent pixels (any mode, palette transparency too) become white."""
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        im = im.convert("RGBA")
        canvas = Image.new("RGBA", im.size, (255, 255, 255, 255))
        canvas.alpha_composite(im)
        return canvas.convert("RGB")
    return im.convert("RGB")


def render_svg(path: str | Path, size: int) -> Image.Image:
    """Render an SVG so that its longer side is ``size`` pixels; RGB on white."""
    exe = shutil.which("rsvg-convert")
    if exe is None:
        raise ImageReadError(
            f"{path}: rendering SVG needs rsvg-convert; install it with "
            "`apt-get install librsvg2-bin`"
        )
    width, height = probe_image(path)
    side = ["--width", str(size)] if width >= height else ["--height", str(size)]
    proc = subprocess.run(
        [exe, *side, "--keep-aspect-ratio", "--format", "png", str(path)],
        capture_output=True,
        timeout=300,
        check=False,
    )
    if proc.returncode != 0 or not proc.stdout:
        raise ImageReadError(
            f"{path}: rsvg-convert failed: {proc.stderr.decode(errors='replace').strip()}"
        )
    with Image.open(io.BytesIO(proc.stdout)) as im:
        return flatten_on_white(im)


def load_image(path: str | Path, size: int, max_pixels: int = 89_478_485) -> Image.Image:
    """Decode an image as RGB on white, ready for an encoder's transform.

    ``size`` is the side the encoder will resize to; SVGs are rendered at it.
    Rasters larger than ``max_pixels`` are refused with an error naming the
    file rather than decoded (a 623-megapixel PNG needs 2.5 GB).
    """
    path = Path(path)
    if path.suffix.lower() == ".svg":
        return render_svg(path, size)
    width, height = probe_image(path)
    if width * height > max_pixels:
        raise ImageReadError(
            f"{path}: {width}x{height} pixels exceeds max_pixels={max_pixels}; "
            "point the manifest at a smaller or vector copy"
        )
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at reduced scale when it can
            return flatten_on_white(im)
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{path}: cannot decode ({err})") from err
