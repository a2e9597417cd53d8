"""Rule `embed_precomputed`: embeddings made elsewhere -> results/{dataset}/{encoder}/embeddings/
(validated against the manifest; see mmalign.precomputed)."""

from pathlib import Path

import pandas as pd

from mmalign.logs import setup_logging
from mmalign.precomputed import embed_precomputed

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    embed_precomputed(
        pd.read_parquet(snakemake.input.manifest),
        snakemake.params.encoder,
        snakemake.wildcards.dataset,
        snakemake.wildcards.encoder,
        Path(snakemake.output[0]).parent,
    )
