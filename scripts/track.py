"""Rule `track`: log every score file to MLflow (idempotent)."""

from pathlib import Path

from mmalign.io import write_json
from mmalign.logs import setup_logging
from mmalign.tracking import track_all

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    results = Path(snakemake.input.report).parent
    summary = track_all(
        snakemake.config,
        results,
        snakemake.params.commit,
        [results / "report.md", results / "tables"],
    )
    write_json(summary, snakemake.output[0])
