"""Rule `representation_similarity`: CKA, mutual k-NN and CKNNA of one (dataset, encoder)."""

from pathlib import Path

from mmalign.logs import setup_logging
from mmalign.representation import representation_job

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    representation_job(
        embeddings_dir=Path(snakemake.input.embeddings[0]).parent,
        heads=snakemake.input.heads[0] if snakemake.input.heads else None,
        cfg=snakemake.params.alignment,
        learn_cfg=snakemake.params.learn,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        out_json=snakemake.output[0],
        label={"dataset": snakemake.wildcards.dataset, "encoder": snakemake.wildcards.encoder},
    )
