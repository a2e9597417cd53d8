"""The shared plotting style: colours, sizes, the matplotlib rc settings, and
figure creation and saving. Every stage's figures draw with these; this
module draws no stage's figure and imports no stage.

Every figure is drawn on matplotlib's Agg canvas (no pyplot, no global
state), sized for print (a single panel is about one 3.3 in column wide, with
no text below 8 pt) and saved twice, as PNG (300 dpi) and PDF, each written
atomically. Captions and file names are drawn as plain text (no mathtext, so
a ``$`` in a caption is a dollar sign).
"""

from __future__ import annotations

import contextlib
import logging
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import matplotlib as mpl
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mmalign.io import atomic_path
from mmalign.layout import FIGURE_FORMATS

# PDF font subsetting logs every table at INFO; a rule's log needs none of it.
logging.getLogger("fontTools").setLevel(logging.WARNING)

IMAGE_COLOUR = "#1f77b4"  # blue, as the paper
TEXT_COLOUR = "#ff7f0e"  # orange
CENTROID_COLOUR = "#ffd700"  # yellow dots
MATCH_COLOUR = "#2ca02c"  # green: the true match
COLUMN_WIDTH = 3.3  # inches, one column of a two-column paper
PAGE_WIDTH = 7.0  # inches, the full text width

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
def style() -> Iterator[None]:
    """:data:`STYLE` in effect (draw and save a figure inside it)."""
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
    with style():
        for ext in FIGURE_FORMATS:
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


def one_panel(width: float, height: float, draw: Callable[[Axes], None], title: str = "") -> Figure:
    """A figure of one panel, drawn by ``draw(ax)``, in the house style."""
    with style():
        fig = new_figure(width, height)
        ax = fig.add_subplot()
        draw(ax)
        if title:
            ax.set_title(title)
    return fig


def na_figure(message: str, title: str = "", width: float = COLUMN_WIDTH) -> Figure:
    """A one-panel figure stating ``message`` (e.g. a dimension mismatch)."""
    return one_panel(width, width * 0.75, lambda ax: draw_na(ax, message), title)
