"""Gap-shift sweep (beyond the paper; Liang et al. 2022, "Mind the Gap", Section 4.2).

Does closing the modality gap improve retrieval? The paper's conclusion 3
says a smaller gap does not mean better retrieval, but it compares different
encoders, whose gaps and retrieval differ for many reasons at once. This
experiment changes the gap and nothing else: with the centroid difference

    delta = mean_i y_i - mean_i x_i        (y: images, x: texts, first-caption pairs)

every text moves by ``+ lambda / 2 * delta`` and every image by
``- lambda / 2 * delta``. ``lambda = 0`` is the original space, ``lambda = 1``
puts both centroids at their midpoint (gap 0), ``lambda = 2`` swaps them and
negative values widen the gap. The gap after the shift is exactly
``|1 - lambda|`` times the original; distances *within* a modality are
unchanged, so only the cross-modal geometry moves. At each lambda, cosine
retrieval is re-scored with the retrieval engine (same protocol, same
subset, same bootstrap as ``retrieval.parquet``), together with the mean
cosine of matching and of non-matching pairs.

The shift acts on the raw embeddings (the space the paper measures its gap
in) by default; ``normalize: true`` L2-normalises the rows first, Liang's
setting (their gap of unit vectors). Cosine retrieval is invariant to row
scaling, so ``lambda = 0`` gives the same ranks either way.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib as mpl
import numpy as np
import pandas as pd
import pyarrow as pa
from matplotlib.figure import Figure

from mmalign.config import schema_defaults
from mmalign.embed import Embeddings
from mmalign.geometry import cosine_stats, l2_normalize, short_dimension_note
from mmalign.io import write_parquet
from mmalign.layout import DIRECTION_NAMES, LEARNED_PROTOCOL
from mmalign.learn.common import PairSplit
from mmalign.plotting import MATCH_COLOUR, PAGE_WIDTH, draw_na, new_figure, style
from mmalign.retrieval import (
    QueryRanks,
    RetrievalOptions,
    Task,
    bootstrap,
    build_protocol,
    measures_per_query,
    ranks_table,
    score_task,
    write_ranks,
)

log = logging.getLogger(__name__)

COLUMNS = [
    "dataset",
    "encoder",
    "space",
    "lambda",
    "gap",
    "direction",
    "measure",
    "k",
    "value",
    "ci_low",
    "ci_high",
    "note",
]


# The label columns ``gap_shift.ranks.parquet`` has beyond ranks.parquet's.
RANK_EXTRA = (("space", pa.string()), ("lambda", pa.float64()))


_DEFAULTS = schema_defaults("gap_shift")


@dataclass(frozen=True)
class GapShiftOptions:
    """The ``gap_shift`` config (see the schema: the defaults are its)."""

    lambdas: tuple[float, ...] = tuple(_DEFAULTS["lambdas"])
    protocol: str = _DEFAULTS["protocol"]
    normalize: bool = _DEFAULTS["normalize"]

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> GapShiftOptions:
        return cls(
            lambdas=tuple(float(v) for v in cfg["lambdas"]),
            protocol=cfg["protocol"],
            normalize=cfg["normalize"],
        )


def centroid_delta(text: np.ndarray, image: np.ndarray) -> np.ndarray:
    """``mean(image) - mean(text)`` in float64."""
    return np.mean(image, axis=0, dtype=np.float64) - np.mean(text, axis=0, dtype=np.float64)


def shift(
    text: np.ndarray, image: np.ndarray, delta: np.ndarray, lam: float
) -> tuple[np.ndarray, np.ndarray]:
    """Both modalities moved towards each other by ``lam`` (see the module docstring)."""
    if lam == 0:
        return text, image
    step = (0.5 * lam * delta).astype(np.float32)
    return (text + step).astype(np.float32), (image - step).astype(np.float32)


def sweep_pairs(
    text: np.ndarray,
    image: np.ndarray,
    lambdas: tuple[float, ...],
    ropts: RetrievalOptions,
    base: dict[str, Any],
    rows_of: tuple[np.ndarray, np.ndarray],
    protocol: str,
    sink: list[QueryRanks] | None = None,
) -> list[dict[str, Any]]:
    """The sweep on matched pairs ``text[i]`` <-> ``image[i]`` (equal dimensions):
    per lambda, cosine hit@K in both directions with its bootstrap interval, and
    the mean matching / non-matching cosine (direction ``pairs``). ``rows_of``:
    the pairs' (text rows, image rows) in the embeddings, which label the
    per-query outcomes appended to ``sink`` (``protocol`` names where the pairs
    come from)."""
    delta = centroid_delta(text, image)
    rows: list[dict[str, Any]] = []
    for lam in lambdas:
        t, i = shift(text, image, delta, lam)
        row = {**base, "lambda": lam, "gap": float(np.linalg.norm(centroid_delta(t, i)))}
        for direction, task in (("t2i", Task.one_to_one(t, i)), ("i2t", Task.one_to_one(i, t))):
            ranks = score_task(task, "cosine", None, ropts)
            if sink is not None:
                label = {**base, "lambda": lam, "protocol": protocol, "direction": direction,
                         "metric": "cosine"}  # fmt: skip
                sides = rows_of if direction == "t2i" else rows_of[::-1]
                sink.append(QueryRanks.of(label, task, ranks, *sides))
            per_query = measures_per_query(ranks, task.rel_ptr, list(ropts.ks))
            hits = {f"hit@{k}": per_query[f"hit@{k}"] for k in ropts.ks}
            for name, (value, low, high) in bootstrap(hits, ropts.bootstrap, ropts.seed).items():
                rows.append({**row, "direction": direction, "measure": "hit",
                             "k": int(name.partition("@")[2]), "value": value,
                             "ci_low": low, "ci_high": high})  # fmt: skip
        cos = cosine_stats(i, t, ropts.seed)
        for measure in ("matching", "non_matching"):
            rows.append({**row, "direction": "pairs", "measure": f"{measure}_cosine",
                         "k": pd.NA, "value": cos[measure]["mean"],
                         "ci_low": math.nan, "ci_high": math.nan})  # fmt: skip
        hit = next(r["value"] for r in rows if r["lambda"] == lam and r["direction"] == "t2i")
        log.info("%s lambda %+.2f: gap %.4f, t2i hit@1 %.4f", base["space"], lam, row["gap"], hit)
    return rows


def sweep(
    emb: Embeddings,
    opts: GapShiftOptions,
    ropts: RetrievalOptions,
    label: dict[str, str],
    aligned: PairSplit | None = None,
    sink: list[QueryRanks] | None = None,
) -> pd.DataFrame:
    """Rows of :data:`COLUMNS`. Space ``raw``: the protocol's pairs of the
    embeddings (n/a rows with a note when the dimensions differ); space
    ``test_align``: ``aligned``, the test split in the alignment heads'
    shared space, when given. Per-query outcomes go to ``sink``."""
    rows: list[dict[str, Any]] = []
    dim_image, dim_text = emb.image.shape[1], emb.text.shape[1]
    if dim_image != dim_text:
        note = short_dimension_note(dim_image, dim_text)
        rows += [{**label, "space": "raw", "lambda": lam, "gap": math.nan, "direction": "t2i",
                  "measure": "hit", "k": k, "value": math.nan, "ci_low": math.nan,
                  "ci_high": math.nan, "note": note}
                 for lam in opts.lambdas for k in ropts.ks]  # fmt: skip
    else:
        protocol = build_protocol(emb, opts.protocol, ropts)
        text = np.asarray(emb.text[protocol.text_rows], np.float32)
        image = np.asarray(emb.image[protocol.image_rows], np.float32)
        if opts.normalize:
            text, image = l2_normalize(text), l2_normalize(image)
        rows += sweep_pairs(text, image, opts.lambdas, ropts, {**label, "space": "raw", "note": ""},
                            (protocol.text_rows, protocol.image_rows), opts.protocol,
                            sink)  # fmt: skip
    if aligned is not None:
        text, image = (np.asarray(a, np.float32) for a in (aligned.text, aligned.image))
        if opts.normalize:
            text, image = l2_normalize(text), l2_normalize(image)
        base = {**label, "space": "test_align", "note": ""}
        pair_rows = (aligned.text_rows, aligned.image_rows)
        rows += sweep_pairs(text, image, opts.lambdas, ropts, base, pair_rows, LEARNED_PROTOCOL,
                            sink)  # fmt: skip
    return pd.DataFrame(rows, columns=COLUMNS).astype({"k": "Int64"})


def gap_shift_job(
    embeddings_dir: str | Path,
    heads: str | Path | None,
    cfg: dict[str, Any],
    retrieval_cfg: dict[str, Any],
    learn_cfg: dict[str, Any],
    seed: int,
    threads: int,
    out_rows: str | Path,
    out_ranks: str | Path,
    label: dict[str, str],
) -> pd.DataFrame:
    """The ``gap_shift`` rule: the sweep of the raw space and, when ``heads``
    (the ``align`` variant's weights) is given, of the heads' shared space;
    the rows, and every query's ranks (:data:`RANK_EXTRA` columns added)."""
    import torch

    from mmalign.learn.align import aligned_test_split

    torch.set_num_threads(max(1, threads))
    emb = Embeddings.load(embeddings_dir)
    aligned = None
    if heads:
        _, aligned = aligned_test_split(emb, heads, learn_cfg, seed, where=str(embeddings_dir))
    ropts = RetrievalOptions.from_config(retrieval_cfg, seed)
    ranked: list[QueryRanks] = []
    frame = sweep(emb, GapShiftOptions.from_config(cfg), ropts, label, aligned, ranked)
    write_parquet(frame, out_rows)
    write_ranks(ranks_table(ranked, emb.texts, emb.images, RANK_EXTRA), out_ranks)
    return frame


# ---------------------------------------------------------------- the figure


SPACE_NAMES = {"raw": "frozen embeddings", "test_align": "alignment heads' space (test split)"}


def gap_shift_figure(frame: pd.DataFrame, title: str = "") -> Figure:
    """The gap-shift sweep (:func:`sweep`'s rows), one row per space: cosine
    hit@K against the shift lambda and against the resulting gap (lambda <= 1:
    the path from the widened to the closed gap; both directions), and the
    mean cosine of matching and non-matching pairs against lambda."""
    spaces = list(dict.fromkeys(frame["space"]))
    ks = sorted(frame.loc[frame["measure"] == "hit", "k"].dropna().unique())
    colours = mpl.colormaps["viridis"](np.linspace(0, 0.85, max(1, len(ks))))
    with style():
        fig = new_figure(PAGE_WIDTH, 0.6 + 2.3 * max(1, len(spaces)))
        grid = fig.subplots(max(1, len(spaces)), 3, squeeze=False)
        handles: tuple[list[Any], list[str]] = ([], [])
        for (by_lambda, by_gap, cosines), space in zip(grid, spaces, strict=False):
            rows_of_space = frame[frame["space"] == space]
            hits = rows_of_space[rows_of_space["measure"] == "hit"].dropna(subset=["value"])
            by_lambda.set_title(SPACE_NAMES.get(space, space), loc="left")
            if hits.empty:
                note = rows_of_space["note"].dropna()
                for ax in (by_lambda, by_gap, cosines):
                    draw_na(ax, str(note.iloc[0]) if len(note) else "no rows")
                continue
            for direction, line_style in (("t2i", "-"), ("i2t", "--")):
                for k, colour in zip(ks, colours, strict=True):
                    rows = hits[(hits["direction"] == direction) & (hits["k"] == k)]
                    rows = rows.sort_values("lambda")
                    name = DIRECTION_NAMES[direction]
                    by_lambda.plot(rows["lambda"], 100 * rows["value"], line_style, marker="o",
                                   ms=2.5, color=colour, label=f"{name} hit@{k}")  # fmt: skip
                    low, high = 100 * rows["ci_low"], 100 * rows["ci_high"]
                    by_lambda.fill_between(rows["lambda"], low, high, color=colour, alpha=0.12,
                                           lw=0)  # fmt: skip
                    rows = rows[rows["lambda"] <= 1].sort_values("gap")
                    by_gap.plot(rows["gap"], 100 * rows["value"], line_style, marker="o", ms=2.5,
                                color=colour)  # fmt: skip
            for ax, xlabel in ((by_lambda, "shift λ (1 = gap closed)"),
                               (by_gap, "gap after the shift (λ ≤ 1)")):  # fmt: skip
                ax.set_xlabel(xlabel)
                ax.set_ylabel("cosine hit@K (%)")
                ax.grid(alpha=0.3, lw=0.5)
            by_lambda.axvline(0, color="0.5", lw=0.6)
            pairs = rows_of_space[rows_of_space["direction"] == "pairs"].sort_values("lambda")
            for measure, colour, name in (
                ("matching_cosine", MATCH_COLOUR, "matching pairs"),
                ("non_matching_cosine", "0.4", "non-matching pairs"),
            ):
                rows = pairs[pairs["measure"] == measure]
                cosines.plot(rows["lambda"], rows["value"], marker="o", ms=2.5, color=colour,
                             label=name)  # fmt: skip
            cosines.set_xlabel("shift λ")
            cosines.set_ylabel("mean cosine")
            cosines.grid(alpha=0.3, lw=0.5)
            cosines.legend(frameon=False)
            handles = by_lambda.get_legend_handles_labels()
        if handles[0]:
            fig.legend(*handles, loc="outside lower center", ncols=min(4, 2 * len(ks)),
                       frameon=False)  # fmt: skip
        if title:
            fig.suptitle(title)
    return fig
