"""The OpenClipArt library as Debian installs it: the default, offline dataset.

``openclipart-png`` puts drawings under ``{root}/png/<category>/.../<name>.png``
and ``openclipart-svg`` the same drawings under ``{root}/svg/...svg``. The
caption of a drawing comes from its SVG's ``cc:Work`` metadata (not from the
``cc:Agent`` elements, whose titles are author and publisher names):

1. its title, else 2. its description, else 3. its keywords joined by commas,
else 4. its file name cleaned of digits and separators;

a candidate is used only if it has a word of three letters or more and its
text (case-folded) is shared by at most ``max_share`` drawings: titles such as
"gramastar" (1,375 star drawings) or "lemon svg theme" are collection names,
not captions. Identical final captions would make instance-level hit@K
ambiguous, so among drawings with the same caption only the first (by path) is
kept. PNG symlinks to other drawings are left out (the same drawing twice).
PNGs above ``max_pixels`` are read from their SVG instead, rendered at the
encoder's input size. Everything left out is counted in the prepare report.
"""

from __future__ import annotations

import html
import logging
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mmalign.datasets.base import DatasetError, PrepareReport, RawImage
from mmalign.images import ImageReadError, probe_image

log = logging.getLogger(__name__)

SOURCES = ("title", "description", "keywords", "filename")
_WORD = re.compile(r"[^\W\d_]{3,}")


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _text(value: str | None) -> str:
    # Some files escape twice ("&amp;quot;"), hence two rounds of unescaping;
    # underscores are word separators in these titles ("kanji_health").
    return " ".join(html.unescape(html.unescape(value or "")).replace("_", " ").split())


def svg_metadata(path: Path) -> dict[str, str]:
    """Title, description and keywords of the drawing's ``cc:Work`` element.

    Parsing stops at the end of ``<metadata>`` or at the first drawing element,
    so a multi-megabyte SVG costs only its first few kilobytes.
    """
    found = {"title": "", "description": "", "keywords": ""}
    for event, elem in ET.iterparse(path, events=("start", "end")):
        name = _local(elem.tag)
        if event == "end" and name == "Work":
            for child in elem:
                field = _local(child.tag)
                if field in ("title", "description") and child.text:
                    found[field] = _text(child.text)
                elif field == "subject":
                    words = [_text(li.text) for li in child.iter() if _local(li.tag) == "li"]
                    found["keywords"] = ", ".join(w for w in words if w)
            break
        if (event == "end" and name == "metadata") or (
            event == "start" and name in ("g", "path", "defs", "rect", "image")
        ):
            break
    return found


def filename_caption(stem: str) -> str:
    """``"chemistry_flask_02"`` -> ``"chemistry flask"``: split on separators and
    camel case, drop tokens that contain digits."""
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", stem)
    tokens = [t for t in re.split(r"[\s_.\-]+", spaced) if t and not any(c.isdigit() for c in t)]
    return " ".join(tokens).lower()


def _candidates(png: Path, svg: Path, report: PrepareReport) -> dict[str, str]:
    fields = {"title": "", "description": "", "keywords": ""}
    if svg.is_file():
        try:
            fields = svg_metadata(svg)
        except ET.ParseError as err:
            report.notes["svg_metadata_unreadable"] = (
                report.notes.get("svg_metadata_unreadable", 0) + 1
            )
            log.warning("%s: unreadable SVG metadata (%s); captioning from the file name", svg, err)
    fields["filename"] = filename_caption(png.stem)
    return fields


def read(cfg: dict[str, Any], report: PrepareReport) -> Iterator[RawImage]:
    root = Path(cfg["root"])
    png_root, svg_root = root / "png", root / "svg"
    if not png_root.is_dir():
        raise DatasetError(
            f"{png_root}: no OpenClipArt PNG folder. Install it with "
            "`apt-get install openclipart-png openclipart-svg`, or set datasets.<name>.root."
        )
    max_share, max_pixels = int(cfg["max_share"]), int(cfg["max_pixels"])

    drawings: list[tuple[str, Path, Path, dict[str, str]]] = []
    for png in sorted(png_root.rglob("*.png")):
        # Not with_suffix: names such as "microchip_v.2_havok" carry dots.
        image_id = png.relative_to(png_root).as_posix()[: -len(".png")]
        if png.is_symlink():
            report.drop("symlink_duplicate", str(png), f"same drawing as {png.resolve()}")
            continue
        svg = svg_root / f"{image_id}.svg"
        drawings.append((image_id, png, svg, _candidates(png, svg, report)))
    if not drawings:
        raise DatasetError(f"{png_root}: no PNG files found; is openclipart-png installed?")

    share = {s: Counter(d[3][s].casefold() for d in drawings) for s in SOURCES}
    sources: Counter[str] = Counter()
    by_caption: dict[str, str] = {}
    svg_rendered = 0
    for image_id, png, svg, fields in drawings:
        caption, source = "", ""
        for name in SOURCES:
            text = fields[name]
            if text and _WORD.search(text) and share[name][text.casefold()] <= max_share:
                caption, source = text, name
                break
        if not caption:
            report.drop(
                "no_distinct_caption",
                str(png),
                f"title {fields['title']!r} and every fallback are shared by more than "
                f"{max_share} drawings",
            )
            continue
        key = caption.casefold()
        if key in by_caption:
            report.drop(
                "duplicate_caption",
                str(png),
                f"caption {caption!r} already used by {by_caption[key]}",
            )
            continue
        by_caption[key] = image_id
        sources[source] += 1

        path = png
        try:
            width, height = probe_image(png)
            if width * height > max_pixels and svg.is_file():
                path, svg_rendered = svg, svg_rendered + 1
                log.info("%s: %dx%d px > max_pixels; reading its SVG instead", png, width, height)
        except ImageReadError:
            pass  # build_manifest reports it with the policy of the config
        yield RawImage(image_id=image_id, image_path=path, captions=(caption,), where=str(png))

    report.notes["caption_sources"] = dict(sources)
    report.notes["read_from_svg_over_max_pixels"] = svg_rendered
    log.info("OpenClipArt: %d drawings, captions from %s", sum(sources.values()), dict(sources))
