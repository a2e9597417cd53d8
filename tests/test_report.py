"""The paper's tables and report.md, from score files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mmalign import layout
from mmalign.report import build_report, markdown_table, percent, unit_figure_order
from mmalign.stats import paired_comparisons


def results() -> pd.DataFrame:
    rows = []
    for encoder, values in (
        ("clip", {"cosine": 0.84, "euclidean": 0.46}),
        ("pair", {"cosine": np.nan, "euclidean": np.nan}),
    ):
        for metric, value in values.items():
            for direction in ("t2i", "i2t"):
                for k in (1, 5, 10):
                    for protocol, n in (("subset", 1000), ("full", 4000)):
                        rows.append(
                            {
                                "dataset": "imdb",
                                "encoder": encoder,
                                "protocol": protocol,
                                "direction": direction,
                                "metric": metric,
                                "k": k,
                                "measure": "hit",
                                "value": value,
                                "ci_low": value - 0.02,
                                "ci_high": value + 0.02,
                                "n_queries": n,
                                "note": "n/a: image 1280-d vs text 384-d"
                                if np.isnan(value)
                                else "",
                            }
                        )
    for metric in ("mlp_contrastive", "mlp_down"):  # the MLPs: scored on the test split only
        for direction in ("t2i", "i2t"):
            for k in (1, 5, 10):
                rows.append(
                    {
                        "dataset": "imdb",
                        "encoder": "clip",
                        "protocol": "learned_test",
                        "direction": direction,
                        "metric": metric,
                        "k": k,
                        "measure": "hit",
                        "value": 0.0025 * k,
                        "ci_low": 0.0,
                        "ci_high": 0.005 * k,
                        "n_queries": 400,
                        "note": "",
                    }
                )
    frame = pd.DataFrame(rows)
    frame["k"] = frame["k"].astype("Int64")
    return frame


def test_percent_and_markdown() -> None:
    assert percent(0.844, 0.82, 0.87) == "84.4 [82.0, 87.0]"
    assert percent(np.nan) == "n/a"
    table = pd.DataFrame({"a": ["1", "2"]}, index=pd.Index(["x", "y"], name="row"))
    bold = pd.DataFrame({"a": [False, True]}, index=table.index)
    assert markdown_table(table, bold) == "| row | a |\n|---|---|\n| x | 1 |\n| y | **2** |\n"


def test_report_tables_and_markdown(tmp_path: Path) -> None:
    figure = tmp_path / "figures" / "tsne_grid.png"
    figure.parent.mkdir()
    figure.write_bytes(b"png")
    geometry = {
        ("imdb", "clip"): {
            "w2_mean": 60.74,
            "w2_std": 0.5,
            "w2_gaussian": 58.0,
            "w2_squared_mean": 3689.6,
            "w2_squared_std": 60.7,
            "w2_gaussian_squared": 3364.0,
            "modality_gap": 0.82,
        },
        ("imdb", "pair"): {
            "w2_mean": None,
            "w2_std": None,
            "w2_gaussian": None,
            "modality_gap": None,
        },
    }
    # Two encoders on the same 1,000 queries: clip hits 840, pair 1 (ranks by hand).
    ranks = pd.concat([
        pd.DataFrame({"dataset": "imdb", "encoder": encoder, "protocol": "subset",
                      "direction": "t2i", "metric": "cosine", "query": np.arange(1000),
                      "image_id": [f"im{i}" for i in range(1000)], "caption_idx": 0,
                      "rank": np.where(np.arange(1000) < hits, 1, 50)})
        for encoder, hits in (("clip", 840), ("pair", 1))
    ])  # fmt: skip
    paired = paired_comparisons(ranks, ks=(1,), n_boot=100)
    build_report(
        results(),
        geometry,
        paired,
        tmp_path / "tables",
        tmp_path / "report.md",
        {"Figures": [str(figure)]},
    )
    tables = tmp_path / "tables"
    for name in (
        "table2_geometry",
        "table3_t2i_hit",
        "table4_i2t_hit",
        "table6_mlp_down",
        "significance",
        "beyond_full_vs_subset",
    ):
        assert (tables / f"{name}.csv").exists() and (tables / f"{name}.md").exists(), name
    t3 = (tables / "table3_t2i_hit.md").read_text()
    assert "**84.0 [82.0, 86.0]**" in t3  # cosine beats Euclidean for CLIP: bold
    assert "| imdb | euclidean | 46.0 [44.0, 48.0] |" in t3
    assert "n/a" in t3  # the mismatched pair
    assert "| imdb | mlp_contrastive | 0.2 [0.0, 0.5] |" in t3  # from the test split
    numbers = pd.read_csv(tables / "table3_t2i_hit.csv")
    assert list(numbers["metric"]) == ["cosine", "euclidean", "mlp_contrastive", "mlp_down"]
    t2 = (tables / "table2_geometry.md").read_text()
    assert "60.74 ± 0.50" in t2 and "| imdb | pair | n/a | n/a | n/a | n/a | n/a |" in t2
    assert "| 3689.60 ± 60.70 | 3364.00 |" in t2
    report = (tmp_path / "report.md").read_text()
    assert "## Table 3: text-to-image hit@K" in report and "## Table 2" in report
    assert "seeded subset (1,000 pairs)" in report and "test split (400 pairs)" in report
    assert "![tsne_grid](figures/tsne_grid.png)" in report
    significance = (tables / "significance.md").read_text()
    # b - a = 0.1% - 84.0%; 839 discordant queries, all one way: McNemar chi2 cc.
    assert "| imdb | subset | cosine | t2i | 1 | clip | pair | 84.0 | 0.1 | -83.9 [" in significance
    assert "(chi2 cc)" in significance and "paired tests between encoders" in report


def test_beyond_sections_alignment_and_gap_shift(tmp_path: Path) -> None:
    measures = {
        name: {"value": v, "ci_low": v - 0.01, "ci_high": v + 0.01, "chance_mean": 0.01}
        for name, v in (("cka", 0.42), ("mutual_knn", 0.2), ("cknna", 0.1))
    }
    alignment = {("imdb", "clip"): {"spaces": {"raw": {"n_items": 1000, **measures}}}}
    rows = []
    for lam, gap, hit in ((0.0, 2.0, 0.30), (1.0, 0.0, 0.60)):
        for direction in ("t2i", "i2t"):
            rows.append({"dataset": "imdb", "encoder": "clip", "space": "raw",
                         "lambda": lam, "gap": gap,
                         "direction": direction, "measure": "hit", "k": 1, "value": hit,
                         "ci_low": hit - 0.05, "ci_high": hit + 0.05, "note": ""})  # fmt: skip
        for measure, v in (("matching_cosine", 0.3 + lam / 2), ("non_matching_cosine", 0.1)):
            rows.append({"dataset": "imdb", "encoder": "clip", "space": "raw",
                         "lambda": lam, "gap": gap,
                         "direction": "pairs", "measure": measure, "k": pd.NA, "value": v,
                         "ci_low": np.nan, "ci_high": np.nan, "note": ""})  # fmt: skip
    gap_shift = pd.DataFrame(rows).astype({"k": "Int64"})
    # The same 100 queries at both gaps: 30 hits, then 60 (30 more, none lost).
    ranks = pd.concat([
        pd.DataFrame({"dataset": "imdb", "encoder": "clip", "protocol": "subset", "space": "raw",
                      "lambda": lam, "direction": direction, "metric": "cosine",
                      "query": np.arange(100), "image_id": [f"im{i}" for i in range(100)],
                      "caption_idx": 0, "rank": np.where(np.arange(100) < hits, 1, 7)})
        for lam, hits in ((0.0, 30), (1.0, 60)) for direction in ("t2i", "i2t")
    ])  # fmt: skip
    paired = paired_comparisons(ranks.iloc[:0], gap_shift=ranks, ks=(1,), n_boot=200)
    build_report(results(), {}, paired, tmp_path / "tables", tmp_path / "report.md", {},
                 alignment=alignment, gap_shift=gap_shift)  # fmt: skip
    table = (tmp_path / "tables" / "beyond_alignment_measures.md").read_text()
    assert "| imdb | clip | raw | 1000 | 0.420 [0.410, 0.430] (chance 0.010) |" in table
    shift = (tmp_path / "tables" / "beyond_gap_shift.md").read_text()
    assert shift.startswith(
        "| dataset | encoder | space | lambda | gap | i2t / hit@1 | pairs / matching_cosine | "
        "pairs / non_matching_cosine | t2i / hit@1 |"
    )
    assert "| imdb | clip | raw | 1.0 | 0.000 | 60.0 [55.0, 65.0] | 0.800 | 0.100 | 60.0" in shift
    report = (tmp_path / "report.md").read_text()
    closed = "t2i hit@1 30.0% at the original gap, 60.0% with the gap closed (Δ hit@1 = +30.0"
    assert closed in report
    # 30 discordant queries, all one way: chi2 cc = 29^2 / 30 = 28.0, p = 1.2e-07.
    assert "McNemar (chi2 cc) p = 1.2e-07" in report
    assert "So closing the gap raises hit@1 (paired, Holm p < 0.05)." in report


def test_aligned_space_and_ablation_verdicts_are_paired_differences() -> None:
    from mmalign.report import ablation_verdict, aligned_space_verdict, hubness_table

    n = 200
    first = np.arange(n)

    def frame(metric: str, hits: int, **label: str) -> pd.DataFrame:
        return pd.DataFrame({"dataset": "d", "encoder": "e", "protocol": "learned_test",
                             "direction": "t2i", "metric": metric, "query": first,
                             "image_id": [f"im{i}" for i in first], "caption_idx": 0,
                             "rank": np.where(first < hits, 1, 9), **label})  # fmt: skip

    # align hits the first 60 queries, Euclidean the first 20, the best MLP 2 and the other 1.
    ranks = pd.concat([frame("align", 60), frame("align_euclidean", 20),
                       frame("mlp_contrastive", 2), frame("mlp_down", 1)])  # fmt: skip
    ablation = pd.concat([frame("mlp_ablation:paper", 1), frame("mlp_ablation:balanced", 30)])
    paired = paired_comparisons(ranks, ablation=ablation, ks=(1,), n_boot=200)
    text = aligned_space_verdict(paired)
    assert "- d / e, t2i: cosine vs euclidean: Δ hit@1 = +20.0 [" in text
    assert "(higher)" in text and "align vs the best MLP (mlp_contrastive, 1.0%): " in text
    assert "Δ hit@1 = +29.0 [" in text
    rows = pd.DataFrame([
        {"dataset": "d", "encoder": "e", "protocol": "learned_test", "direction": direction,
         "metric": metric, "k": 1, "measure": "hit", "value": value, "n_queries": n}
        for metric, value in (("mlp_ablation:paper", 0.005), ("mlp_ablation:balanced", 0.15))
        for direction in ("t2i", "i2t")
    ])  # fmt: skip
    verdict = ablation_verdict(rows, paired)
    # Only t2i was paired here, so balanced does not win in *both* directions.
    assert "No variant beats the paper's recipe in both directions" in verdict
    assert "  - balanced: t2i Δ hit@1 = +14.5 [" in verdict
    hubness = pd.DataFrame({"dataset": "d", "encoder": "e", "protocol": "subset",
                            "direction": ["t2i", "i2t"], "metric": "cosine", "k": 10,
                            "skewness": [1.5, 0.25], "never_in_top_k": [0.3, 0.1]})  # fmt: skip
    _, shown = hubness_table(hubness)
    assert shown.loc[("d", "e", "subset", "cosine"), "t2i N10 skewness"] == "1.50"
    assert shown.loc[("d", "e", "subset", "cosine"), "i2t never in a top 10"] == "10.0%"


def test_aligned_figures_sit_beside_their_raw_counterparts_per_unit() -> None:
    names = [*layout.GEOMETRY_FIGURES, *layout.ALIGNED_FIGURES.values(), "gap_shift"]
    paths = [
        layout.path("figure", dataset="d", encoder=e, name=n, ext="png")
        for n in names
        for e in ("b", "a")
    ]
    ordered = [(layout.wildcards("figure", p)["encoder"], layout.wildcards("figure", p)["name"])
               for p in unit_figure_order(paths)]  # fmt: skip
    assert [n for e, n in ordered if e == "a"] == [
        "cosine_matrix", "aligned_cosine_matrix", "gap_shift", "retrieval_i2t",
        "aligned_retrieval_i2t", "retrieval_t2i", "aligned_retrieval_t2i", "tsne", "aligned_tsne",
    ]  # fmt: skip
    assert [e for e, _ in ordered] == ["a"] * len(names) + ["b"] * len(names)
