"""Rule `track`: log every score file to MLflow (idempotent)."""

from pathlib import Path

from mmalign.io import write_json
from mmalign.logs import setup_logging
from mmalign.tracking import track_all

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    inputs = snakemake.input
    # The per-unit inputs are named by artifact (rules/common.smk: track_inputs).
    extra = ("report", "tables")
    summary = track_all(
        snakemake.config,
        {name: files for name, files in inputs.items() if name not in extra},
        snakemake.params.commit,
        Path(snakemake.params.artifacts),
        [Path(getattr(inputs, name)) for name in extra],
    )
    write_json(summary, snakemake.output[0])
