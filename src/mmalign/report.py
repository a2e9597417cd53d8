"""The paper's tables, and the report that embeds them with the figures.

Every table is built from the score files only (``retrieval.parquet``,
``geometry.json``, ``significance.parquet``) and written as CSV (numbers) and
Markdown (what a reader sees: percentages with their bootstrap 95% interval,
the best cell of each column in bold).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mmalign.io import atomic_path, write_csv
from mmalign.metrics import CALIBRATED_METRICS, FIXED_METRICS

LEARNED_METRICS = ("mlp_mse", "mlp_contrastive", "mlp_down")


def percent(value: float, low: float = math.nan, high: float = math.nan) -> str:
    """``0.844, 0.82, 0.87`` -> ``"84.4 [82.0, 87.0]"``; NaN -> ``"n/a"``."""
    if value is None or pd.isna(value):
        return "n/a"
    text = f"{100 * value:.1f}"
    if not (pd.isna(low) or pd.isna(high)):
        text += f" [{100 * low:.1f}, {100 * high:.1f}]"
    return text


def interval_cells(rows: pd.DataFrame) -> list[str]:
    """:func:`percent` of each row's ``value`` with its ``ci_low``, ``ci_high``."""
    return [
        percent(v, lo, hi)
        for v, lo, hi in zip(rows["value"], rows["ci_low"], rows["ci_high"], strict=True)
    ]


def markdown_table(frame: pd.DataFrame, bold: pd.DataFrame | None = None) -> str:
    """A GitHub Markdown table of ``frame`` (index included); ``bold`` marks cells."""
    index_names = [str(n) if n else "" for n in frame.index.names]
    columns = [" / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in frame.columns]
    lines = ["| " + " | ".join(index_names + columns) + " |"]
    lines.append("|" + "---|" * (len(index_names) + len(columns)))
    for position, (key, row) in enumerate(frame.iterrows()):
        keys = list(key) if isinstance(key, tuple) else [key]
        cells = []
        for j, value in enumerate(row):
            text = str(value)
            if bold is not None and bool(bold.iloc[position, j]):
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join([str(k) for k in keys] + cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(
    name: str,
    numbers: pd.DataFrame,
    shown: pd.DataFrame,
    out_dir: Path,
    bold: pd.DataFrame | None = None,
) -> str:
    """Write ``{name}.csv`` (numbers) and ``{name}.md`` (shown); return the Markdown."""
    flat = numbers.copy()
    flat.columns = [
        " / ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in flat.columns
    ]
    write_csv(flat.reset_index(), out_dir / f"{name}.csv")
    text = markdown_table(shown, bold)
    with atomic_path(out_dir / f"{name}.md") as tmp:
        tmp.write_text(text)
    return text


def hit_table(
    results: pd.DataFrame, direction: str, metrics_by_protocol: Mapping[str, Iterable[str]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Tables 3-4: hit@K per (dataset, metric) x (encoder, K), best per column in bold.

    ``metrics_by_protocol`` says which protocol each metric's rows come from:
    the fixed metrics are scored on the seeded subset, the paper's MLPs on the
    test split they were not trained on.
    """
    chosen = pd.Series(False, index=results.index)
    for protocol, metrics in metrics_by_protocol.items():
        chosen |= (results["protocol"] == protocol) & results["metric"].isin(list(metrics))
    rows = results[chosen & (results["measure"] == "hit") & (results["direction"] == direction)]
    if rows.empty:
        return pd.DataFrame(), pd.DataFrame(), pd.DataFrame()
    numbers = rows.pivot_table(
        index=["dataset", "metric"], columns=["encoder", "k"], values="value", dropna=False
    )
    shown = rows.assign(cell=interval_cells(rows))
    shown = shown.pivot_table(
        index=["dataset", "metric"], columns=["encoder", "k"], values="cell", aggfunc="first"
    )
    shown = shown.reindex(index=numbers.index, columns=numbers.columns)
    best = numbers.eq(numbers.groupby(level="dataset").transform("max")) & numbers.notna()
    return numbers, shown.fillna("n/a"), best


def geometry_table(
    geometry: dict[tuple[str, str], dict[str, Any]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 2: Wasserstein-2 (mean +- std over batches) and the centroid gap."""
    records = []
    for (dataset, encoder), g in sorted(geometry.items()):
        records.append(
            {
                "dataset": dataset,
                "encoder": encoder,
                "w2_mean": g.get("w2_mean"),
                "w2_std": g.get("w2_std"),
                "w2_gaussian": g.get("w2_gaussian"),
                "modality_gap": g.get("modality_gap"),
            }
        )
    numbers = pd.DataFrame(records).set_index(["dataset", "encoder"])

    def fmt(value: Any, spread: Any = None) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{value:.2f}" + (f" ± {spread:.2f}" if spread is not None else "")

    shown = pd.DataFrame(
        {
            "W2 (exact, mean ± std)": [
                fmt(a, b) for a, b in zip(numbers["w2_mean"], numbers["w2_std"], strict=True)
            ],
            "W2 (Gaussian)": [fmt(v) for v in numbers["w2_gaussian"]],
            "modality gap": [fmt(v) for v in numbers["modality_gap"]],
        },
        index=numbers.index,
    )
    return numbers, shown


def precision_table(
    results: pd.DataFrame, protocol: str, metrics: Iterable[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 5 / 6 style: precision@K (or hit@K) per (dataset, encoder, metric) x (direction, K)."""
    measure = "precision" if protocol == "multicaption" else "hit"
    rows = results[
        (results["protocol"] == protocol)
        & (results["measure"] == measure)
        & results["metric"].isin(list(metrics))
    ]
    if rows.empty:
        return pd.DataFrame(), pd.DataFrame()
    index = ["dataset", "encoder", "metric"]
    numbers = rows.pivot_table(
        index=index, columns=["direction", "k"], values="value", dropna=False
    )
    cells = rows.assign(cell=interval_cells(rows))
    shown = cells.pivot_table(
        index=index, columns=["direction", "k"], values="cell", aggfunc="first"
    )
    return numbers, shown.reindex(index=numbers.index, columns=numbers.columns).fillna("n/a")


ALIGNMENT_MEASURES = ("cka", "mutual_knn", "cknna")


def alignment_table(
    alignment: dict[tuple[str, str], dict[str, Any]],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each (dataset, encoder, space) x measure: the value, its interval and its
    permutation baseline (``alignment.json``; see :mod:`mmalign.alignment`)."""
    numbers, shown = [], []
    for (dataset, encoder), doc in sorted(alignment.items()):
        for space, measures in doc.get("spaces", {}).items():
            key = {"dataset": dataset, "encoder": encoder, "space": space,
                   "pairs": measures.get("n_items")}  # fmt: skip
            row, cells = dict(key), dict(key)
            for name in ALIGNMENT_MEASURES:
                m = measures.get(name) or {}
                value = m.get("value")
                row[name], row[f"{name}_chance"] = value, m.get("chance_mean")
                if value is None:
                    cells[name] = "n/a"
                    continue
                interval = (f" [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"
                            if m.get("ci_low") is not None else "")  # fmt: skip
                cells[name] = f"{value:.3f}{interval} (chance {m['chance_mean']:.3f})"
            numbers.append(row)
            shown.append(cells)
    if not numbers:
        return pd.DataFrame(), pd.DataFrame()
    index = ["dataset", "encoder", "space", "pairs"]
    return pd.DataFrame(numbers).set_index(index), pd.DataFrame(shown).set_index(index)


def gap_shift_table(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cosine hit@K per (dataset, encoder, space, lambda, gap) x (direction, K),
    with the mean matching and non-matching cosines."""
    ok = frame.dropna(subset=["value"])
    if ok.empty:
        return pd.DataFrame(), pd.DataFrame()
    ok = ok.assign(
        column=[
            f"hit@{k}" if m == "hit" else m for m, k in zip(ok["measure"], ok["k"], strict=True)
        ],
        cell=[
            cell if m == "hit" else f"{v:.3f}"
            for cell, v, m in zip(interval_cells(ok), ok["value"], ok["measure"], strict=True)
        ],
    )
    index, columns = ["dataset", "encoder", "space", "lambda", "gap"], ["direction", "column"]
    numbers = ok.pivot_table(index=index, columns=columns, values="value")
    shown = ok.assign(gap=[f"{g:.3f}" for g in ok["gap"]]).pivot_table(
        index=index, columns=columns, values="cell", aggfunc="first"
    )
    return numbers, shown.fillna("n/a")


def gap_shift_verdict(frame: pd.DataFrame) -> str:
    """One line per (dataset, encoder) on the paper's conclusion 3, from the sweep."""
    from mmalign.gapshift import verdict

    lines = []
    for (dataset, encoder, space), rows in frame.groupby(["dataset", "encoder", "space"]):
        found = verdict(rows)
        unit = f"{dataset} / {encoder} ({space})"
        if not found:
            note = rows["note"].dropna()
            lines.append(f"- {unit}: n/a ({note.iloc[0] if len(note) else ''})")
            continue
        parts = []
        for direction, v in found.items():
            closed = v["hit_at_1_gap_closed"]
            parts.append(
                f"{direction} hit@1 {percent(v['hit_at_1_original'])}% at the original gap, "
                f"{percent(closed)}% with the gap closed, best {percent(v['best_hit_at_1'])}% "
                f"at λ = {v['best_lambda']:g} (Spearman ρ(gap, hit@1) = "
                f"{v['spearman_gap_vs_hit']:.2f})"
            )
        changes = {v["change_when_closed"] for v in found.values()}
        summary = (
            "closing the gap raises hit@1 beyond the intervals"
            if changes == {"higher"}
            else "closing the gap lowers hit@1 beyond the intervals"
            if changes == {"lower"}
            else "closing the gap does not clearly change hit@1"
        )
        lines.append(f"- {unit}: " + "; ".join(parts) + f". So {summary}.")
    return "\n".join(lines)


def ablation_verdict(rows: pd.DataFrame) -> str:
    """One line per (dataset, encoder) on the paper's conclusion 4: which one-factor
    changes lift the MLP's test hit@1 above chance (its 95% interval above
    1 / test pairs in both directions) while the paper's recipe stays at chance."""
    lines = []
    hits = rows[(rows["measure"] == "hit") & (rows["k"] == 1)]
    for (dataset, encoder), unit in hits.groupby(["dataset", "encoder"]):
        unit = unit.dropna(subset=["value"])
        if unit.empty or "mlp_ablation:paper" not in set(unit["metric"]):
            lines.append(f"- {dataset} / {encoder}: n/a")
            continue
        chance = 1.0 / unit["n_queries"].max()
        above = unit.groupby("metric")["ci_low"].min() > chance
        paper = unit[unit["metric"] == "mlp_ablation:paper"].set_index("direction")["value"]
        learned = [m.removeprefix("mlp_ablation:") for m, ok in above.items() if ok]
        head = (f"- {dataset} / {encoder}: the paper's recipe reaches hit@1 "
                f"{percent(paper.get('t2i'))}% / {percent(paper.get('i2t'))}% (text / image "
                f"queries; chance {percent(chance)}%). ")  # fmt: skip
        if "paper" in learned:
            lines.append(head + "It already learns here, so conclusion 4 does not hold.")
        elif learned:
            lines.append(head + "Above chance in both directions: " + ", ".join(learned)
                         + ". The MLP can learn the similarity; what the paper's recipe lacks "
                         "is what those variants change, so conclusion 4 does not hold as "
                         "stated.")  # fmt: skip
        else:
            lines.append(head + "No variant leaves chance in both directions: on these "
                         "data, conclusion 4 holds for every change tried.")  # fmt: skip
    return "\n".join(lines)


def gallery(results: pd.DataFrame, protocol: str) -> str:
    """``"1,000 pairs per dataset"`` (or a range) for the rows of ``protocol``."""
    sizes = results.loc[results["protocol"] == protocol].groupby("dataset")["n_queries"].max()
    if sizes.empty:
        return "no rows"
    low, high = int(sizes.min()), int(sizes.max())
    return f"{low:,} pairs" if low == high else f"{low:,}-{high:,} pairs by dataset"


def build_report(
    results: pd.DataFrame,
    geometry: dict[tuple[str, str], dict[str, Any]],
    significance: pd.DataFrame,
    tables_dir: Path,
    report_path: Path,
    figures: dict[str, list[str]],
    alignment: dict[tuple[str, str], dict[str, Any]] | None = None,
    gap_shift: pd.DataFrame | None = None,
    ablation: pd.DataFrame | None = None,
) -> None:
    """Write every table under ``tables_dir`` and ``report.md`` that embeds them.

    ``figures`` maps a section title to figure paths (PNG) to embed;
    ``alignment`` holds ``alignment.json`` by (dataset, encoder) and
    ``gap_shift`` the sweeps' rows and ``ablation`` the MLP ablation's (beyond
    the paper).
    """
    tables_dir.mkdir(parents=True, exist_ok=True)
    base = report_path.parent
    sections = [
        "# mmalign report\n",
        "Percentages with bootstrap 95% intervals over queries; bold = best in its column "
        "for that dataset. Chance hit@K is K / gallery size (0.1% hit@1 for 1,000 pairs).\n",
    ]

    def add(title: str, blurb: str, name: str, numbers: pd.DataFrame, shown: pd.DataFrame,
            bold: pd.DataFrame | None = None) -> None:  # fmt: skip
        sections.extend([f"## {title}\n", f"{blurb}\n"])
        sections.append(write_table(name, numbers, shown, tables_dir, bold))

    if geometry:
        add("Table 2: Wasserstein-2 distance and modality gap",
            "How far apart the image and text clouds sit: exact W2 over random batches of pairs, "
            "its Gaussian closed form, and the distance between the modality centroids.",
            "table2_geometry", *geometry_table(geometry))  # fmt: skip

    paper_metrics = {"subset": FIXED_METRICS, "learned_test": LEARNED_METRICS}
    for number, direction, label in ((3, "t2i", "text-to-image"), (4, "i2t", "image-to-text")):
        numbers, shown, best = hit_table(results, direction, paper_metrics)
        if not numbers.empty:
            add(f"Table {number}: {label} hit@K (the paper's P@K)",
                f"Share of {label} queries whose one true match is in the top K. Fixed metrics "
                f"on the seeded subset ({gallery(results, 'subset')}), the MLP rows on the test "
                f"split ({gallery(results, 'learned_test')}): chance differs between them.",
                f"table{number}_{direction}_hit", numbers, shown, best)  # fmt: skip

    numbers, shown = precision_table(results, "multicaption", ("cosine",))
    if not numbers.empty:
        add("Table 5: multi-caption precision@K (all captions of the test split)",
            "True precision, relevant in the top K / K; image-to-text has up to 5 relevant.",
            "table5_multicaption_precision", numbers, shown)  # fmt: skip

    numbers, shown = precision_table(results, "learned_test", ("mlp_down",))
    if not numbers.empty:
        add("Table 6: the fixed 500-300-100 down-projection MLP (MSE)",
            "hit@K of the paper's down-projection MLP on the test split.",
            "table6_mlp_down", numbers, shown)  # fmt: skip

    if not significance.empty:
        shown = significance.assign(
            hit_a=[percent(v) for v in significance["hit_a"]],
            hit_b=[percent(v) for v in significance["hit_b"]],
            p_value=[f"{p:.2g}" for p in significance["p_value"]],
            p_holm=[f"{p:.2g}" for p in significance["p_holm"]],
        ).set_index(["dataset", "protocol", "direction", "metric", "k"])
        columns = ["encoder_a", "encoder_b", "hit_a", "hit_b", "p_value", "p_holm", "significant"]
        add("Significance: pairwise chi-square tests between encoders (Holm-corrected)",
            "Whether two encoders' hit@K differ beyond chance, per dataset, direction, metric, K.",
            "significance", significance.set_index(["dataset", "protocol"]),
            shown[columns])  # fmt: skip

    numbers, shown, best = hit_table(results, "t2i", {"subset": ("cosine", *CALIBRATED_METRICS)})
    if not numbers.empty:
        add("Beyond the paper: calibrated cosines (text-to-image, subset)",
            "Centring each modality, CSLS and QB-Norm against plain cosine: do calibrated "
            "similarities retrieve as well while scoring unrelated pairs low?",
            "beyond_calibrated_t2i", numbers, shown, best)  # fmt: skip

    align = [m for m in results["metric"].unique() if str(m).startswith("align")]
    numbers, shown = precision_table(results, "learned_test", align)
    if align and not numbers.empty:
        add("Beyond the paper: post-hoc alignment heads (test split)",
            "hit@K after training small projection heads on frozen embeddings (InfoNCE), "
            "by metric in the aligned space, and a linear baseline.",
            "beyond_alignment", numbers, shown)  # fmt: skip

    cosine = results[(results["measure"] == "hit") & (results["metric"] == "cosine")]
    scale = cosine[cosine["protocol"].isin(["subset", "full"])]
    if scale["protocol"].nunique() == 2:
        index = ["dataset", "encoder", "direction"]
        numbers = scale.pivot_table(index=index, columns=["protocol", "k"], values="value")
        sizes = scale.groupby("protocol")["n_queries"].max().to_dict()
        add("Beyond the paper: the 1K subset against the full dataset (cosine)",
            f"hit@K with a gallery of {sizes['subset']} (subset) against {sizes['full']} "
            "(every pair): how much the paper's subset flatters retrieval.",
            "beyond_full_vs_subset", numbers, numbers.map(percent))  # fmt: skip

    numbers, shown = alignment_table(alignment or {})
    if not numbers.empty:
        add("Beyond the paper: how aligned are the two spaces?",
            "Linear CKA, mutual k-NN overlap and CKNNA between the text and the image "
            "embeddings of the same items (any two dimensions), with a 95% subsampling "
            "interval and the mean over shuffled pairings (chance). raw: a seeded sample of "
            "all pairs; test_raw / test_align: the learned stage's test split, before and "
            "after the alignment heads.",
            "beyond_alignment_measures", numbers, shown)  # fmt: skip

    if gap_shift is not None:
        numbers, shown = gap_shift_table(gap_shift)
        if not numbers.empty:
            add("Beyond the paper: closing the modality gap (conclusion 3)",
                "Both modalities moved along the centroid difference by λ (0 = original, "
                "1 = gap closed); cosine hit@K and the mean matching / non-matching cosine.\n\n"
                + gap_shift_verdict(gap_shift),
                "beyond_gap_shift", numbers, shown)  # fmt: skip

    if ablation is not None:
        names = list(dict.fromkeys(ablation["metric"]))
        numbers, shown = precision_table(ablation, "learned_test", names)
        if not numbers.empty:
            add("Beyond the paper: why the paper's MLP fails (conclusion 4)",
                "The same MLP, splits, initial weights and batches, one factor of the paper's "
                "recipe changed at a time (mmalign.learn.ablation); test hit@K.\n\n"
                + ablation_verdict(ablation),
                "beyond_mlp_ablation", numbers, shown)  # fmt: skip

    for title, paths in figures.items():
        if paths:
            sections.append(f"## {title}\n")
            for path in map(Path, paths):
                shown_path = path.relative_to(base) if path.is_relative_to(base) else path
                sections.append(f"![{path.stem}]({shown_path})\n")

    with atomic_path(report_path) as tmp:
        tmp.write_text("\n".join(sections))


def load_units(paths: Iterable[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """``results/{dataset}/{encoder}/*.json`` files by (dataset, encoder)."""
    out = {}
    for path in paths:
        p = Path(path)
        out[(p.parent.parent.name, p.parent.name)] = json.loads(p.read_text())
    return out
