"""Rule `prepare`: raw dataset -> results/{dataset}/manifest.parquet."""

from mmalign.datasets import prepare_to_files
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    name = snakemake.wildcards.dataset
    # Only what the rule's params declare, so that every input to the manifest
    # is a rerun trigger.
    prepare_to_files(
        name,
        {"datasets": {name: snakemake.params.dataset}, "seed": snakemake.params.seed},
        snakemake.output.manifest,
        snakemake.output.report,
        snakemake.output.skipped,
    )
