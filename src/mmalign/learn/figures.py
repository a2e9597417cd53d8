"""Figures of the learned stage: the MLP ablation (:mod:`mmalign.learn.ablation`).

They only draw the rows and curves the ablation returned, in the style of
:mod:`mmalign.plotting`; this module imports nothing that trains.
"""

from __future__ import annotations

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from mmalign.plotting import (
    IMAGE_COLOUR,
    PAGE_WIDTH,
    TEXT_COLOUR,
    draw_na,
    new_figure,
    style,
)


def mlp_ablation_figure(curves: pd.DataFrame, rows: pd.DataFrame, title: str = "") -> Figure:
    """The MLP ablation (:func:`mmalign.learn.ablation.run_ablation`'s rows and
    curves): each variant's validation loss per epoch (text-anchored MLP; the
    epoch kept is marked), and its test hit@1 in both directions against
    chance."""
    hits = rows[(rows["measure"] == "hit") & (rows["k"] == 1)].dropna(subset=["value"])
    with style():
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
