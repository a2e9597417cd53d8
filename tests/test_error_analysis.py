"""Error analysis from ranks.parquet: extreme queries, recall@K curves, their figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from mmalign.error_analysis import (
    extreme_queries,
    group_ids,
    line_labels,
    list_column,
    plot_recall_curves,
    queries_markdown,
    recall_curve,
    recall_curve_figure,
    space_label,
)


def ranks_frame(rows: list[dict]) -> pd.DataFrame:
    """A ranks.parquet-shaped frame; ``rank`` is the smallest relevant rank."""
    frame = pd.DataFrame(rows)
    frame["rank"] = [min(r) for r in frame["relevant_ranks"]]
    frame["relevant_rows"] = [list(range(len(r))) for r in frame["relevant_ranks"]]
    defaults = {"dataset": "toy", "encoder": "enc", "query_row": 0, "image_id": "img",
                "caption_idx": -1, "n_gallery": 10}  # fmt: skip
    for column, value in defaults.items():
        if column not in frame:
            frame[column] = value
    return frame


# ---------------------------------------------------------------- recall_curve


def test_recall_curve_hand_worked() -> None:
    rows = [
        {"protocol": "full", "metric": "cosine", "direction": "t2i", "query": q,
         "relevant_ranks": [r]}
        for q, r in enumerate((1, 3, 3, 10))
    ] + [
        {"protocol": "multicaption", "metric": "cosine", "direction": "i2t", "query": 0,
         "relevant_ranks": [7, 2, 5]},
        {"protocol": "multicaption", "metric": "cosine", "direction": "i2t", "query": 1,
         "relevant_ranks": [4, 1]},
    ]  # fmt: skip
    curves = recall_curve(ranks_frame(rows), k_max=5)
    assert len(curves) == 10
    assert list(curves.columns) == [
        "dataset", "encoder", "protocol", "metric", "direction", "k", "recall", "hit", "n_queries"
    ]  # fmt: skip
    full = curves[curves["protocol"] == "full"]
    # one relevant item each: ranks 1, 3, 3, 10 of 4 queries
    np.testing.assert_allclose(full["hit"], [0.25, 0.25, 0.75, 0.75, 0.75])
    np.testing.assert_allclose(full["recall"], full["hit"])
    assert (full["n_queries"] == 4).all()
    multi = curves[curves["protocol"] == "multicaption"]
    # query 0: 3 relevant at 2, 5, 7; query 1: 2 relevant at 1, 4
    # K=1: (0 + 1/2)/2; K=2: (1/3 + 1/2)/2; K=4: (1/3 + 1)/2; K=5: (2/3 + 1)/2
    np.testing.assert_allclose(multi["recall"], [1 / 4, 5 / 12, 5 / 12, 2 / 3, 5 / 6])
    np.testing.assert_allclose(multi["hit"], [0.5, 1, 1, 1, 1])
    np.testing.assert_array_equal(multi["k"], [1, 2, 3, 4, 5])


def random_ranks(rng: np.random.Generator) -> pd.DataFrame:
    rows = []
    for protocol, metric, direction, n_queries, max_relevant in (
        ("full", "cosine", "t2i", 200, 1),
        ("full", "csls", "t2i", 150, 1),
        ("multicaption", "cosine", "i2t", 120, 5),
        ("multicaption", "qbnorm", "i2t", 80, 5),
        ("learned_test", "align", "t2i", 60, 1),
    ):
        n_gallery = 300
        for q in range(n_queries):
            count = int(rng.integers(1, max_relevant + 1))
            # a skewed rank distribution, so that both K <= 40 and beyond are exercised
            pool = np.minimum(rng.geometric(0.03, size=count * 4), n_gallery)
            relevant = np.unique(pool)[:count]
            rows.append({"protocol": protocol, "metric": metric, "direction": direction,
                         "query": q, "relevant_ranks": relevant.astype(np.int32),
                         "n_gallery": n_gallery})  # fmt: skip
    frame = ranks_frame(rows)
    return frame.sample(frac=1.0, random_state=1).reset_index(drop=True)  # order must not matter


def brute_force_curve(frame: pd.DataFrame, k_max: int) -> dict[tuple[str, str, str], np.ndarray]:
    """(recall, hit) per K for each group, one query at a time."""
    out = {}
    for key, rows in frame.groupby(["protocol", "metric", "direction"]):
        recall = np.zeros(k_max)
        hit = np.zeros(k_max)
        for relevant in rows["relevant_ranks"]:
            relevant = np.asarray(relevant)
            for k in range(1, k_max + 1):
                recall[k - 1] += np.mean(relevant <= k)
                hit[k - 1] += float(relevant.min() <= k)
        out[key] = np.stack([recall, hit]) / len(rows)
    return out


@pytest.mark.parametrize("backend", ["numpy", "pyarrow"])
def test_recall_curve_matches_brute_force(tmp_path: Path, backend: str) -> None:
    frame = random_ranks(np.random.default_rng(7))
    path = tmp_path / "ranks.parquet"
    frame.to_parquet(path)
    read = pd.read_parquet(path, **({"dtype_backend": backend} if backend == "pyarrow" else {}))
    assert isinstance(read["relevant_ranks"].dtype, pd.ArrowDtype) == (backend == "pyarrow")
    k_max = 40
    curves = recall_curve(read, k_max=k_max)
    expected = brute_force_curve(frame, k_max)
    assert len(curves) == len(expected) * k_max
    for key, (recall, hit) in expected.items():
        mine = curves[(curves["protocol"] == key[0]) & (curves["metric"] == key[1])
                      & (curves["direction"] == key[2])]  # fmt: skip
        np.testing.assert_array_equal(mine["k"], np.arange(1, k_max + 1))
        np.testing.assert_allclose(mine["recall"], recall, rtol=0, atol=1e-12)
        np.testing.assert_allclose(mine["hit"], hit, rtol=0, atol=1e-12)
    multi = curves[curves["protocol"] == "multicaption"]
    assert (multi["recall"] < multi["hit"]).any()  # several relevant items do differ


def test_list_column_both_layouts() -> None:
    plain = pd.Series([np.array([3, 1], np.int32), [5], np.array([], np.int32)])
    lengths, values = list_column(plain)
    np.testing.assert_array_equal(lengths, [2, 1, 0])
    np.testing.assert_array_equal(values, [3, 1, 5])
    arrow = plain.astype(pd.ArrowDtype(pa.list_(pa.int32())))
    lengths, values = list_column(arrow)
    np.testing.assert_array_equal(lengths, [2, 1, 0])
    np.testing.assert_array_equal(values, [3, 1, 5])


def test_recall_curve_rejects_inconsistent_ranks() -> None:
    good = [{"protocol": "full", "metric": "cosine", "direction": "t2i", "query": q,
             "relevant_ranks": [q + 1]} for q in range(3)]  # fmt: skip
    frame = ranks_frame(good)
    frame.loc[1, "rank"] = 1
    with pytest.raises(ValueError, match=r"row 1 .*query 1.*not the smallest"):
        recall_curve(frame)
    frame = ranks_frame(good)
    frame.at[2, "relevant_ranks"] = [11]
    frame.loc[2, "rank"] = 11
    with pytest.raises(ValueError, match=r"row 2 .*outside 1..n_gallery"):
        recall_curve(frame)
    frame = ranks_frame(good)
    frame.at[0, "relevant_ranks"] = []
    with pytest.raises(ValueError, match=r"row 0 .*relevant_ranks is empty"):
        recall_curve(frame)
    with pytest.raises(ValueError, match="k_max"):
        recall_curve(ranks_frame(good), k_max=0)


# ---------------------------------------------------------------- extreme_queries


def manifest() -> pd.DataFrame:
    # caption_idx deliberately not in order for image b: its first caption is idx 0
    return pd.DataFrame({
        "image_id": ["a", "a", "b", "b", "c"],
        "image_path": ["img/a.jpg", "img/a.jpg", "img/b c.jpg", "img/b c.jpg", "/abs/c.png"],
        "caption": ["a zero", "a one", "b one", "b zero | pipe", "c zero"],
        "caption_idx": np.array([0, 1, 1, 0, 0], np.int32),
        "split": "test",
    })  # fmt: skip


def t2i_ranks() -> pd.DataFrame:
    # query: (image_id, caption_idx, rank)
    queries = [("a", 0, 3), ("a", 1, 7), ("b", 1, 7), ("b", 0, 1), ("c", 0, 1)]
    rows = [{"protocol": "learned_test", "metric": "align", "direction": "t2i", "query": q,
             "image_id": image_id, "caption_idx": idx, "relevant_ranks": [rank],
             "n_gallery": 5} for q, (image_id, idx, rank) in enumerate(queries)]  # fmt: skip
    # another metric's rows must be ignored
    rows += [{**row, "metric": "align_euclidean", "relevant_ranks": [5 - row["query"]]}
             for row in rows]  # fmt: skip
    return ranks_frame(rows)


def test_extreme_queries_t2i_order_and_captions() -> None:
    worst, best = extreme_queries(t2i_ranks(), manifest(), "learned_test", "align", "t2i", n=2)
    assert list(worst.columns) == ["query", "caption", "image_id", "image_path", "rank",
                                   "n_gallery"]  # fmt: skip
    # rank 7 twice: the lower query first
    assert worst["query"].tolist() == [1, 2]
    assert worst["rank"].tolist() == [7, 7]
    assert worst["caption"].tolist() == ["a one", "b one"]
    assert worst["image_path"].tolist() == ["img/a.jpg", "img/b c.jpg"]
    # rank 1 twice: queries 3 and 4
    assert best["query"].tolist() == [3, 4]
    assert best["caption"].tolist() == ["b zero | pipe", "c zero"]
    assert best["image_id"].tolist() == ["b", "c"]
    assert (best["n_gallery"] == 5).all()
    worst, best = extreme_queries(t2i_ranks(), manifest(), "learned_test", "align", n=10)
    assert worst["query"].tolist() == [1, 2, 0, 3, 4]
    assert best["query"].tolist() == [3, 4, 0, 1, 2]


def test_extreme_queries_i2t_first_caption() -> None:
    rows = [{"protocol": "full", "metric": "cosine", "direction": "i2t", "query": q,
             "image_id": image_id, "relevant_ranks": relevant, "n_gallery": 5}
            for q, (image_id, relevant) in enumerate(
                [("a", [2, 4]), ("b", [1, 5]), ("c", [3])])]  # fmt: skip
    worst, best = extreme_queries(ranks_frame(rows), manifest(), "full", "cosine", "i2t", n=1)
    assert worst[["query", "image_id", "rank", "caption"]].values.tolist() == [
        [2, "c", 3, "c zero"]
    ]
    # image b's first caption is caption_idx 0, listed second in the manifest
    assert best[["query", "image_id", "rank", "caption"]].values.tolist() == [
        [1, "b", 1, "b zero | pipe"]
    ]


def test_extreme_queries_errors() -> None:
    with pytest.raises(ValueError, match=r"no rows for protocol 'full'.*present"):
        extreme_queries(t2i_ranks(), manifest(), "full", "align")
    doubled = pd.concat([t2i_ranks(), t2i_ranks().assign(encoder="other")])
    with pytest.raises(ValueError, match="several rows"):
        extreme_queries(doubled, manifest(), "learned_test", "align")
    with pytest.raises(ValueError, match=r"no caption or image_path for \{'image_id': 'a'"):
        extreme_queries(t2i_ranks(), manifest().iloc[2:], "learned_test", "align")


def test_queries_markdown() -> None:
    _, best = extreme_queries(t2i_ranks(), manifest(), "learned_test", "align", n=2)
    text = queries_markdown(best, image_prefix="..")
    lines = text.splitlines()
    assert lines[0] == "| rank | caption | true image |"
    assert lines[2] == "| 1 / 5 | b zero \\| pipe | ![b](../img/b%20c.jpg) |"
    assert lines[3] == "| 1 / 5 | c zero | ![c](/abs/c.png) |"
    assert len(lines) == 4
    plain = queries_markdown(best).splitlines()
    assert plain[2] == "| 1 / 5 | b zero \\| pipe | b |"


# ---------------------------------------------------------------- the figure


def test_space_label() -> None:
    assert space_label("learned_test", "align") == "aligned cosine"
    assert space_label("learned_test", "align_euclidean") == "aligned euclidean"
    assert space_label("learned_test", "cosine") == "raw cosine"
    assert space_label("full", "centered_cosine") == "raw centered cosine"


def test_plot_recall_curves(tmp_path: Path) -> None:
    rows = []
    for metric, directions in (("align", ("t2i", "i2t")), ("align_euclidean", ("t2i", "i2t")),
                               ("cosine", ("t2i", "i2t")), ("mlp_mse", ("t2i",))):  # fmt: skip
        for direction in directions:
            rows += [{"protocol": "learned_test", "metric": metric, "direction": direction,
                      "query": q, "relevant_ranks": [r], "n_gallery": 200}
                     for q, r in enumerate((1, 2, 30, 150))]  # fmt: skip
    curves = recall_curve(ranks_frame(rows), k_max=100)
    fig = recall_curve_figure(curves, "toy / enc")
    labels = line_labels(fig)
    assert sorted(labels[0]) == ["MLP (MSE)", "aligned cosine", "aligned euclidean", "raw cosine"]
    assert sorted(labels[1]) == ["aligned cosine", "aligned euclidean", "raw cosine"]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlim() == (1, 100)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "5", "10", "20", "50", "100"]
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata()[[0, 1, 29, 99]], [25, 50, 75, 75])

    paths = plot_recall_curves(curves, tmp_path / "recall_at_k", "toy / enc")
    assert [p.name for p in paths] == ["recall_at_k.png", "recall_at_k.pdf"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"
    assert all(p.stat().st_size > 1000 for p in paths)


def test_recall_figure_names_protocols_and_empty_direction() -> None:
    rows = [{"protocol": protocol, "metric": "cosine", "direction": "t2i", "query": q,
             "relevant_ranks": [q + 1]} for protocol in ("full", "learned_test")
            for q in range(3)]  # fmt: skip
    fig = recall_curve_figure(recall_curve(ranks_frame(rows), k_max=10), measure="hit")
    assert line_labels(fig) == [["raw cosine (full)", "raw cosine (learned_test)"], []]
    assert "no image → text queries" in [t.get_text() for t in fig.axes[1].texts]


def test_recall_curve_groups_by_further_labels() -> None:
    # the gap shift's rows carry space and lambda; rows without them hold NaN
    rows = [{"protocol": "full", "metric": "cosine", "direction": "t2i", "query": q,
             "space": space, "lambda": lam, "relevant_ranks": [rank]}
            for space, lam, ranks in (("raw", 0.0, (1, 4)), ("raw", 1.0, (2, 2)),
                                      (None, np.nan, (1, 1)))
            for q, rank in enumerate(ranks)]  # fmt: skip
    curves = recall_curve(ranks_frame(rows), k_max=2)
    assert list(curves.columns[:4]) == ["dataset", "encoder", "space", "lambda"]
    by_lambda = curves.groupby("lambda", dropna=False)["hit"].apply(list).to_dict()
    assert by_lambda[0.0] == [0.5, 0.5]
    assert by_lambda[1.0] == [0.0, 1.0]
    assert [v for k, v in by_lambda.items() if pd.isna(k)] == [[1.0, 1.0]]


@pytest.mark.parametrize("backend", ["numpy", "pyarrow"])
def test_group_ids_equal_pandas_groupby(backend: str) -> None:
    rng = np.random.default_rng(3)
    n = 2000
    # runs of equal rows (as ranks.parquet stores them) and scattered rows, NaN and None
    frame = pd.DataFrame({
        "metric": np.repeat(rng.choice(["cosine", "csls", "align"], size=n // 50), 50),
        "space": rng.choice(["raw", None], size=n),
        "lambda": np.where(np.arange(n) < n // 2, np.nan, rng.choice([0.0, 0.5, 1.0], size=n)),
        "direction": np.repeat(["t2i", "i2t"], n // 2),
        "tag": pd.Series(np.repeat(["x", "y", None, "x"], n // 4), dtype=object),
    })  # fmt: skip
    assert frame["tag"].dtype == object
    if backend == "pyarrow":
        frame = pa.Table.from_pandas(frame).to_pandas(types_mapper=pd.ArrowDtype)
    keys = list(frame.columns)
    group, labels = group_ids(frame, keys)
    grouped = frame.groupby(keys, sort=True, dropna=False)
    np.testing.assert_array_equal(group, grouped.ngroup().to_numpy())
    expected = grouped.size().index.to_frame(index=False)
    pd.testing.assert_frame_equal(labels, expected)
