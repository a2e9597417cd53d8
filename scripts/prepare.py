"""Rule `prepare`: raw dataset -> results/{dataset}/manifest.parquet."""

from mmalign.datasets import prepare_to_files
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    prepare_to_files(
        snakemake.wildcards.dataset,
        snakemake.config,
        snakemake.output.manifest,
        snakemake.output.report,
        snakemake.output.skipped,
    )
