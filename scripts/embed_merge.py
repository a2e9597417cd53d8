"""Rule `embed_merge`: shards -> results/{dataset}/{encoder}/embeddings/."""

from pathlib import Path

import pandas as pd

from mmalign.embed import merge_shards
from mmalign.logs import setup_logging

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])
    summary = merge_shards(
        pd.read_parquet(snakemake.input.manifest),
        list(snakemake.input.shards),
        Path(snakemake.output[0]).parent,
        {
            "dataset": snakemake.wildcards.dataset,
            "encoder": snakemake.wildcards.encoder,
            "config": snakemake.params.encoder,
        },
    )
    log.info(
        f"{snakemake.wildcards.dataset}/{snakemake.wildcards.encoder}: "
        f"{summary['images_per_s']:.1f} images/s, {summary['texts_per_s']:.1f} captions/s"
    )
