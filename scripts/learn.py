"""Rule `learn`: one learned variant (paper MLPs or alignment heads) on one
(dataset, encoder)."""

from pathlib import Path

from mmalign.learn import learn_job
from mmalign.logs import setup_logging

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])
    summary = learn_job(
        embeddings_dir=Path(snakemake.input[0]).parent,
        variant=snakemake.wildcards.variant,
        learn_cfg=snakemake.params.learn,
        retrieval_cfg=snakemake.params.retrieval,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        out_summary=snakemake.output.summary,
        out_rows=snakemake.output.rows,
        out_weights=snakemake.output.weights,
        out_trials=snakemake.output.trials,
        out_ranks=snakemake.output.ranks,
        out_hubness=snakemake.output.hubness,
        study_dir=snakemake.params.study_dir,
        label={"dataset": snakemake.wildcards.dataset, "encoder": snakemake.wildcards.encoder},
    )
    log.info(f"{snakemake.wildcards.variant}: {summary['status']}, {summary['seconds_total']} s")
