"""A tiny random open_clip architecture, for tests of ``kind: open_clip`` (offline).

:func:`make_tiny_open_clip` writes its model config (open_clip's
``model_configs/*.json`` format) and returns the encoder spec that builds it:
a ViT of width 64, 1 layer, 32 px input in 16 px patches, and a 1-layer text
transformer of width 32 over open_clip's own BPE vocabulary (context 16),
projected to 16 dimensions. About 1.7 M parameters, mostly the token embedding;
built in well under a second once open_clip is imported.
"""

from __future__ import annotations

import json
from pathlib import Path

#: The architecture's name: the config file's stem, which open_clip registers.
TINY_OPEN_CLIP = "mmalign-tiny-ViT"
TINY_OPEN_CLIP_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {
        "context_length": 16,
        "vocab_size": 49408,  # open_clip's SimpleTokenizer
        "width": 32,
        "heads": 2,
        "layers": 1,
    },
}


def make_tiny_open_clip(folder: Path) -> dict:
    """Write ``<folder>/mmalign-tiny-ViT.json`` and return the spec
    ``{"kind": "open_clip", "model": "mmalign-tiny-ViT", "config_file": <that file>}``
    (no ``pretrained``: random weights, seeded by the caller)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{TINY_OPEN_CLIP}.json"
    path.write_text(json.dumps(TINY_OPEN_CLIP_CONFIG, indent=2) + "\n", encoding="utf-8")
    return {"kind": "open_clip", "model": TINY_OPEN_CLIP, "config_file": str(path)}
