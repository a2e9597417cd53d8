"""Per-query ranks, hubness, intervals that cover, and paired comparisons, against
NumPy/SciPy/statsmodels references and simulations with a known truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy.spatial.distance import cdist
from scipy.stats import chi2_contingency, skew
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from mmalign.retrieval import (
    HUB_K,
    QueryRanks,
    RetrievalOptions,
    bootstrap,
    build_protocol,
    hubness_rows,
    query_bank,
    ranks_table,
    score_protocol,
    skewness,
    write_ranks,
)
from mmalign.stats import chi2_paper, paired_comparisons
from tests.test_retrieval import embeddings


def scored(emb, protocol: str, opts: RetrievalOptions) -> tuple[pd.DataFrame, list[QueryRanks]]:
    sink: list[QueryRanks] = []
    return score_protocol(emb, protocol, opts, "d", "e", sink), sink


def measures_from_lists(relevant_ranks: list[np.ndarray], k: int) -> dict[str, float]:
    """Every measure straight from its definition, query by query."""
    out: dict[str, list[float]] = {m: [] for m in ("hit", "precision", "recall", "mrr", "ndcg",
                                                    "first")}  # fmt: skip
    for ranks in relevant_ranks:
        ranks = np.sort(np.asarray(ranks))
        found = int((ranks <= k).sum())
        out["hit"].append(float(ranks[0] <= k))
        out["precision"].append(found / k)
        out["recall"].append(found / len(ranks))
        out["mrr"].append(1.0 / ranks[0])
        dcg = sum(1 / np.log2(r + 1) for r in ranks if r <= 10)
        out["ndcg"].append(dcg / sum(1 / np.log2(i + 2) for i in range(min(len(ranks), 10))))
        out["first"].append(float(ranks[0]))
    return {
        **{m: float(np.mean(v)) for m, v in out.items() if m != "first"},
        "median_rank": float(np.median(out["first"])),
        "mean_rank": float(np.mean(out["first"])),
    }


@pytest.mark.parametrize("protocol", ["subset", "multicaption"])
def test_every_retrieval_value_is_recomputable_from_ranks(protocol: str, tmp_path) -> None:
    emb = embeddings(40, captions=5, noise=2.0)
    opts = RetrievalOptions(bootstrap=200, subset_size=30, metrics=("cosine", "manhattan"))
    frame, sink = scored(emb, protocol, opts)
    write_ranks(ranks_table(sink, emb.texts, emb.images), tmp_path / "ranks.parquet")
    ranks = pd.read_parquet(tmp_path / "ranks.parquet")
    table = pa.parquet.read_table(tmp_path / "ranks.parquet")
    for name in ("query", "query_row", "caption_idx", "rank", "n_gallery"):
        assert table.schema.field(name).type == pa.int32(), name
    assert table.schema.field("relevant_ranks").type == pa.list_(pa.int32())
    checked = 0
    for (direction, metric), rows in ranks.groupby(["direction", "metric"]):
        got = frame[(frame["direction"] == direction) & (frame["metric"] == metric)]
        assert (got["n_queries"] == len(rows)).all()
        assert (rows["rank"] == [min(r) for r in rows["relevant_ranks"]]).all()
        for k in opts.ks:
            expected = measures_from_lists(list(rows["relevant_ranks"]), k)
            for measure in ("hit", "precision", "recall"):
                value = got[(got["measure"] == measure) & (got["k"] == k)]["value"].item()
                assert value == pytest.approx(expected[measure]), (direction, metric, measure, k)
                checked += 1
        expected = measures_from_lists(list(rows["relevant_ranks"]), 10)
        for measure in ("mrr", "median_rank", "mean_rank"):
            assert got[got["measure"] == measure]["value"].item() == pytest.approx(
                expected[measure]
            )
        assert got[got["measure"] == "ndcg"]["value"].item() == pytest.approx(expected["ndcg"])
        # The intervals too: the file holds the clusters (images) they resample.
        hit1 = {"hit@1": (rows["rank"].to_numpy() <= 1).astype(float)}
        clusters = rows["image_id"].to_numpy() if protocol == "multicaption" else None
        _, low, high = bootstrap(hit1, opts.bootstrap, opts.seed, clusters)["hit@1"]
        row = got[(got["measure"] == "hit") & (got["k"] == 1)]
        assert (row["ci_low"].item(), row["ci_high"].item()) == pytest.approx((low, high))
    assert checked == 2 * 2 * 3 * 3
    # Ids: text queries name their caption, image queries their image; relevant rows
    # point into the other modality's matrix.
    t2i = ranks[ranks["direction"] == "t2i"]
    texts = emb.texts.iloc[t2i["query_row"]]
    assert (t2i["image_id"].to_numpy() == texts["image_id"].to_numpy()).all()
    assert (t2i["caption_idx"].to_numpy() == texts["caption_idx"].to_numpy()).all()
    assert ([r[0] for r in t2i["relevant_rows"]] == texts["image_row"].to_numpy()).all()
    i2t = ranks[ranks["direction"] == "i2t"]
    assert (i2t["caption_idx"] == -1).all()
    if protocol == "multicaption":
        assert (i2t["relevant_rows"].map(len) == 5).all()


def test_coco_scale_ranks_stay_compact(tmp_path) -> None:
    """5 x 118k captions, 7 metrics, 2 directions: how big ranks.parquet gets.
    Measured: see the README; the test checks the in-memory size bound."""
    n_images, captions, metrics = 118_000, 5, 7
    rng = np.random.default_rng(0)
    texts = pd.DataFrame({"image_id": np.repeat([f"{i:012d}" for i in range(n_images)], captions),
                          "caption_idx": np.tile(np.arange(captions), n_images)})  # fmt: skip
    images = pd.DataFrame({"image_id": [f"{i:012d}" for i in range(n_images)]})
    n_t = n_images * captions
    t2i = QueryRanks({"dataset": "coco", "encoder": "e", "protocol": "multicaption",
                      "direction": "t2i", "metric": "cosine"}, np.arange(n_t), np.arange(n_images),
                     np.arange(n_t + 1), np.repeat(np.arange(n_images), captions),
                     rng.integers(1, n_images, n_t))  # fmt: skip
    table = ranks_table([t2i], texts, images)
    # One metric and direction of text queries; the image side is 5x smaller.
    per_metric = table.nbytes * (1 + 1 / captions * 2)
    assert per_metric * metrics < 1 * 2**30
    write_ranks(table, tmp_path / "r.parquet")
    assert (tmp_path / "r.parquet").stat().st_size * metrics * 2 < 2**30


def test_hubness_counts_every_query_top10_and_its_skewness_is_scipys() -> None:
    emb = embeddings(60, captions=1, noise=3.0)
    _, sink = scored(emb, "full", RetrievalOptions(bootstrap=0, metrics=("cosine", "euclidean")))
    hub = hubness_rows(sink).set_index(["direction", "metric"])
    for item in sink:
        direction, metric = item.label["direction"], item.label["metric"]
        q = (emb.text if direction == "t2i" else emb.image)[item.query_rows].astype(np.float64)
        g = (emb.image if direction == "t2i" else emb.text)[item.gallery_rows].astype(np.float64)
        scores = -cdist(q, g, "cosine" if metric == "cosine" else "euclidean")
        top = np.argsort(-scores, axis=1, kind="stable")[:, :HUB_K]
        counts = np.bincount(top.ravel(), minlength=len(g))
        assert (item.occurrence == counts).all()
        assert counts.sum() == HUB_K * len(q)
        row = hub.loc[(direction, metric)]
        assert row["skewness"] == pytest.approx(skew(counts))
        assert row["never_in_top_k"] == pytest.approx(np.mean(counts == 0))
        assert row["max_occurrence"] == counts.max()
    assert skewness(np.ones(5)) == 0.0


def coverage(draw, truth: float, n_datasets: int, clusters=None, n_boot: int = 400) -> float:
    rng = np.random.default_rng(1)
    covered = 0
    for i in range(n_datasets):
        values = draw(rng)
        _, low, high = bootstrap({"hit@1": values}, n_boot, i, clusters)["hit@1"]
        covered += low <= truth <= high
    return covered / n_datasets


def test_query_bootstrap_covers_the_true_hit_rate() -> None:
    # 200 datasets of 200 independent queries whose true hit@1 is 0.3.
    found = coverage(lambda rng: (rng.random(200) < 0.3).astype(float), 0.3, 200)
    assert found >= 0.90


def test_cluster_bootstrap_covers_where_the_query_bootstrap_does_not() -> None:
    """40 images x 5 captions; an image is easy or hard for all its captions
    (per-image hit probability Beta(0.6, 1.4), mean 0.3 = the truth)."""
    images = np.repeat(np.arange(40), 5)

    def draw(rng: np.random.Generator) -> np.ndarray:
        p = rng.beta(0.6, 1.4, 40)[images]
        return (rng.random(200) < p).astype(float)

    clustered = coverage(draw, 0.3, 200, clusters=images)
    naive = coverage(draw, 0.3, 200)
    assert clustered >= 0.90
    assert naive < clustered - 0.1  # measured: 0.835 against 0.955 (the query bootstrap: 0.97)


def test_single_query_clusters_are_the_query_bootstrap() -> None:
    values = {"hit@1": (np.arange(50) % 3 == 0).astype(float)}
    assert bootstrap(values, 100, 3) == bootstrap(values, 100, 3, np.arange(50))


def test_query_bank_leaves_out_every_caption_of_the_evaluated_images() -> None:
    emb = embeddings(60, captions=5)
    opts = RetrievalOptions(subset_size=10, querybank_size=10_000)
    protocol = build_protocol(emb, "subset", opts)
    bank = query_bank(emb, protocol, "t2i", opts)
    train = emb.texts["split"].to_numpy() == "train"
    kept = train & ~np.isin(emb.texts["image_row"].to_numpy(), protocol.image_rows)
    assert len(bank) == kept.sum() < train.sum()
    assert np.array_equal(bank, emb.text[kept])


def ranks_frame(ranks: dict[str, np.ndarray], images: np.ndarray, **label) -> pd.DataFrame:
    rows = []
    for metric, values in ranks.items():
        rows.append(pd.DataFrame({
            "dataset": "d", "encoder": "e", "protocol": "subset", "direction": "t2i",
            "metric": metric, "query": np.arange(len(values)), "image_id": images,
            "caption_idx": 0, "rank": values, **label,
        }))  # fmt: skip
    return pd.concat(rows, ignore_index=True)


def test_paired_comparisons_against_statsmodels_and_hand_counts() -> None:
    rng = np.random.default_rng(0)
    n = 300
    a = rng.integers(1, 6, n)
    b = np.where(rng.random(n) < 0.3, 1, a)  # b fixes some of a's misses
    c = rng.integers(1, 40, n)
    images = np.array([f"im{i}" for i in range(n)])
    frame = paired_comparisons(ranks_frame({"a": a, "b": b, "c": c}, images), ks=(1,),
                               n_boot=500, seed=0)  # fmt: skip
    metrics = frame[frame["family"] == "metrics"].set_index(["a", "b", "measure"])
    assert sorted(metrics.index.get_level_values(0).unique()) == ["a", "b"]
    row = metrics.loc[("a", "b", "hit")]
    hit_a, hit_b = a <= 1, b <= 1
    assert row["n01"] == int((~hit_a & hit_b).sum()) and row["n10"] == int((hit_a & ~hit_b).sum())
    table = [[int((hit_a & hit_b).sum()), row["n10"]], [row["n01"], int((~hit_a & ~hit_b).sum())]]
    assert row["p_value"] == pytest.approx(sm_mcnemar(table, exact=False, correction=True).pvalue)
    assert row["diff"] == pytest.approx(hit_b.mean() - hit_a.mean())
    assert row["diff_low"] < row["diff"] < row["diff_high"]
    mrr = metrics.loc[("a", "b", "mrr")]
    assert mrr["diff"] == pytest.approx(np.mean(1 / b) - np.mean(1 / a))
    assert np.isnan(mrr["p_value"])
    # Holm over the three metric pairs of the family, by hand.
    hits = metrics.xs("hit", level="measure")
    p = np.sort(hits["p_value"].to_numpy())
    expected = np.minimum(1, np.maximum.accumulate(p * np.array([3, 2, 1])))
    assert np.sort(hits["p_holm"].to_numpy()) == pytest.approx(expected)
    table = [[hit_a.sum(), n - hit_a.sum()], [hit_b.sum(), n - hit_b.sum()]]
    assert row["p_chi2_paper"] == pytest.approx(chi2_contingency(table, correction=False).pvalue)


def test_encoders_are_paired_by_query_id_and_captions_by_image() -> None:
    images = np.repeat([f"im{i}" for i in range(30)], 5)
    rng = np.random.default_rng(2)
    one = ranks_frame({"cosine": rng.integers(1, 4, 150)}, images)
    two = ranks_frame({"cosine": rng.integers(1, 4, 150)}, images).assign(encoder="f")
    one["caption_idx"] = two["caption_idx"] = np.tile(np.arange(5), 30)
    shuffled = two.sample(frac=1, random_state=0)  # row order must not matter
    frame = paired_comparisons(pd.concat([one, shuffled]), ks=(1,), n_boot=200)
    row = frame[(frame["family"] == "encoders") & (frame["measure"] == "hit")].iloc[0]
    assert (row["a"], row["b"], row["n_queries"], row["n_clusters"]) == ("e", "f", 150, 30)
    assert row["test"] == "clustered (Durkalski)"
    d = (two["rank"].to_numpy() <= 1).astype(int) - (one["rank"].to_numpy() <= 1).astype(int)
    per_image = d.reshape(30, 5).sum(1)
    assert row["statistic"] == pytest.approx(per_image.sum() ** 2 / (per_image**2).sum())


def test_chi2_paper_is_the_uncorrected_two_proportion_test() -> None:
    p = chi2_contingency([[500, 500], [480, 520]], correction=False).pvalue
    assert chi2_paper(500, 480, 1000, 1000)[1] == pytest.approx(p)
    assert chi2_paper(0, 0, 10, 10) == (0.0, 1.0)
