"""Rule `embed_shard`: one shard of a dataset through one encoder."""

from mmalign.embed import embed_shard_job
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    embed_shard_job(
        snakemake.input.manifest,
        snakemake.params.encoder,
        snakemake.params.embed,
        snakemake.wildcards.scatteritem,
        snakemake.threads,
        snakemake.params.seed,
        snakemake.output[0],
    )
