"""Rule `paired`: paired tests between encoders, metrics, spaces, gap shifts and
MLP recipes on the same queries (mmalign.stats.paired_comparisons)."""

import pandas as pd

from mmalign.io import write_parquet
from mmalign.logs import setup_logging
from mmalign.stats import GAP_SHIFT_RANK_COLUMNS, RANK_COLUMNS, paired_comparisons


def read(paths: list[str], columns: list[str]) -> pd.DataFrame | None:
    frames = [pd.read_parquet(path, columns=columns) for path in paths]
    return pd.concat(frames, ignore_index=True) if frames else None


if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    inputs, retrieval = snakemake.input, snakemake.params.retrieval
    frame = paired_comparisons(
        read(inputs.ranks, RANK_COLUMNS),
        read(inputs.gap_shift, GAP_SHIFT_RANK_COLUMNS),
        read(inputs.ablation, RANK_COLUMNS),
        ks=retrieval["ks"],
        n_boot=retrieval["bootstrap"],
        seed=snakemake.params.seed,
    )
    write_parquet(frame, snakemake.output[0])
