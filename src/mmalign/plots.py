"""Figures of the geometry stage (paper Figures 2-5 and Appendix A).

Every figure is drawn on matplotlib's Agg canvas (no pyplot, no global
state), sized for print (a single panel is about one 3.3 in column wide, with
no text below 8 pt) and saved twice, as PNG (300 dpi) and PDF, each written
atomically. Captions and file names are drawn as plain text (no mathtext, so
a ``$`` in a caption is a dollar sign).

When the image and text embeddings differ in dimension, a figure that needs
one space is still written, as a panel stating ``n/a: image 1280-d vs text
384-d``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from PIL import Image

from mmalign import seeding
from mmalign.geometry import (
    GeometryConfig,
    Pairs,
    cosine_matrix,
    modality_svm,
    precision_upper_bounds,
    rank_by_cosine,
    short_dimension_note,
)
from mmalign.images import ImageReadError, load_image
from mmalign.io import atomic_path

if TYPE_CHECKING:
    from mmalign.embed import Embeddings

log = logging.getLogger(__name__)
# PDF font subsetting logs every table at INFO; a rule's log needs none of it.
logging.getLogger("fontTools").setLevel(logging.WARNING)

IMAGE_COLOUR = "#1f77b4"  # blue, as the paper
TEXT_COLOUR = "#ff7f0e"  # orange
CENTROID_COLOUR = "#ffd700"  # yellow dots
MATCH_COLOUR = "#2ca02c"  # green: the true match
COLUMN_WIDTH = 3.3  # inches, one column of a two-column paper
PAGE_WIDTH = 7.0  # inches, the full text width
THUMBNAIL_PIXELS = 256

STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "legend.fontsize": 8,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "pdf.fonttype": 42,  # TrueType in PDFs: the text stays text
    "text.parse_math": False,
}


@contextlib.contextmanager
def _style() -> Iterator[None]:
    with mpl.rc_context(STYLE), warnings.catch_warnings():
        # Captions in scripts DejaVu lacks (CJK) draw as boxes; that is not worth a warning each.
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        yield


def new_figure(width: float, height: float) -> Figure:
    """A figure on the Agg canvas with constrained layout, in inches."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, stem: str | Path) -> list[Path]:
    """Write ``stem.png`` (300 dpi) and ``stem.pdf`` atomically; returns both paths."""
    paths = []
    with _style():
        for ext in ("png", "pdf"):
            path = Path(f"{stem}.{ext}")
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=ext, dpi=300)
            paths.append(path)
    return paths


def shorten(text: str, width: int) -> str:
    """One line of at most ``width`` characters, whitespace collapsed, "…" where cut."""
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def draw_na(ax: Axes, message: str, width: int = 34) -> None:
    """An empty panel that states why there is nothing to show, wrapped at ``width``
    characters a line."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.7")
    ax.text(
        0.5,
        0.5,
        "\n".join(textwrap.wrap(message, width)),
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.3",
    )


def na_figure(message: str, title: str = "", width: float = COLUMN_WIDTH) -> Figure:
    """A one-panel figure stating ``message`` (e.g. a dimension mismatch)."""
    with _style():
        fig = new_figure(width, width * 0.75)
        ax = fig.add_subplot()
        draw_na(ax, message)
        if title:
            ax.set_title(title)
    return fig


# ---------------------------------------------------------------- Figure 2: t-SNE


@dataclass(frozen=True)
class TsnePanel:
    """What one t-SNE panel needs: the points (``tsne.parquet``) and ``geometry.json``."""

    points: pd.DataFrame
    summary: dict[str, Any]

    @property
    def note(self) -> str | None:
        dims = self.summary["dims"]
        if dims["image"] != dims["text"]:
            return short_dimension_note(dims["image"], dims["text"])
        if len(self.points) == 0:
            return "n/a: no t-SNE points"
        return None


def _gap_label(summary: dict[str, Any]) -> str:
    gap = summary.get("modality_gap")
    if gap is None:
        return "MG n/a"
    normalized = summary.get("config", {}).get("normalize", False)
    return f"MG = {gap:.2f}" + (" (L2-norm.)" if normalized else "")


def draw_tsne(ax: Axes, panel: TsnePanel, marker_size: float = 3.0, note_width: int = 34) -> None:
    """Image points blue, text orange, each modality's centroid as a yellow dot
    (edged in its modality's colour), the RBF-SVM boundary between the
    modalities dashed, and the modality gap (original dimension, from
    ``geometry.json``) in the top-right corner."""
    if panel.note is not None:
        draw_na(ax, panel.note, note_width)
        return
    points = panel.points
    for modality, colour in (("image", IMAGE_COLOUR), ("text", TEXT_COLOUR)):
        sub = points[points["modality"] == modality]
        ax.scatter(sub["x"], sub["y"], s=marker_size, c=colour, alpha=0.45, linewidths=0)
    svm, _ = modality_svm(points)
    pad_x = 0.05 * float(np.ptp(points["x"]))
    pad_y = 0.05 * float(np.ptp(points["y"]))
    grid_x, grid_y = np.meshgrid(
        np.linspace(points["x"].min() - pad_x, points["x"].max() + pad_x, 160),
        np.linspace(points["y"].min() - pad_y, points["y"].max() + pad_y, 160),
    )
    decision = svm.decision_function(np.c_[grid_x.ravel(), grid_y.ravel()])
    if decision.min() < 0 < decision.max():
        ax.contour(
            grid_x,
            grid_y,
            decision.reshape(grid_x.shape),
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
    with _style():
        fig = new_figure(COLUMN_WIDTH, COLUMN_WIDTH * 0.95)
        ax = fig.add_subplot()
        draw_tsne(ax, panel)
        if title:
            ax.set_title(title)
        if panel.note is None:
            _tsne_legend(fig)
    return fig


def tsne_grid_figure(
    panels: dict[tuple[str, str], TsnePanel], datasets: Sequence[str], encoders: Sequence[str]
) -> Figure:
    """Figure 2 as the paper lays it out: rows datasets, columns encoders."""
    side = 2.0
    with _style():
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


def cosine_matrix_figure(
    pairs: Pairs, n_pairs: int, seed: int, title: str = "", annotate_max: int = 15
) -> Figure:
    """Figure 3: ``cos(text_i, image_j)`` of ``n_pairs`` seeded random pairs; rows
    texts, columns images, so the diagonal holds the matching pairs. Cells are
    annotated (when ``n_pairs <= annotate_max``), red = larger, blue = smaller,
    scaled to this matrix's range (the colour bar gives the values)."""
    if not pairs.same_space:
        return na_figure(short_dimension_note(pairs.image.shape[1], pairs.text.shape[1]), title)
    m = min(n_pairs, len(pairs))
    chosen = np.sort(seeding.rng(seed, "cosine_matrix").choice(len(pairs), size=m, replace=False))
    matrix = cosine_matrix(pairs.text[chosen], pairs.image[chosen])
    side = max(COLUMN_WIDTH, 0.26 * m + 1.0)
    with _style():
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


def image_paths(emb: Embeddings, captions: pd.DataFrame) -> np.ndarray:
    """``image_path`` of each row of ``image.npy`` (``images.parquet`` has none; the
    manifest has one per caption row)."""
    path_of = captions.drop_duplicates("image_id").set_index("image_id")["image_path"]
    missing = ~emb.images["image_id"].isin(path_of.index)
    if missing.any():
        first = emb.images["image_id"][missing].iloc[0]
        raise ValueError(
            f"images.parquet: image_id {first!r} is not in the manifest; re-run the embed rules"
        )
    return path_of.loc[emb.images["image_id"]].to_numpy()


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


def retrieval_t2i_figure(
    emb: Embeddings, captions: pd.DataFrame, seed: int, title: str = "", k: int = 5
) -> Figure:
    """Figure 4: a seeded random caption as the query, its top-``k`` images by cosine
    over all images; the true image framed green, and shown with its rank
    after the top ``k`` when it is not among them."""
    dim_image, dim_text = emb.image.shape[1], emb.text.shape[1]
    if dim_image != dim_text:
        return na_figure(short_dimension_note(dim_image, dim_text), title, PAGE_WIDTH / 2)
    query = int(seeding.rng(seed, "retrieval/t2i").integers(len(emb.text)))
    order, scores = rank_by_cosine(np.asarray(emb.text[query]), np.asarray(emb.image))
    true_row = int(emb.texts["image_row"].iloc[query])
    true_rank = int(np.flatnonzero(order == true_row)[0]) + 1
    paths = image_paths(emb, captions)
    shown = [(r + 1, int(order[r])) for r in range(min(k, len(order)))]
    extra = true_rank > len(shown)
    n_cols = len(shown) + (2 if extra else 0)  # a narrow spacer, then the true match
    widths = [1.0] * len(shown) + ([0.15, 1.0] if extra else [])
    query_lines = textwrap.wrap(f"query: “{shorten(captions['caption'].iloc[query], 300)}”", 110)
    header = "\n".join([f"{title}   text → image" if title else "text → image", *query_lines])
    with _style():
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


def retrieval_i2t_figure(
    emb: Embeddings, captions: pd.DataFrame, seed: int, title: str = "", k: int = 5
) -> Figure:
    """Figure 5: a seeded random image as the query, its top-``k`` captions by cosine
    over all captions; every caption of the query image counts as a match
    (green), and the best-ranked one is listed with its rank when none is in
    the top ``k``."""
    dim_image, dim_text = emb.image.shape[1], emb.text.shape[1]
    if dim_image != dim_text:
        return na_figure(short_dimension_note(dim_image, dim_text), title, PAGE_WIDTH / 2)
    query = int(seeding.rng(seed, "retrieval/i2t").integers(len(emb.image)))
    order, scores = rank_by_cosine(np.asarray(emb.image[query]), np.asarray(emb.text))
    relevant = (emb.texts["image_row"].to_numpy() == query)[order]
    first_hit = int(np.flatnonzero(relevant)[0]) + 1
    paths = image_paths(emb, captions)
    lines = [(r + 1, int(order[r]), bool(relevant[r])) for r in range(min(k, len(order)))]
    if first_hit > len(lines):
        lines.append((first_hit, int(order[first_hit - 1]), True))
    with _style():
        fig = new_figure(PAGE_WIDTH, 2.1)
        grid = fig.add_gridspec(1, 2, width_ratios=[1.0, 3.4])
        draw_thumbnail(fig.add_subplot(grid[0, 0]), paths[query], "query image", False)
        ax = fig.add_subplot(grid[0, 1])
        ax.set_axis_off()
        header = f"{title}   image → text" if title else "image → text"
        ax.text(0.0, 1.0, header, transform=ax.transAxes, va="top", color="0.35")
        y, step = 0.84, 0.8 / (len(lines) + 1)
        for position, (rank, row, match) in enumerate(lines):
            if position == k:  # the true caption, after a gap
                ax.text(0.0, y, "…", transform=ax.transAxes, va="top")
                y -= step
            caption = shorten(captions["caption"].iloc[row], 72)
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


def precision_upper_bounds_figure(k_max: int = 10, captions_per_image: int = 5) -> Figure:
    """Appendix A: the best possible precision@K, image-to-text ``min(1, c/K)``
    and text-to-image ``1/K``, with ``c`` captions per image."""
    table = precision_upper_bounds(k_max, captions_per_image)
    with _style():
        fig = new_figure(COLUMN_WIDTH, 2.7)
        ax = fig.add_subplot()
        ax.plot(
            table["k"],
            table["image_to_text"],
            marker="o",
            ms=3.5,
            color=IMAGE_COLOUR,
            label=f"image → text, {captions_per_image} captions per image: "
            f"min(1, {captions_per_image}/K)",
        )
        ax.plot(
            table["k"],
            table["text_to_image"],
            marker="s",
            ms=3.5,
            color=TEXT_COLOUR,
            label="text → image, 1 image per caption: 1/K",
        )
        ax.set_xticks(table["k"])
        ax.set_ylim(0, 1.08)
        ax.set_xlabel("K")
        ax.set_ylabel("upper bound of P@K")
        ax.grid(alpha=0.3, lw=0.5)
        fig.legend(loc="outside upper center", frameon=False)
    return fig


# ---------------------------------------------------------------- the rule's figures


FIGURE_NAMES = ("tsne", "cosine_matrix", "retrieval_t2i", "retrieval_i2t")


def write_geometry_figures(
    emb: Embeddings,
    pairs: Pairs,
    captions: pd.DataFrame,
    points: pd.DataFrame,
    summary: dict[str, Any],
    cfg: GeometryConfig,
    seed: int,
    figures_dir: str | Path,
) -> list[Path]:
    """The per-(dataset, encoder) figures, ``{name}.png`` and ``{name}.pdf`` for each
    of :data:`FIGURE_NAMES`, in ``figures_dir``."""
    figures_dir = Path(figures_dir)
    title = " / ".join(str(summary[k]) for k in ("dataset", "encoder") if summary.get(k))
    figures = {
        "tsne": tsne_figure(TsnePanel(points, summary), title),
        "cosine_matrix": cosine_matrix_figure(pairs, cfg.heatmap_pairs, seed, title),
        "retrieval_t2i": retrieval_t2i_figure(emb, captions, seed, title),
        "retrieval_i2t": retrieval_i2t_figure(emb, captions, seed, title),
    }
    written = []
    for name in FIGURE_NAMES:
        written += save_figure(figures[name], figures_dir / name)
    return written


def write_tsne_grid(
    summaries: Sequence[str | Path],
    points: Sequence[str | Path],
    panels: Sequence[Sequence[str]],
    datasets: Sequence[str],
    encoders: Sequence[str],
    out_stem: str | Path,
) -> list[Path]:
    """The ``tsne_grid`` rule: ``summaries[i]`` (``geometry.json``) and ``points[i]``
    (``tsne.parquet``) belong to ``panels[i] = (dataset, encoder)``."""
    if not len(summaries) == len(points) == len(panels):
        raise ValueError(
            f"tsne grid: {len(summaries)} summaries, {len(points)} point files and "
            f"{len(panels)} panels must correspond one to one"
        )
    by_panel = {
        (dataset, encoder): TsnePanel(
            pd.read_parquet(point_file), json.loads(Path(summary_file).read_text())
        )
        for (dataset, encoder), summary_file, point_file in zip(
            panels, summaries, points, strict=True
        )
    }
    return save_figure(tsne_grid_figure(by_panel, datasets, encoders), out_stem)


# ---------------------------------------------------------------- beyond the paper


SPACE_NAMES = {"raw": "frozen embeddings", "test_align": "alignment heads' space (test split)"}


def gap_shift_figure(frame: pd.DataFrame, title: str = "") -> Figure:
    """The gap-shift sweep (:mod:`mmalign.gapshift`), one row per space: cosine
    hit@K against the shift lambda and against the resulting gap (lambda <= 1:
    the path from the widened to the closed gap; both directions), and the
    mean cosine of matching and non-matching pairs against lambda."""
    spaces = list(dict.fromkeys(frame["space"]))
    ks = sorted(frame.loc[frame["measure"] == "hit", "k"].dropna().unique())
    colours = mpl.colormaps["viridis"](np.linspace(0, 0.85, max(1, len(ks))))
    with _style():
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
            for direction, style in (("t2i", "-"), ("i2t", "--")):
                for k, colour in zip(ks, colours, strict=True):
                    rows = hits[(hits["direction"] == direction) & (hits["k"] == k)]
                    rows = rows.sort_values("lambda")
                    name = "text → image" if direction == "t2i" else "image → text"
                    by_lambda.plot(rows["lambda"], 100 * rows["value"], style, marker="o",
                                   ms=2.5, color=colour, label=f"{name} hit@{k}")  # fmt: skip
                    low, high = 100 * rows["ci_low"], 100 * rows["ci_high"]
                    by_lambda.fill_between(rows["lambda"], low, high, color=colour, alpha=0.12,
                                           lw=0)  # fmt: skip
                    rows = rows[rows["lambda"] <= 1].sort_values("gap")
                    by_gap.plot(rows["gap"], 100 * rows["value"], style, marker="o", ms=2.5,
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


def mlp_ablation_figure(curves: pd.DataFrame, rows: pd.DataFrame, title: str = "") -> Figure:
    """The MLP ablation (:mod:`mmalign.learn.ablation`): each variant's validation
    loss per epoch (text-anchored MLP; the epoch kept is marked), and its test
    hit@1 in both directions against chance."""
    hits = rows[(rows["measure"] == "hit") & (rows["k"] == 1)].dropna(subset=["value"])
    with _style():
        fig = new_figure(PAGE_WIDTH, 2.8)
        loss_ax, hit_ax = fig.subplots(1, 2, width_ratios=[1.4, 1])
        names = list(dict.fromkeys(curves["variant"])) if len(curves) else []
        colours = mpl.colormaps["tab10"](np.arange(max(1, len(names))) % 10)
        for name, colour in zip(names, colours, strict=True):
            mine = curves[(curves["variant"] == name) & (curves["direction"].isin(["t2i", "both"]))]
            loss_ax.plot(mine["epoch"], mine["val_loss"], color=colour, lw=1, label=name)
            kept = mine[mine["best"].astype(bool)]
            loss_ax.plot(kept["epoch"], kept["val_loss"], "o", ms=3, color=colour)
        loss_ax.set_xlabel("epoch")
        loss_ax.set_ylabel("validation loss (text-anchored)")
        loss_ax.set_yscale("log")
        # Plain tick labels: mathtext is off (captions may hold "$"), so no 10^{-1}.
        loss_ax.yaxis.set_major_formatter(mpl.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        loss_ax.yaxis.set_minor_formatter(mpl.ticker.NullFormatter())
        loss_ax.grid(alpha=0.3, lw=0.5)
        if names:
            loss_ax.legend(frameon=False, fontsize=7)
        if hits.empty:
            draw_na(hit_ax, "no test scores")
        else:
            variants = list(dict.fromkeys(hits["metric"]))
            y = np.arange(len(variants))
            for offset, (direction, colour) in enumerate((("t2i", TEXT_COLOUR),
                                                          ("i2t", IMAGE_COLOUR))):  # fmt: skip
                mine = hits[hits["direction"] == direction].set_index("metric").reindex(variants)
                hit_ax.barh(y + 0.4 * offset - 0.2, 100 * mine["value"], height=0.4,
                            color=colour, label=direction)  # fmt: skip
            chance = 100 / hits["n_queries"].max()
            hit_ax.axvline(chance, color="0.3", ls="--", lw=0.8, label=f"chance {chance:.2f}%")
            hit_ax.set_yticks(y, [v.removeprefix("mlp_ablation:") for v in variants])
            hit_ax.invert_yaxis()
            hit_ax.set_xlabel("test hit@1 (%)")
            hit_ax.legend(frameon=False, fontsize=7)
        if title:
            fig.suptitle(title)
    return fig
