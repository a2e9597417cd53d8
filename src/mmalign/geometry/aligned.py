"""Figures 2-5 in the alignment heads' shared space (beyond the paper).

A pair of unimodal models (the default: 1280-d EfficientNet images, 384-d
MiniLM texts) has no t-SNE, cosine matrix or retrieval example of its own: its
two modalities are not in one space. The ``align`` variant's heads
(:mod:`mmalign.learn.align`) map both into one ``dim``-d space, and this
module measures and draws there, on the learned stage's **test split** (the
pairs the heads never trained on; the same pairs and seed as rules ``learn``
and ``representation_similarity``, from
:func:`mmalign.learn.align.aligned_test_split`). Points in the shared space
are the heads' raw (unnormalised) outputs, as the ``align`` variant ranks
them by cosine.

- **t-SNE before and after the heads** (Figure 2 style), side by side, on the
  same seeded sample of test pairs (:func:`mmalign.geometry.tsne_points`
  draws its sample from the number of pairs and the seed only): before = the
  frozen embeddings, n/a when their dimensions differ; after = the heads'
  outputs. Each panel has its modality SVM's boundary and the modality gap of
  its space (raw centroid distance, or of L2-normalised rows with
  ``geometry.normalize``), in that space's original dimension.
- **The cosine matrix** of Figure 3 on seeded test pairs, in the shared space.
- **Retrieval examples** of Figures 4-5: a seeded test caption (image) ranked
  by cosine in the shared space over every test image (caption).

The numbers drawn go to ``aligned_geometry.json``: per space (``raw``,
``aligned``) the dimensions, modality gap, cosine statistics
(:func:`mmalign.geometry.cosine_stats`) and the t-SNE SVM's accuracy, and
each retrieval example's query and the rank of its true match. The figures
are drawn by :mod:`mmalign.geometry.figures`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mmalign import seeding
from mmalign.geometry import (
    BOUNDARY_COLUMNS,
    GeometryConfig,
    GeometryError,
    Pairs,
    cosine_matrix_sample,
    cosine_stats,
    image_paths,
    load_captions,
    modality_gap,
    modality_svm,
    rank_by_cosine,
    tsne_boundary,
    tsne_points,
)
from mmalign.io import write_json
from mmalign.layout import ALIGNED_FIGURES, DIRECTIONS

if TYPE_CHECKING:
    from mmalign.embed import Embeddings

log = logging.getLogger(__name__)

#: The spaces of ``aligned_geometry.json``: the frozen embeddings and the heads' outputs.
SPACES = ("raw", "aligned")


def aligned_pairs(
    emb: Embeddings, heads: str | Path, learn_cfg: dict[str, Any], seed: int, where: str = ""
) -> tuple[Pairs, Pairs]:
    """The learned stage's test pairs, frozen (d_image and d_text as embedded) and
    projected by the heads stored at ``heads`` (both ``dim``-d), row for row."""
    from mmalign.learn.align import aligned_test_split  # torch only where heads are applied

    raw, aligned = aligned_test_split(emb, heads, learn_cfg, seed, where=where)
    return tuple(  # type: ignore[return-value]
        Pairs(image=s.image, text=s.text, image_rows=s.image_rows, text_rows=s.text_rows)
        for s in (raw, aligned)
    )


def space_summary(pairs: Pairs, cfg: GeometryConfig, seed: int, space: str) -> dict[str, Any]:
    """The measures of one space's pairs: ``dims``, ``modality_gap`` (raw, or
    L2-normalised with ``cfg.normalize``; both also under their own keys) and
    ``cosine`` (:func:`mmalign.geometry.cosine_stats`), each ``None`` with a note
    when the image and text dimensions differ. ``space`` names it in the figure."""
    dim_image, dim_text = pairs.image.shape[1], pairs.text.shape[1]
    summary: dict[str, Any] = {
        "space": space,
        "n_pairs": len(pairs),
        "dims": {"image": dim_image, "text": dim_text},
        "notes": {},
    }
    if not pairs.same_space:
        note = f"n/a: image {dim_image}-d vs text {dim_text}-d are not one space before the heads"
        summary.update(
            modality_gap=None, modality_gap_raw=None, modality_gap_normalized=None, cosine=None
        )
        summary["notes"] = {"modality_gap": note, "cosine": note}
        return summary
    raw = modality_gap(pairs.image, pairs.text)
    normalized = modality_gap(pairs.image, pairs.text, normalize=True)
    summary.update(
        modality_gap=normalized if cfg.normalize else raw,
        modality_gap_raw=raw,
        modality_gap_normalized=normalized,
        cosine=cosine_stats(pairs.image, pairs.text, seed),
    )
    return summary


def _no_points() -> tuple[pd.DataFrame, pd.DataFrame]:
    points = pd.DataFrame(
        {
            "pair": pd.Series(dtype=np.int64),
            "modality": pd.Series(dtype=str),
            "x": pd.Series(dtype=np.float64),
            "y": pd.Series(dtype=np.float64),
        }
    )
    return points, pd.DataFrame({c: pd.Series(dtype=t) for c, t in BOUNDARY_COLUMNS.items()})


def space_tsne(
    pairs: Pairs, cfg: GeometryConfig, seed: int, threads: int = 1
) -> tuple[pd.DataFrame, pd.DataFrame, float | None, str | None]:
    """Figure 2's t-SNE of one space: (points, the modality SVM's decision values
    on the drawing grid, its training accuracy, ``None``), or empty frames,
    ``None`` and why when nothing can be drawn (dimensions that differ; fewer
    than 3 pairs)."""
    points, boundary = _no_points()
    if not pairs.same_space:
        return points, boundary, None, "n/a: the image and text dimensions differ"
    try:
        points = tsne_points(pairs, cfg.tsne_samples, seed, n_jobs=threads)
    except GeometryError as err:
        return points, boundary, None, f"n/a: {err}"
    svm, accuracy = modality_svm(points)
    return points, tsne_boundary(points, svm), accuracy, None


def pair_retrieval_example(
    pairs: Pairs, direction: str, seed: int
) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """Figure 4 (``t2i``) or 5 (``i2t``) over pairs: a seeded random pair's caption
    (image) ranked by cosine over every pair's image (caption). Returns (query
    pair, pairs by descending cosine, the cosine of each pair, whether each pair
    is the query's own: the one true match)."""
    if direction == "t2i":
        queries, gallery = pairs.text, pairs.image
    elif direction == "i2t":
        queries, gallery = pairs.image, pairs.text
    else:
        raise ValueError(f"unknown direction {direction!r}; known: {DIRECTIONS}")
    query = int(seeding.rng(seed, f"aligned/retrieval/{direction}").integers(len(pairs)))
    order, scores = rank_by_cosine(np.asarray(queries[query]), np.asarray(gallery))
    return query, order, scores, np.arange(len(pairs)) == query


def aligned_geometry_job(
    embeddings_dir: str | Path,
    manifest_path: str | Path,
    heads: str | Path,
    geometry_cfg: dict[str, Any],
    learn_cfg: dict[str, Any],
    seed: int,
    threads: int,
    out_json: str | Path,
    figures_dir: str | Path,
    label: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``aligned_geometry`` rule: ``aligned_geometry.json`` and the figures
    ``{name}.png`` / ``.pdf`` of :data:`mmalign.layout.ALIGNED_FIGURES` in
    ``figures_dir`` (see the module docstring)."""
    from mmalign.embed import Embeddings
    from mmalign.geometry import figures  # matplotlib only where figures are drawn
    from mmalign.plotting import save_figure

    cfg = GeometryConfig.from_config(geometry_cfg)
    emb = Embeddings.load(embeddings_dir)
    captions = load_captions(manifest_path, emb)
    pairs = dict(
        zip(
            SPACES,
            aligned_pairs(emb, heads, learn_cfg, seed, where=str(embeddings_dir)),
            strict=True,
        )
    )
    label = label or {}
    title = " / ".join(label.get(k, "") for k in ("dataset", "encoder") if label.get(k))
    raw_dims = pairs["raw"].image.shape[1], pairs["raw"].text.shape[1]
    dim = pairs["aligned"].image.shape[1]
    names = {
        "raw": (
            f"frozen, {raw_dims[0]}-d"
            if raw_dims[0] == raw_dims[1]
            else f"frozen, image {raw_dims[0]}-d, text {raw_dims[1]}-d"
        ),
        "aligned": f"shared {dim}-d space",
    }
    log.info(
        "%s: %d test pairs, %s -> %s", title, len(pairs["raw"]), names["raw"], names["aligned"]
    )

    spaces = {s: space_summary(pairs[s], cfg, seed, names[s]) for s in SPACES}
    panels = {}
    for space in SPACES:
        start = time.perf_counter()
        points, boundary, accuracy, note = space_tsne(pairs[space], cfg, seed, threads)
        spaces[space]["tsne_svm_accuracy"] = accuracy
        if note is not None:
            spaces[space]["notes"]["tsne"] = note
        else:
            log.info(
                "%s: t-SNE of %d pairs, %.1f s; the RBF-SVM separates the modalities with "
                "accuracy %.3f",
                space,
                len(points) // 2,
                time.perf_counter() - start,
                accuracy,
            )
        panels[space] = figures.TsnePanel(
            points, boundary, {**spaces[space], "config": asdict(cfg)}
        )

    aligned = pairs["aligned"]
    paths = image_paths(emb, captions)[aligned.image_rows]
    pair_captions = captions["caption"].iloc[aligned.text_rows].reset_index(drop=True)
    examples, ranked = {}, {}
    for direction in DIRECTIONS:
        query, order, scores, relevant = pair_retrieval_example(aligned, direction, seed)
        examples[direction] = figures.RetrievalExample(
            query, order, scores, relevant, paths, pair_captions
        )
        ranked[direction] = {
            "query_pair": query,
            "query_row": int(
                (aligned.text_rows if direction == "t2i" else aligned.image_rows)[query]
            ),
            "true_rank": int(np.flatnonzero(order == query)[0]) + 1,
            "n_candidates": len(aligned),
        }

    heading = f"{title}, test split" if title else "test split"
    drawn = {
        "tsne": figures.before_after_tsne_figure(panels["raw"], panels["aligned"], heading),
        "cosine_matrix": figures.cosine_matrix_figure(
            cosine_matrix_sample(aligned, cfg.heatmap_pairs, seed), f"{heading}, {names['aligned']}"
        ),
        "retrieval_t2i": figures.retrieval_t2i_figure(examples["t2i"], f"{heading}, heads' space"),
        "retrieval_i2t": figures.retrieval_i2t_figure(examples["i2t"], f"{heading}, heads' space"),
    }
    figures_dir = Path(figures_dir)
    for name, aligned_name in ALIGNED_FIGURES.items():
        save_figure(drawn[name], figures_dir / aligned_name)

    summary = {
        **label,
        "split": "test",
        "pairs": "the learned stage's test split: first-caption pairs (rule learn's)",
        "n_pairs": len(aligned),
        "heads": Path(heads).name,
        "spaces": spaces,
        "retrieval_examples": ranked,
        "seed": seed,
        "config": asdict(cfg),
    }
    write_json(summary, out_json)
    return summary
