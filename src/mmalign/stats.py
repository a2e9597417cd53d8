"""Significance of differences between encoders, as the paper reports them.

For each dataset x protocol x direction x metric x K, every pair of encoders
is compared with a chi-square test of two proportions (hit@K successes out of
the queries), and the p-values of that family are Holm-corrected
(statsmodels). The paper's queries are the same for every encoder, so the
test is conservative; McNemar's test on paired outcomes would be sharper.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportions_chisquare

GROUP = ["dataset", "protocol", "direction", "metric", "k"]
COLUMNS = [*GROUP, "encoder_a", "encoder_b", "hit_a", "hit_b", "n_a", "n_b",
           "chi2", "p_value", "p_holm", "significant"]  # fmt: skip


def pairwise_significance(results: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """Holm-corrected pairwise chi-square tests on ``hit`` rows of ``results``."""
    hits = results[(results["measure"] == "hit") & results["value"].notna()]
    rows = []
    for key, group in hits.groupby(GROUP, sort=True):
        tests = []
        for (_, a), (_, b) in itertools.combinations(group.sort_values("encoder").iterrows(), 2):
            count = np.array(
                [round(a["value"] * a["n_queries"]), round(b["value"] * b["n_queries"])]
            )
            nobs = np.array([a["n_queries"], b["n_queries"]])
            if count.sum() == 0 or count.sum() == nobs.sum():
                chi2, p = 0.0, 1.0  # identical all-miss or all-hit: no evidence of a difference
            else:
                chi2, p, _ = proportions_chisquare(count, nobs)
            tests.append([*key, a["encoder"], b["encoder"], a["value"], b["value"],
                          nobs[0], nobs[1], float(chi2), float(p)])  # fmt: skip
        if not tests:
            continue
        reject, holm, _, _ = multipletests([t[-1] for t in tests], alpha=alpha, method="holm")
        rows += [[*t, float(h), bool(r)] for t, h, r in zip(tests, holm, reject, strict=True)]
    return pd.DataFrame(rows, columns=COLUMNS)
