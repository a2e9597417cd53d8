"""Error analysis from per-query ranks (``ranks.parquet``, issue #16 item 8).

``ranks.parquet`` has one row per (protocol, direction, metric, query): the
1-based ``rank`` of the query's first relevant gallery item, and the ranks of
all its relevant items (``relevant_ranks``, a list aligned with
``relevant_rows``). From it:

- :func:`extreme_queries`: the queries one space ranks worst and best, with the
  query's caption and its true image from the manifest;
- :func:`recall_curve`: recall@K and hit@K for K = 1..``k_max``, every
  (protocol, metric, direction) at once, vectorised;
- :func:`plot_recall_curves`: those curves on a log K axis, one panel per
  direction, one line per metric and space.

Definitions (query q with relevant items R_q, n queries in a group):

- ``recall@K`` = (1/n) sum_q |{r in R_q : rank(r) <= K}| / |R_q|;
- ``hit@K`` = (1/n) sum_q [rank of q's first relevant item <= K].

With one relevant item per query (``subset``, ``full``, ``learned_test``)
the two are equal; under ``multicaption`` image -> text they differ.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from urllib.parse import quote

import matplotlib as mpl
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from matplotlib.figure import Figure

from mmalign.layout import DIRECTION_NAMES, DIRECTIONS, LEARNED_PROTOCOL
from mmalign.plotting import PAGE_WIDTH, draw_na, new_figure, save_figure, shorten, style

# Display names of the learned spaces (protocol learned_test); every other metric
# name is a raw-space metric, shown as "raw <metric>".
LEARNED_LABELS = {
    "align": "aligned cosine",
    "align_euclidean": "aligned euclidean",
    "align_manhattan": "aligned manhattan",
    "align_chi2": "aligned chi2",
    "align_linear": "CCA cosine",
    "mlp_mse": "MLP (MSE)",
    "mlp_contrastive": "MLP (contrastive)",
    "mlp_down": "MLP 500-300-100",
}
# The base metric of each name fixes its colour, so that raw and aligned cosine match.
BASE_METRIC = {
    "align": "cosine",
    "align_euclidean": "euclidean",
    "align_manhattan": "manhattan",
    "align_chi2": "chi2",
}
COLOUR_ORDER = (
    "cosine", "euclidean", "manhattan", "chi2", "centered_cosine", "csls", "qbnorm",
    "align_linear", "mlp_mse", "mlp_contrastive", "mlp_down",
)  # fmt: skip
PLAIN_TICKS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
CURVE_KEYS = ("protocol", "metric", "direction")
# The columns of ranks.parquet that vary by query; every other column labels a group.
PER_QUERY_COLUMNS = (
    "query", "query_row", "image_id", "caption_idx", "rank", "relevant_rows",
    "relevant_ranks", "n_gallery",
)  # fmt: skip
QUERY_COLUMNS = ["query", "caption", "image_id", "image_path", "rank", "n_gallery"]


# ---------------------------------------------------------------- extreme queries


def _selection(ranks: pd.DataFrame, protocol: str, metric: str, direction: str) -> pd.DataFrame:
    chosen = ranks[
        (ranks["protocol"] == protocol)
        & (ranks["metric"] == metric)
        & (ranks["direction"] == direction)
    ]
    if chosen.empty:
        present = sorted(
            map(tuple, ranks[list(CURVE_KEYS)].drop_duplicates().astype(str).to_numpy())
        )
        raise ValueError(
            f"ranks: no rows for protocol {protocol!r}, metric {metric!r}, direction "
            f"{direction!r}; present (protocol, metric, direction): {present}"
        )
    repeated = chosen["query"].duplicated()
    if repeated.any():
        query = int(chosen.loc[repeated, "query"].iloc[0])
        raise ValueError(
            f"ranks: query {query} of protocol {protocol!r}, metric {metric!r}, direction "
            f"{direction!r} has several rows; pass the ranks of one (dataset, encoder) "
            "and one value of any further label (e.g. the gap shift's space and lambda)"
        )
    return chosen


def _attach_manifest(chosen: pd.DataFrame, manifest: pd.DataFrame, direction: str) -> pd.DataFrame:
    """``chosen`` with the query's ``caption`` and the true image's ``image_path``."""
    paths = manifest.drop_duplicates("image_id")[["image_id", "image_path"]]
    if direction == "t2i":
        key = ["image_id", "caption_idx"]
        captions = manifest[[*key, "caption"]]
        doubled = captions.duplicated(key)
        if doubled.any():
            image_id, idx = captions.loc[doubled, key].iloc[0]
            raise ValueError(
                f"manifest: image_id {image_id!r} has caption_idx {idx} twice; "
                "(image_id, caption_idx) must name one caption"
            )
        wanted = chosen[key].astype({"caption_idx": "int64"})
        captions = captions.astype({"caption_idx": "int64"})
    else:
        key = ["image_id"]
        # The image's first caption: lowest caption_idx, as mmalign.geometry pairs them.
        captions = manifest.sort_values(["image_id", "caption_idx"], kind="stable")
        captions = captions.drop_duplicates("image_id")[["image_id", "caption"]]
        wanted = chosen[key]
    found = wanted.merge(captions, on=key, how="left", validate="many_to_one")
    found = found.merge(paths, on="image_id", how="left", validate="many_to_one")
    missing = found["caption"].isna() | found["image_path"].isna()
    if missing.any():
        first = found.loc[missing, key].iloc[0].to_dict()
        raise ValueError(
            f"manifest: no caption or image_path for {first} of ranks.parquet; "
            "ranks and manifest must come from the same run"
        )
    out = chosen[["query", "image_id", "rank", "n_gallery"]].reset_index(drop=True)
    out["caption"] = found["caption"].to_numpy()
    out["image_path"] = found["image_path"].to_numpy()
    return out[QUERY_COLUMNS]


def extreme_queries(
    ranks: pd.DataFrame,
    manifest: pd.DataFrame,
    protocol: str,
    metric: str,
    direction: str = "t2i",
    n: int = 10,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The ``n`` worst- and the ``n`` best-ranked queries of one (protocol, metric,
    direction) of ``ranks.parquet``, as ``(worst, best)``.

    Worst = largest ``rank`` (1-based rank of the first relevant item) first;
    best = smallest first; equal ranks in ascending ``query`` order, so the
    choice is deterministic. With fewer than ``2 n`` queries the two frames
    share rows. Columns: ``query`` (position in the task), ``caption`` (t2i:
    the query caption; i2t: the query image's first caption, lowest
    ``caption_idx``), ``image_id`` and ``image_path`` (the true image: t2i the
    query caption's image, i2t the query image), ``rank``, ``n_gallery``.
    ``manifest`` is ``manifest.parquet`` (``image_id, image_path, caption,
    caption_idx``).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    chosen = _selection(ranks, protocol, metric, direction)
    worst = chosen.sort_values(["rank", "query"], ascending=[False, True], kind="stable")
    best = chosen.sort_values(["rank", "query"], ascending=[True, True], kind="stable")
    return (
        _attach_manifest(worst.head(n), manifest, direction),
        _attach_manifest(best.head(n), manifest, direction),
    )


def _cell(text: object) -> str:
    """One Markdown table cell: whitespace collapsed, ``|`` escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def queries_markdown(
    frame: pd.DataFrame, image_prefix: str | None = None, caption_width: int = 160
) -> str:
    """A GitHub Markdown table of :func:`extreme_queries` output: ``rank`` (as
    ``rank / n_gallery``), ``caption`` (cut at ``caption_width`` characters)
    and ``true image``. With ``image_prefix`` (a path relative to the Markdown
    file, e.g. ``".."``), the image is shown as ``![image_id](prefix/image_path)``
    (an absolute ``image_path`` is used as is; the link is percent-encoded);
    without it, as its ``image_id``."""
    lines = ["| rank | caption | true image |", "|---:|---|---|"]
    for rank, n_gallery, caption, image_id, image_path in zip(
        frame["rank"], frame["n_gallery"], frame["caption"], frame["image_id"],
        frame["image_path"], strict=True,
    ):  # fmt: skip
        if image_prefix is None:
            image = _cell(image_id)
        else:
            alt = _cell(image_id).replace("[", "\\[").replace("]", "\\]")
            link = quote(posixpath.join(image_prefix, str(image_path)))
            image = f"![{alt}]({link})"
        lines.append(
            f"| {int(rank)} / {int(n_gallery)} | {_cell(shorten(caption, caption_width))} "
            f"| {image} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- recall@K curves


def list_column(column: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``(lengths, values)`` of a column of integer lists: ``lengths[i]`` (int64) is
    row i's list length, ``values`` (int64) all lists concatenated in row order.

    Takes an Arrow list column (``pd.read_parquet(..., dtype_backend="pyarrow")``)
    as it is, or an object column of arrays or lists (``pd.read_parquet``'s
    default), which Arrow converts several times faster than ``np.concatenate``."""
    if isinstance(column.dtype, pd.ArrowDtype):
        array = pa.array(column.array)
    else:
        array = pa.array(column.to_numpy(), type=pa.list_(pa.int64()), from_pandas=True)
    if array.null_count:
        raise ValueError(f"{column.name}: {array.null_count} rows hold no list")
    lengths = pc.list_value_length(array).to_numpy().astype(np.int64)
    values = pc.list_flatten(array).to_numpy().astype(np.int64)
    return lengths, values


def _describe(ranks: pd.DataFrame, position: int) -> str:
    row = ranks.iloc[position]
    keys = ", ".join(f"{c} {row[c]!s}" for c in (*CURVE_KEYS, "query") if c in ranks.columns)
    return f"ranks: row {position} ({keys})"


def _check_ranks(ranks: pd.DataFrame, lengths: np.ndarray, flat: np.ndarray) -> None:
    """Every query has a relevant item, ranks are in 1..n_gallery and ``rank`` is
    the smallest of ``relevant_ranks``."""
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
        raise ValueError(f"{_describe(ranks, int(empty[0]))}: relevant_ranks is empty")
    n_gallery = np.repeat(ranks["n_gallery"].to_numpy(np.int64), lengths)
    bad = np.flatnonzero((flat < 1) | (flat > n_gallery))
    if len(bad):
        row = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        raise ValueError(
            f"{_describe(ranks, row)}: relevant rank {flat[bad[0]]} is outside 1..n_gallery"
        )
    first = np.minimum.reduceat(flat, np.cumsum(lengths) - lengths)
    off = np.flatnonzero(first != ranks["rank"].to_numpy(np.int64))
    if len(off):
        row = int(off[0])
        raise ValueError(
            f"{_describe(ranks, row)}: rank {ranks['rank'].iloc[row]} is not the smallest "
            f"of relevant_ranks ({first[row]}); re-run the retrieval rule"
        )


def _changes(values: pd.Series) -> np.ndarray:
    """``changed[i]``: row i + 1 may differ from row i (True where unsure, e.g. NaN
    next to a value); equal neighbours, missing ones included, give False."""
    if hasattr(values.array, "__arrow_array__"):  # ArrowDtype, and pandas 3's str
        array = pa.array(values.array)
        differ = pc.fill_null(pc.not_equal(array[1:], array[:-1]), True)
        missing = pc.is_null(array, nan_is_null=True).to_numpy(zero_copy_only=False)
        return differ.to_numpy(zero_copy_only=False) & ~(missing[1:] & missing[:-1])
    if values.dtype == object:  # strings: compare integer codes, not Python objects
        codes = pd.factorize(values)[0]  # every missing value is -1
        return codes[1:] != codes[:-1]
    array = values.to_numpy()
    missing = pd.isna(array)
    return (array[1:] != array[:-1]) & ~(missing[1:] & missing[:-1])


def group_ids(frame: pd.DataFrame, keys: list[str]) -> tuple[np.ndarray, pd.DataFrame]:
    """``(group, labels)``: each row's group number (int64, 0-based, in sorted key
    order, missing values as a value of their own) and the keys of each group
    (row g of ``labels``), as ``frame.groupby(keys, sort=True, dropna=False)``.

    ``ranks.parquet`` stores each group as one run of rows, so only the first
    row of each run is grouped by pandas; the neighbour comparisons that find
    the runs are vectorised, which keeps this fast at millions of rows."""
    n = len(frame)
    change = np.ones(n, dtype=bool)
    if n > 1:
        change[1:] = np.logical_or.reduce([_changes(frame[key]) for key in keys])
    starts = np.flatnonzero(change)
    heads = frame[keys].iloc[starts]
    grouped = heads.groupby(keys, sort=True, observed=True, dropna=False)
    head_group = grouped.ngroup().to_numpy(np.int64)
    labels = grouped.size().index.to_frame(index=False)
    return np.repeat(head_group, np.diff(np.append(starts, n))), labels


def recall_curve(ranks: pd.DataFrame, k_max: int = 100) -> pd.DataFrame:
    """recall@K and hit@K for K = 1..``k_max`` of every (protocol, metric,
    direction) in ``ranks``, and of every value of its other label columns
    (``dataset``, ``encoder``, and e.g. the gap shift's ``space`` and
    ``lambda``: every column not in :data:`PER_QUERY_COLUMNS`).

    ``recall`` = mean over the group's queries of |relevant items with rank <= K|
    / |relevant items| (from ``relevant_ranks``); ``hit`` = share of queries
    whose first relevant item (``rank``) is within K; both fractions in [0, 1].
    Columns: the group keys, ``k``, ``recall``, ``hit``, ``n_queries``; groups
    in sorted key order, K ascending. One pass of ``np.bincount`` over all
    rows: each relevant item adds 1 / (|R_q| n_queries) to the bin
    min(rank, k_max + 1) of its group, and a cumulative sum gives every K.
    """
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, not {k_max}")
    missing = sorted({*CURVE_KEYS, "rank", "relevant_ranks", "n_gallery"} - set(ranks.columns))
    if missing:
        raise ValueError(f"ranks: columns {missing} are missing; pass ranks.parquet")
    units = [c for c in ("dataset", "encoder") if c in ranks.columns]
    extra = [c for c in ranks.columns if c not in (*units, *PER_QUERY_COLUMNS, *CURVE_KEYS)]
    keys = [*units, *extra, *CURVE_KEYS]
    columns = [*keys, "k", "recall", "hit", "n_queries"]
    if ranks.empty:
        return pd.DataFrame(columns=columns)
    ranks = ranks.reset_index(drop=True)
    lengths, flat = list_column(ranks["relevant_ranks"])
    _check_ranks(ranks, lengths, flat)

    group, labels = group_ids(ranks, keys)
    n_groups = int(group.max()) + 1
    n_queries = np.bincount(group, minlength=n_groups)
    bins = k_max + 1  # bin b < k_max holds rank b + 1; the last holds every rank > k_max

    query_weight = 1.0 / n_queries[group]
    first = np.minimum(ranks["rank"].to_numpy(np.int64), bins) - 1
    hit = np.bincount(group * bins + first, weights=query_weight, minlength=n_groups * bins)

    item_group = np.repeat(group, lengths)
    item_weight = np.repeat(query_weight / lengths, lengths)
    item_bin = np.minimum(flat, bins) - 1
    recall = np.bincount(
        item_group * bins + item_bin, weights=item_weight, minlength=n_groups * bins
    )

    hit = np.cumsum(hit.reshape(n_groups, bins), axis=1)[:, :k_max]
    recall = np.cumsum(recall.reshape(n_groups, bins), axis=1)[:, :k_max]
    out = labels.loc[labels.index.repeat(k_max)].reset_index(drop=True)
    out["k"] = np.tile(np.arange(1, k_max + 1, dtype=np.int64), n_groups)
    out["recall"] = np.minimum(recall.ravel(), 1.0)  # float sums may exceed 1 by an ulp
    out["hit"] = np.minimum(hit.ravel(), 1.0)
    out["n_queries"] = np.repeat(n_queries, k_max)
    return out[columns]


# ---------------------------------------------------------------- the figure


def space_label(protocol: str, metric: str) -> str:
    """The legend name of one curve: learned spaces of ``learned_test`` by
    :data:`LEARNED_LABELS` ("aligned cosine" for ``align``), every other metric
    as ``"raw <metric>"`` ("raw centered cosine")."""
    if protocol == LEARNED_PROTOCOL and metric in LEARNED_LABELS:
        return LEARNED_LABELS[metric]
    return "raw " + metric.replace("_", " ")


def _curve_order(key: tuple[str, str]) -> tuple[int, int, str, str]:
    """Raw metrics first, then learned spaces; within each, :data:`COLOUR_ORDER`."""
    protocol, metric = key
    learned = protocol == LEARNED_PROTOCOL and metric in LEARNED_LABELS
    names = list(LEARNED_LABELS) if learned else list(COLOUR_ORDER)
    position = names.index(metric) if metric in names else len(names)
    return (int(learned), position, metric, protocol)


def _curve_style(protocol: str, metric: str) -> dict[str, object]:
    base = BASE_METRIC.get(metric, metric)
    position = COLOUR_ORDER.index(base) if base in COLOUR_ORDER else len(COLOUR_ORDER)
    # tab20's dark shades first (even entries), then its light ones
    colour = mpl.colormaps["tab20"]((2 * position) % 20 + (2 * position) // 20 % 2)
    learned = protocol == LEARNED_PROTOCOL and metric in LEARNED_LABELS
    return {"color": colour, "ls": "-" if learned else "--", "lw": 1.2 if learned else 0.9}


def recall_curve_figure(curves: pd.DataFrame, title: str = "", measure: str = "recall") -> Figure:
    """:func:`recall_curve` output drawn as ``measure`` (``recall`` or ``hit``, in %)
    against K on a log axis: one panel per direction (text → image, image →
    text), one line per (protocol, metric). Learned spaces solid, raw metrics
    dashed, a metric's raw and aligned lines in one colour. With more than one
    protocol in ``curves``, each label names its protocol."""
    if measure not in ("recall", "hit"):
        raise ValueError(f"measure must be 'recall' or 'hit', not {measure!r}")
    several = curves["protocol"].nunique() > 1
    k_max = int(curves["k"].max()) if len(curves) else 1
    ticks = [t for t in PLAIN_TICKS if t <= k_max]
    with style():
        pairs = curves[["protocol", "metric"]].drop_duplicates()
        n_labels = len(pairs)
        n_cols = 3 if several else 4
        fig = new_figure(PAGE_WIDTH, 2.6 + 0.16 * -(-n_labels // n_cols))
        axes = fig.subplots(1, len(DIRECTIONS), squeeze=False)[0]
        handles: dict[str, object] = {}
        for ax, direction in zip(axes, DIRECTIONS, strict=True):
            ax.set_title(DIRECTION_NAMES[direction])
            mine = curves[curves["direction"] == direction]
            if mine.empty:
                draw_na(ax, f"no {DIRECTION_NAMES[direction]} queries")
                continue
            groups = dict(list(mine.groupby(["protocol", "metric"], sort=False)))
            for protocol, metric in sorted(groups, key=_curve_order):
                rows = groups[(protocol, metric)]
                label = space_label(str(protocol), str(metric))
                if several:
                    label += f" ({protocol})"
                rows = rows.sort_values("k")
                (line,) = ax.plot(rows["k"], 100 * rows[measure], label=label,
                                  **_curve_style(str(protocol), str(metric)))  # fmt: skip
                handles.setdefault(label, line)
            ax.set_xscale("log")
            ax.set_xlim(1, k_max)
            # Plain tick labels: mathtext is off (captions may hold "$"), so no 10^{k}.
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_formatter(mpl.ticker.NullFormatter())
            ax.set_ylim(0, 100)
            ax.set_xlabel("K")
            ax.grid(alpha=0.3, lw=0.5, which="both")
        axes[0].set_ylabel(f"{measure}@K (%)")
        if handles:
            fig.legend(list(handles.values()), list(handles.keys()), loc="outside lower center",
                       ncols=min(n_cols, len(handles)), frameon=False)  # fmt: skip
        if title:
            fig.suptitle(title)
    return fig


def plot_recall_curves(
    curves: pd.DataFrame, path_stem: str | Path, title: str, measure: str = "recall"
) -> list[Path]:
    """:func:`recall_curve_figure` saved as ``{path_stem}.png`` (300 dpi) and
    ``{path_stem}.pdf``; returns both paths."""
    return save_figure(recall_curve_figure(curves, title, measure), path_stem)


def line_labels(fig: Figure) -> list[list[str]]:
    """The label of every line of each panel of ``fig``, panel by panel (for tests
    and for checking a figure without looking at it)."""
    return [[str(line.get_label()) for line in ax.get_lines()] for ax in fig.axes]
