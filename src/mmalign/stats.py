"""Significance of differences: paired tests on the same queries, and the paper's test.

Every comparison here is *paired*: two systems (two encoders, two metrics or
spaces of one unit, two gap shifts, two MLP recipes) scored on the same
queries, read from the per-query ranks (``ranks.parquet``,
``gap_shift.ranks.parquet``, ``learn/ablation.ranks.parquet``). For each
pair and each measure, :func:`paired_comparisons` gives (see
:mod:`mmalign.paired` for the statistics):

- the difference ``b - a`` of hit@K and of MRR with a paired bootstrap 95%
  interval (whole images resampled when several queries share an image, as
  the multi-caption protocol's captions do);
- for hit@K, McNemar's test: exact binomial when fewer than 25 queries are
  discordant, else chi-square with continuity correction; clustered
  (Durkalski et al. 2003) when queries share an image. MRR gets the interval
  only (``p_value`` NaN);
- Holm's correction within each *family*: the comparisons of one
  (``family``, dataset, encoder, protocol, space, metric, direction, measure,
  k): ``a`` and ``b`` name the two systems, the label columns that do not
  vary between them are filled and the others are empty,
  i.e. all pairs of encoders (``family`` = ``encoders``), of metrics and
  spaces in one unit (``metrics``: on the seeded subset, or on the learned
  stage's test split: aligned metrics, raw metrics on the same pairs, CCA and
  the MLPs), every shift against the original gap (``gap_shift``), every
  ablation variant against the paper's recipe (``ablation``);
- ``p_chi2_paper``: the paper's test, a chi-square test of two independent
  proportions (statsmodels), which ignores the pairing; kept for comparison
  with the paper only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from statsmodels.stats.proportion import proportions_chisquare

from mmalign.paired import holm, mcnemar, paired_bootstrap_many

FAMILY = ["family", "dataset", "encoder", "protocol", "space", "metric", "direction", "measure",
          "k"]  # fmt: skip
PAIRED_COLUMNS = [
    *FAMILY, "a", "b", "n_queries", "n_clusters", "value_a", "value_b", "diff", "diff_low",
    "diff_high", "n01", "n10", "statistic", "p_value", "test", "p_holm", "significant",
    "p_chi2_paper",
]  # fmt: skip
RANK_COLUMNS = ["dataset", "encoder", "protocol", "direction", "metric", "query", "image_id",
                "caption_idx", "rank"]  # fmt: skip
GAP_SHIFT_RANK_COLUMNS = [*RANK_COLUMNS, "space", "lambda"]


def chi2_paper(hits_a: int, hits_b: int, n_a: int, n_b: int) -> tuple[float, float]:
    """(statistic, p) of the paper's chi-square test of two independent proportions."""
    if hits_a + hits_b in (0, n_a + n_b):
        return 0.0, 1.0  # identical all-miss or all-hit: no evidence of a difference
    chi2, p, _ = proportions_chisquare(np.array([hits_a, hits_b]), np.array([n_a, n_b]))
    return float(chi2), float(p)


def compare(
    rank_a: np.ndarray,
    rank_b: np.ndarray,
    clusters: np.ndarray,
    ks: Iterable[int],
    n_boot: int,
    seed: int,
) -> list[dict[str, Any]]:
    """One pair of systems on the same queries (their first-relevant ranks):
    a row per hit@K and for MRR, with everything :data:`PAIRED_COLUMNS` holds
    except the labels and the Holm columns."""
    distinct = pd.unique(clusters)
    grouped = clusters if len(distinct) < len(clusters) else None
    values_a = {f"hit@{k}": (rank_a <= k).astype(float) for k in ks}
    values_b = {f"hit@{k}": (rank_b <= k).astype(float) for k in ks}
    values_a["mrr"], values_b["mrr"] = 1.0 / rank_a, 1.0 / rank_b
    diffs = paired_bootstrap_many(values_a, values_b, n_boot, seed, grouped)
    n = len(rank_a)
    rows = []
    for name, (diff, low, high) in diffs.items():
        measure, _, k = name.partition("@")
        a, b = values_a[name], values_b[name]
        row: dict[str, Any] = {
            "measure": measure, "k": int(k) if k else pd.NA, "n_queries": n,
            "n_clusters": len(distinct), "value_a": float(a.mean()), "value_b": float(b.mean()),
            "diff": diff, "diff_low": low, "diff_high": high, "n01": pd.NA, "n10": pd.NA,
            "statistic": np.nan, "p_value": np.nan, "test": "paired bootstrap only",
            "p_chi2_paper": np.nan,
        }  # fmt: skip
        if measure == "hit":
            test = mcnemar(a, b, grouped)
            row.update(n01=test.n01, n10=test.n10, statistic=test.statistic,
                       p_value=test.p_value, test=test.method,
                       p_chi2_paper=chi2_paper(int(a.sum()), int(b.sum()), n, n)[1])  # fmt: skip
        rows.append(row)
    return rows


def _pairs_of(
    frame: pd.DataFrame, by: str, pairs: list[tuple[Any, Any]], key: list[str]
) -> Iterable[tuple[Any, Any, pd.DataFrame]]:
    """(a, b, the queries both were scored on, matched by ``key``: ``rank_a``,
    ``rank_b`` and the query's ``image_id``), in ``a``'s query order."""
    systems = dict(tuple(frame.groupby(by, sort=False)))
    for a, b in pairs:
        if a not in systems or b not in systems:
            continue
        joined = systems[a][list(dict.fromkeys([*key, "rank", "image_id"]))].merge(
            systems[b][[*key, "rank"]], on=key, how="inner", suffixes=("_a", "_b")
        )
        if len(joined):
            yield a, b, joined


def paired_comparisons(
    ranks: pd.DataFrame,
    gap_shift: pd.DataFrame | None = None,
    ablation: pd.DataFrame | None = None,
    ks: Iterable[int] = (1, 5, 10),
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Every paired comparison the report's verdicts rest on, one row per
    (pair, measure): see the module docstring. ``ranks``: the units'
    ``ranks.parquet`` rows concatenated; ``gap_shift`` and ``ablation``: the
    per-query ranks of the sweeps and of the MLP ablation."""
    ks = list(ks)
    rows: list[dict[str, Any]] = []

    def add(label: dict[str, Any], pairs: Iterable[tuple[Any, Any, pd.DataFrame]],
            name: Any = str) -> None:  # fmt: skip
        for a, b, joined in pairs:
            for row in compare(joined["rank_a"].to_numpy(), joined["rank_b"].to_numpy(),
                               joined["image_id"].to_numpy(), ks, n_boot, seed):  # fmt: skip
                rows.append({**label, "a": name(a), "b": name(b), **row})

    ranks = ranks[[c for c in RANK_COLUMNS if c in ranks.columns]]
    # Encoders against each other on the same queries (matched by caption and image).
    for (dataset, protocol, direction, metric), group in ranks.groupby(
        ["dataset", "protocol", "direction", "metric"], sort=False
    ):
        encoders = list(dict.fromkeys(group["encoder"]))
        label = {"family": "encoders", "dataset": dataset, "encoder": "", "protocol": protocol,
                 "space": "", "metric": metric, "direction": direction}  # fmt: skip
        add(label, _pairs_of(group, "encoder", list(itertools.combinations(encoders, 2)),
                             ["image_id", "caption_idx"]))  # fmt: skip
    # Metrics and spaces of one unit against each other, on one task's queries.
    for (dataset, encoder, protocol, direction), group in ranks.groupby(
        ["dataset", "encoder", "protocol", "direction"], sort=False
    ):
        metrics = list(dict.fromkeys(group["metric"]))
        label = {"family": "metrics", "dataset": dataset, "encoder": encoder,
                 "protocol": protocol, "space": "", "metric": "",
                 "direction": direction}  # fmt: skip
        add(label, _pairs_of(group, "metric", list(itertools.combinations(metrics, 2)), ["query"]))
    # Each gap shift against the original gap (lambda 0), per space.
    if gap_shift is not None and len(gap_shift):
        for (dataset, encoder, protocol, space, direction), group in gap_shift.groupby(
            ["dataset", "encoder", "protocol", "space", "direction"], sort=False
        ):
            lambdas = [lam for lam in dict.fromkeys(group["lambda"]) if lam != 0.0]
            label = {"family": "gap_shift", "dataset": dataset, "encoder": encoder,
                     "protocol": protocol, "space": space, "metric": "cosine",
                     "direction": direction}  # fmt: skip
            pairs = [(0.0, lam) for lam in lambdas]
            add(label, _pairs_of(group, "lambda", pairs, ["query"]), lambda x: f"lambda {x:g}")
    # Each ablation variant against the paper's recipe.
    if ablation is not None and len(ablation):
        for (dataset, encoder, protocol, direction), group in ablation.groupby(
            ["dataset", "encoder", "protocol", "direction"], sort=False
        ):
            paper = "mlp_ablation:paper"
            others = [m for m in dict.fromkeys(group["metric"]) if m != paper]
            label = {"family": "ablation", "dataset": dataset, "encoder": encoder,
                     "protocol": protocol, "space": "", "metric": "",
                     "direction": direction}  # fmt: skip
            add(label, _pairs_of(group, "metric", [(paper, m) for m in others], ["query"]))

    frame = pd.DataFrame(rows, columns=[c for c in PAIRED_COLUMNS if c not in
                                        ("p_holm", "significant")])  # fmt: skip
    frame = frame.astype({"k": "Int64", "n01": "Int64", "n10": "Int64"})
    adjusted = pd.Series(np.nan, index=frame.index)
    reject = pd.Series(False, index=frame.index)
    for _, family in frame.groupby(FAMILY, sort=False, dropna=False):
        if family["p_value"].notna().any():
            p, r = holm(family["p_value"].to_numpy(), alpha)
            adjusted[family.index], reject[family.index] = p, r
    frame["p_holm"], frame["significant"] = adjusted, reject.astype(bool)
    return frame[PAIRED_COLUMNS]
