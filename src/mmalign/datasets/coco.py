"""MS-COCO captions (e.g. train2017: 118K images, about 5 captions each).

``captions_file`` is the official annotations file, e.g.
``annotations/captions_train2017.json``::

    {"images": [{"id": 9, "file_name": "000000000009.jpg", "width": 640, ...}, ...],
     "annotations": [{"image_id": 9, "id": 661611, "caption": "Closeup of bins ..."},
                     ...]}

An image's captions are ordered by annotation ``id``, so its "first caption"
(the paper's one-to-one protocol) is the one with the lowest annotation id;
the order of the ``annotations`` list itself is not used. An annotation whose
``image_id`` is not among the images is bad input (``orphan_caption``). An
image without annotations is passed on without captions (and counted as
``no_caption`` by the shared checks).

The image id is COCO's numeric id as a string; the image is
``{images_dir}/{file_name}``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from mmalign.datasets.base import DatasetError, PrepareReport, RawImage
from mmalign.datasets.folder import load_json, resolve


def read(cfg: dict[str, Any], report: PrepareReport) -> Iterator[RawImage]:
    """One record per entry of ``images``, in file order, captions by annotation id."""
    path = resolve(cfg, "captions_file", "file")
    images_dir = resolve(cfg, "images_dir", "dir")
    data = load_json(path)
    if not (
        isinstance(data, dict)
        and isinstance(data.get("images"), list)
        and isinstance(data.get("annotations"), list)
    ):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise DatasetError(
            f"{path}: not a COCO captions file: found {found}, needed an object with the "
            f"lists 'images' and 'annotations' (e.g. annotations/captions_train2017.json)"
        )

    images: list[tuple[int, str, str]] = []  # (index, id, file name)
    for i, entry in enumerate(data["images"]):
        if not (isinstance(entry, dict) and "id" in entry and "file_name" in entry):
            report.bad(
                "malformed_row", f"{path}:images[{i}]", "the entry lacks 'id' or 'file_name'"
            )
            continue
        images.append((i, str(entry["id"]), str(entry["file_name"])))
    known = {image_id for _, image_id, _ in images}

    # image id -> [(annotation id, caption, annotation index)]
    captions: dict[str, list[tuple[int, str, int]]] = {}
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}:annotations[{k}]"
        if not (isinstance(ann, dict) and "image_id" in ann and isinstance(ann.get("id"), int)):
            report.bad("malformed_row", where, "the annotation lacks 'image_id' or an integer 'id'")
            continue
        image_id = str(ann["image_id"])
        if image_id not in known:
            report.bad(
                "orphan_caption",
                where,
                f"annotation {ann['id']} refers to image_id {ann['image_id']}, which is not "
                f"in 'images'",
            )
            continue
        caption = ann.get("caption")
        if not isinstance(caption, str):
            report.bad("malformed_row", where, f"'caption' is missing or not text: {caption!r}")
            continue
        captions.setdefault(image_id, []).append((ann["id"], caption, k))

    for i, image_id, file_name in images:
        anns = sorted(captions.get(image_id, []), key=_annotation_id)
        yield RawImage(
            image_id=image_id,
            image_path=images_dir / file_name,
            captions=tuple(caption for _, caption, _ in anns),
            where=f"{path}:images[{i}]",
            caption_where=tuple(f"{path}:annotations[{k}]" for _, _, k in anns),
        )


def _annotation_id(ann: tuple[int, str, int]) -> int:
    return ann[0]
