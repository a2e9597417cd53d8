"""Rule `prepare`: raw dataset -> results/{dataset}/manifest.parquet."""

from mmalign.datasets import prepare_to_files
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])  # noqa: F821
    prepare_to_files(
        snakemake.wildcards.dataset,  # noqa: F821
        snakemake.config,  # noqa: F821
        snakemake.output.manifest,  # noqa: F821
        snakemake.output.report,  # noqa: F821
        snakemake.output.skipped,  # noqa: F821
    )
