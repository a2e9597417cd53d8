"""Rule `track`: log every score file to MLflow (idempotent)."""

from pathlib import Path

from mmalign.io import write_json
from mmalign.logs import setup_logging
from mmalign.tracking import STAGE_FILES, track_all

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    inputs = snakemake.input
    per_unit = [*STAGE_FILES.values(), "ablation_curves", "variant_summary", "variant_trials"]
    summary = track_all(
        snakemake.config,
        {name: inputs[name] for name in [*per_unit, "figure"]},
        snakemake.params.commit,
        Path(snakemake.params.artifacts),
        [Path(inputs.report), Path(inputs.tables)],
    )
    write_json(summary, snakemake.output[0])
