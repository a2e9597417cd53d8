"""Figures of the geometry stage (paper Figures 2-5 and Appendix A).

They only draw: every number, ranking and boundary comes computed from
:mod:`mmalign.geometry` (the rule's job computes them; the t-SNE grid reads
them from each unit's files), and the style from :mod:`mmalign.plotting`. This
module imports nothing from the geometry computation, which imports it.

When the image and text embeddings differ in dimension, a figure that needs
one space is still written, as a panel stating ``n/a: image 1280-d vs text
384-d``.
"""

from __future__ import annotations

import json
import logging
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from mmalign.images import ImageReadError, load_image
from mmalign.layout import GEOMETRY_FIGURES
from mmalign.plotting import (
    CENTROID_COLOUR,
    COLUMN_WIDTH,
    IMAGE_COLOUR,
    MATCH_COLOUR,
    PAGE_WIDTH,
    TEXT_COLOUR,
    draw_na,
    na_figure,
    new_figure,
    one_panel,
    save_figure,
    shorten,
    style,
)

log = logging.getLogger(__name__)

THUMBNAIL_PIXELS = 256

# ---------------------------------------------------------------- Figure 2: t-SNE


@dataclass(frozen=True)
class TsnePanel:
    """What one t-SNE panel needs: the points (``tsne.parquet``), the modality
    SVM's decision values on the drawing grid (``tsne_boundary.parquet``, see
    :func:`mmalign.geometry.tsne_boundary`) and ``geometry.json``. ``see_also``,
    when given, is added to an n/a panel's note (where the figure can be seen
    instead, e.g. the aligned-space figure's file)."""

    points: pd.DataFrame
    boundary: pd.DataFrame
    summary: dict[str, Any]
    see_also: str = ""

    @property
    def note(self) -> str | None:
        dims = self.summary["dims"]
        if dims["image"] != dims["text"]:
            # The summary's own n/a note: why no measure of one space was made.
            note = str(self.summary["notes"]["modality_gap"])
        elif len(self.points) == 0:
            note = str(self.summary.get("notes", {}).get("tsne", "n/a: no t-SNE points"))
        else:
            return None
        return f"{note}. {self.see_also}" if self.see_also else note


def _gap_label(summary: dict[str, Any]) -> str:
    gap = summary.get("modality_gap")
    if gap is None:
        return "MG n/a"
    normalized = summary.get("config", {}).get("normalize", False)
    return f"MG = {gap:.2f}" + (" (L2-norm.)" if normalized else "")


def _boundary_grid(boundary: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``tsne_boundary.parquet`` back as the (rows x columns) grids x, y, decision."""
    shape = (int(boundary["row"].max()) + 1, int(boundary["col"].max()) + 1)
    ordered = boundary.sort_values(["row", "col"], kind="stable")
    return tuple(
        ordered[c].to_numpy(dtype=np.float64).reshape(shape) for c in ("x", "y", "decision")
    )


def draw_tsne(ax: Axes, panel: TsnePanel, marker_size: float = 3.0, note_width: int = 34) -> None:
    """Image points blue, text orange, each modality's centroid as a yellow dot
    (edged in its modality's colour), the RBF-SVM boundary between the
    modalities dashed (where the decision values change sign), and the
    modality gap (original dimension, from ``geometry.json``) in the top-right
    corner."""
    if panel.note is not None:
        draw_na(ax, panel.note, note_width)
        return
    points = panel.points
    for modality, colour in (("image", IMAGE_COLOUR), ("text", TEXT_COLOUR)):
        sub = points[points["modality"] == modality]
        ax.scatter(sub["x"], sub["y"], s=marker_size, c=colour, alpha=0.45, linewidths=0)
    if len(panel.boundary):
        grid_x, grid_y, decision = _boundary_grid(panel.boundary)
        if decision.min() < 0 < decision.max():
            ax.contour(
                grid_x,
                grid_y,
                decision,
                levels=[0.0],
                colors="k",
                linestyles="--",
                linewidths=0.8,
            )
    centroids = points.groupby("modality")[["x", "y"]].mean()
    ax.scatter(
        centroids["x"],
        centroids["y"],
        s=40,
        c=CENTROID_COLOUR,
        edgecolors=[IMAGE_COLOUR if m == "image" else TEXT_COLOUR for m in centroids.index],
        linewidths=1.6,
        zorder=5,
    )
    ax.text(
        0.97,
        0.97,
        _gap_label(panel.summary),
        transform=ax.transAxes,
        ha="right",
        va="top",
        bbox={"boxstyle": "round,pad=0.25", "fc": "white", "ec": "0.6", "alpha": 0.85},
        zorder=6,
    )
    ax.set_xticks([])
    ax.set_yticks([])


def _tsne_legend(fig: Figure) -> None:
    handles = [
        Line2D([], [], ls="", marker="o", ms=4, color=IMAGE_COLOUR, label="image"),
        Line2D([], [], ls="", marker="o", ms=4, color=TEXT_COLOUR, label="text"),
        Line2D([], [], ls="", marker="o", ms=5, mfc=CENTROID_COLOUR, mec="k", label="centroid"),
        Line2D([], [], ls="--", color="k", lw=0.8, label="SVM boundary"),
    ]
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncols=4,
        frameon=False,
        handletextpad=0.3,
        columnspacing=0.8,
    )


def tsne_figure(panel: TsnePanel, title: str = "") -> Figure:
    """Figure 2 for one (dataset, encoder), one column wide."""
    fig = one_panel(COLUMN_WIDTH, COLUMN_WIDTH * 0.95, lambda ax: draw_tsne(ax, panel), title)
    if panel.note is None:
        with style():
            _tsne_legend(fig)
    return fig


def before_after_tsne_figure(before: TsnePanel, after: TsnePanel, title: str = "") -> Figure:
    """Figure 2 before and after the alignment heads, side by side, one column
    wide each: the same test pairs in the frozen embeddings (left; n/a when the
    two modalities differ in dimension) and in the heads' shared space (right).
    Each panel's ``summary`` may name its space (``space``, shown under the title)."""
    with style():
        fig = new_figure(2 * COLUMN_WIDTH, COLUMN_WIDTH * 1.05)
        axes = fig.subplots(1, 2)
        for ax, panel, name in ((axes[0], before, "before"), (axes[1], after, "after")):
            draw_tsne(ax, panel)
            space = panel.summary.get("space")
            ax.set_title(f"{name} the heads" + (f"\n{space}" if space else ""))
        if title:
            fig.suptitle(title)
        if before.note is None or after.note is None:
            _tsne_legend(fig)
    return fig


def tsne_grid_figure(
    panels: dict[tuple[str, str], TsnePanel], datasets: Sequence[str], encoders: Sequence[str]
) -> Figure:
    """Figure 2 as the paper lays it out: rows datasets, columns encoders."""
    side = 2.0
    with style():
        fig = new_figure(0.3 + side * len(encoders), 0.45 + side * len(datasets))
        axes = fig.subplots(len(datasets), len(encoders), squeeze=False)
        for r, dataset in enumerate(datasets):
            for c, encoder in enumerate(encoders):
                ax = axes[r][c]
                draw_tsne(ax, panels[(dataset, encoder)], marker_size=2.0, note_width=22)
                if r == 0:
                    ax.set_title(shorten(encoder, 26))
                if c == 0:
                    ax.set_ylabel(dataset)
        _tsne_legend(fig)
    return fig


# ---------------------------------------------------------------- Figure 3: cosine matrix


def _cell_label(value: float) -> str:
    # ".53" / "-.12": two decimals without the leading zero fit a cell at 8 pt.
    value = round(value, 2) + 0.0  # no "-.00"
    text = f"{value:.2f}"
    return text.replace("0.", ".", 1) if abs(value) < 1 else text


def cosine_matrix_figure(matrix: np.ndarray, title: str = "", annotate_max: int = 15) -> Figure:
    """Figure 3: ``matrix[i, j] = cos(text_i, image_j)`` of m pairs
    (:func:`mmalign.geometry.cosine_matrix_sample`); rows texts, columns images,
    so the diagonal holds the matching pairs. Cells are annotated (when
    ``m <= annotate_max``), red = larger, blue = smaller, scaled to this
    matrix's range (the colour bar gives the values)."""
    m = len(matrix)
    side = max(COLUMN_WIDTH, 0.26 * m + 1.0)
    with style():
        fig = new_figure(side * 1.1, side)
        ax = fig.add_subplot()
        low, high = float(matrix.min()), float(matrix.max())
        if high - low < 1e-9:
            low, high = low - 0.5, high + 0.5
        image = ax.imshow(matrix, cmap="coolwarm", vmin=low, vmax=high)
        colour_bar = fig.colorbar(image, ax=ax, shrink=0.85, pad=0.02)
        colour_bar.set_label("cosine similarity")
        if m <= annotate_max:
            for i in range(m):
                for j in range(m):
                    strength = abs((matrix[i, j] - low) / (high - low) - 0.5)
                    ax.text(
                        j,
                        i,
                        _cell_label(float(matrix[i, j])),
                        ha="center",
                        va="center",
                        color="white" if strength > 0.3 else "black",
                    )
        for i in range(m):  # frame the matching pairs
            ax.add_patch(
                Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="black", lw=1.0, zorder=3)
            )
        ticks = np.arange(m)
        step = 1 if m <= 15 else int(np.ceil(m / 15))
        ax.set_xticks(ticks[::step], [str(t + 1) for t in ticks[::step]])
        ax.set_yticks(ticks[::step], [str(t + 1) for t in ticks[::step]])
        ax.set_xlabel("image of pair")
        ax.set_ylabel("text of pair")
        ax.set_title(title + ("\n" if title else "") + "diagonal = matching pairs")
    return fig


# ---------------------------------------------------------------- Figures 4-5: retrieval


@dataclass(frozen=True)
class RetrievalExample:
    """What Figure 4 (text -> image) or 5 (image -> text) draws: one query ranked by
    cosine over every candidate (:func:`mmalign.geometry.retrieval_example`).

    ``order`` (n,): candidate rows by descending cosine; ``scores`` (n,) and
    ``relevant`` (n, bool: a true match) in candidate-row order. Candidates are
    images (rows of ``image.npy``) for text -> image, captions (rows of
    ``text.npy``) for image -> text. ``image_paths``: the file of each image
    row; ``captions``: the caption of each text row."""

    query: int
    order: np.ndarray
    scores: np.ndarray
    relevant: np.ndarray
    image_paths: np.ndarray
    captions: pd.Series


def thumbnail(path: str, size: int = THUMBNAIL_PIXELS) -> Image.Image | None:
    """The image as RGB on white, scaled to fit and centred on a white ``size`` x
    ``size`` square (so every panel has the same shape); ``None`` (and a
    warning naming the file) if it cannot be read."""
    try:
        image = load_image(path, size)
    except (ImageReadError, OSError) as err:
        log.warning("retrieval figure: cannot show %s (%s)", path, err)
        return None
    scale = size / max(image.size)
    fitted = image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))),
        Image.Resampling.LANCZOS,
    )
    square = Image.new("RGB", (size, size), "white")
    square.paste(fitted, ((size - fitted.width) // 2, (size - fitted.height) // 2))
    return square


def draw_thumbnail(ax: Axes, path: str, title: str, match: bool) -> None:
    """A thumbnail with its caption line; a thick green frame when it is the true match."""
    image = thumbnail(path)
    if image is None:
        draw_na(ax, f"cannot read {Path(path).name}")
    else:
        ax.imshow(np.asarray(image))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color(MATCH_COLOUR if match else "0.6")
        spine.set_linewidth(3.0 if match else 0.6)
    ax.set_title(title, color=MATCH_COLOUR if match else "black")
    ax.set_xlabel(shorten(Path(path).stem, 15), color="0.35")


def retrieval_t2i_figure(example: RetrievalExample, title: str = "", k: int = 5) -> Figure:
    """Figure 4: a caption as the query, its top-``k`` images by cosine over all
    images; the true image framed green, and shown with its rank after the
    top ``k`` when it is not among them."""
    order, scores, paths = example.order, example.scores, example.image_paths
    true_row = int(np.flatnonzero(example.relevant)[0])
    true_rank = int(np.flatnonzero(order == true_row)[0]) + 1
    shown = [(r + 1, int(order[r])) for r in range(min(k, len(order)))]
    extra = true_rank > len(shown)
    n_cols = len(shown) + (2 if extra else 0)  # a narrow spacer, then the true match
    widths = [1.0] * len(shown) + ([0.15, 1.0] if extra else [])
    query_lines = textwrap.wrap(
        f"query: “{shorten(example.captions.iloc[example.query], 300)}”", 110
    )
    header = "\n".join([f"{title}   text → image" if title else "text → image", *query_lines])
    with style():
        fig = new_figure(PAGE_WIDTH, 1.75 + 0.16 * len(query_lines))
        fig.suptitle(header, x=0.01, ha="left", fontsize=8)
        grid = fig.add_gridspec(1, n_cols, width_ratios=widths)
        for col, (rank, row) in enumerate(shown):
            draw_thumbnail(
                fig.add_subplot(grid[0, col]),
                paths[row],
                f"#{rank}  cos {scores[row]:.2f}",
                row == true_row,
            )
        if extra:
            fig.add_subplot(grid[0, len(shown)]).set_axis_off()
            draw_thumbnail(
                fig.add_subplot(grid[0, len(shown) + 1]),
                paths[true_row],
                f"true match\n#{true_rank}  cos {scores[true_row]:.2f}",
                True,
            )
    return fig


def retrieval_i2t_figure(example: RetrievalExample, title: str = "", k: int = 5) -> Figure:
    """Figure 5: an image as the query, its top-``k`` captions by cosine over all
    captions; every caption of the query image counts as a match (green), and
    the best-ranked one is listed with its rank when none is in the top
    ``k``."""
    order, scores, captions = example.order, example.scores, example.captions
    relevant = example.relevant[order]
    first_hit = int(np.flatnonzero(relevant)[0]) + 1
    lines = [(r + 1, int(order[r]), bool(relevant[r])) for r in range(min(k, len(order)))]
    if first_hit > len(lines):
        lines.append((first_hit, int(order[first_hit - 1]), True))
    with style():
        fig = new_figure(PAGE_WIDTH, 2.1)
        grid = fig.add_gridspec(1, 2, width_ratios=[1.0, 3.4])
        draw_thumbnail(
            fig.add_subplot(grid[0, 0]), example.image_paths[example.query], "query image", False
        )
        ax = fig.add_subplot(grid[0, 1])
        ax.set_axis_off()
        header = f"{title}   image → text" if title else "image → text"
        ax.text(0.0, 1.0, header, transform=ax.transAxes, va="top", color="0.35")
        y, step = 0.84, 0.8 / (len(lines) + 1)
        for position, (rank, row, match) in enumerate(lines):
            if position == k:  # the true caption, after a gap
                ax.text(0.0, y, "…", transform=ax.transAxes, va="top")
                y -= step
            caption = shorten(captions.iloc[row], 72)
            suffix = "   ← true caption" if position == k else ""
            ax.text(
                0.0,
                y,
                f"#{rank}  {caption}   (cos {scores[row]:.2f}){suffix}",
                transform=ax.transAxes,
                va="top",
                color=MATCH_COLOUR if match else "black",
                fontweight="bold" if match else "normal",
            )
            y -= step
    return fig


# ---------------------------------------------------------------- Appendix A


def precision_upper_bounds_figure(table: pd.DataFrame, captions_per_image: int) -> Figure:
    """Appendix A: the best possible precision@K
    (:func:`mmalign.geometry.precision_upper_bounds`), image-to-text
    ``min(1, c/K)`` and text-to-image ``1/K``, with ``c`` captions per image."""
    with style():
        fig = new_figure(COLUMN_WIDTH, 2.7)
        ax = fig.add_subplot()
        lines = (
            ("image_to_text", "o", IMAGE_COLOUR,
             f"image → text, {captions_per_image} captions per image: "
             f"min(1, {captions_per_image}/K)"),
            ("text_to_image", "s", TEXT_COLOUR, "text → image, 1 image per caption: 1/K"),
        )  # fmt: skip
        for column, marker, colour, label in lines:
            ax.plot(table["k"], table[column], marker=marker, ms=3.5, color=colour, label=label)
        ax.set_xticks(table["k"])
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("K")
        ax.set_ylabel("upper bound of P@K")
        ax.grid(alpha=0.3, lw=0.5)
        fig.legend(loc="outside upper center", frameon=False)
    return fig


# ---------------------------------------------------------------- the rules' figures


def write_geometry_figures(
    panel: TsnePanel,
    matrix: np.ndarray | None,
    t2i: RetrievalExample | None,
    i2t: RetrievalExample | None,
    note: str | None,
    title: str,
    figures_dir: str | Path,
    see_also: Mapping[str, str] | None = None,
) -> list[Path]:
    """The per-(dataset, encoder) figures, ``{name}.png`` and ``{name}.pdf`` for each
    of :data:`mmalign.layout.GEOMETRY_FIGURES`, in ``figures_dir``. A figure whose
    input is ``None`` (the two modalities in different spaces) states ``note``,
    and, where ``see_also`` names a figure for it (the aligned-space
    counterpart's file), where to look instead."""
    figures_dir = Path(figures_dir)
    half = PAGE_WIDTH / 2
    see_also = see_also or {}

    def na(name: str, width: float = COLUMN_WIDTH) -> Figure:
        message = str(note)
        if see_also.get(name):
            message += f". In the alignment heads' space: {see_also[name]}"
        return na_figure(message, title, width)

    if see_also.get("tsne") and panel.note is not None:
        panel = replace(panel, see_also=f"In the alignment heads' space: {see_also['tsne']}")
    figures = {
        "tsne": tsne_figure(panel, title),
        "cosine_matrix": (
            na("cosine_matrix") if matrix is None else cosine_matrix_figure(matrix, title)
        ),
        "retrieval_t2i": (
            na("retrieval_t2i", half) if t2i is None else retrieval_t2i_figure(t2i, title)
        ),
        "retrieval_i2t": (
            na("retrieval_i2t", half) if i2t is None else retrieval_i2t_figure(i2t, title)
        ),
    }
    written = []
    for name in GEOMETRY_FIGURES:
        written += save_figure(figures[name], figures_dir / name)
    return written


def write_tsne_grid(
    summaries: Sequence[str | Path],
    points: Sequence[str | Path],
    boundaries: Sequence[str | Path],
    panels: Sequence[Sequence[str]],
    datasets: Sequence[str],
    encoders: Sequence[str],
    out_stem: str | Path,
) -> list[Path]:
    """The ``tsne_grid`` rule: ``summaries[i]`` (``geometry.json``), ``points[i]``
    (``tsne.parquet``) and ``boundaries[i]`` (``tsne_boundary.parquet``) belong to
    ``panels[i] = (dataset, encoder)``."""
    if not len(summaries) == len(points) == len(boundaries) == len(panels):
        raise ValueError(
            f"tsne grid: {len(summaries)} summaries, {len(points)} point files, "
            f"{len(boundaries)} boundary files and {len(panels)} panels must correspond "
            "one to one"
        )
    by_panel = {
        (dataset, encoder): TsnePanel(
            pd.read_parquet(point_file),
            pd.read_parquet(boundary_file),
            json.loads(Path(summary_file).read_text()),
        )
        for (dataset, encoder), summary_file, point_file, boundary_file in zip(
            panels, summaries, points, boundaries, strict=True
        )
    }
    return save_figure(tsne_grid_figure(by_panel, datasets, encoders), out_stem)
