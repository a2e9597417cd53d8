"""Rule `aligned_geometry`: Figures 2-5 of one (dataset, encoder) in the alignment
heads' shared space, on the learned stage's test split."""

from pathlib import Path

from mmalign.geometry.aligned import aligned_geometry_job
from mmalign.logs import setup_logging

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])
    summary = aligned_geometry_job(
        embeddings_dir=Path(snakemake.input.embeddings[0]).parent,
        manifest_path=snakemake.input.manifest,
        heads=snakemake.input.heads,
        geometry_cfg=snakemake.params.geometry,
        learn_cfg=snakemake.params.learn,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        out_json=snakemake.output.summary,
        figures_dir=Path(snakemake.output.figures[0]).parent,
        label={"dataset": snakemake.wildcards.dataset, "encoder": snakemake.wildcards.encoder},
    )
    gaps = {space: s["modality_gap"] for space, s in summary["spaces"].items()}
    log.info(
        f"{snakemake.wildcards.dataset}/{snakemake.wildcards.encoder}: "
        f"{summary['n_pairs']} test pairs, modality gap {gaps}"
    )
