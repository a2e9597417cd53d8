"""Rule `error_analysis`: one unit's worst and best aligned-space test queries,
and its recall@K curves (K = 1..100) per metric and space on the test split."""

from pathlib import Path

import pandas as pd

from mmalign.error_analysis import extreme_queries, plot_recall_curves, recall_curve
from mmalign.io import write_parquet
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    ranks = pd.read_parquet(snakemake.input.ranks, dtype_backend="pyarrow")
    test = ranks[ranks["protocol"] == "learned_test"]
    queries = []
    if (test["metric"] == "align").any():
        manifest = pd.read_parquet(snakemake.input.manifest)
        worst, best = extreme_queries(test, manifest, "learned_test", "align", "t2i", 10)
        queries = [worst.assign(kind="worst"), best.assign(kind="best")]
    write_parquet(
        pd.concat(queries, ignore_index=True) if queries else pd.DataFrame(columns=["kind"]),
        snakemake.output.queries,
    )
    title = f"{snakemake.wildcards.dataset} / {snakemake.wildcards.encoder}: test split"
    plot_recall_curves(
        recall_curve(test if len(test) else ranks),
        Path(snakemake.output.figures[0]).with_suffix(""),
        title,
    )
