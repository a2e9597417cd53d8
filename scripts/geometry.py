"""Rule `geometry`: gap, Wasserstein-2, cosine statistics, t-SNE and figures of one
(dataset, encoder)."""

from pathlib import Path

from mmalign.geometry import geometry_job
from mmalign.logs import setup_logging

if __name__ == "__main__":
    log = setup_logging(snakemake.log[0])
    summary = geometry_job(
        embeddings_dir=Path(snakemake.input.embeddings[0]).parent,
        manifest_path=snakemake.input.manifest,
        geometry_cfg=snakemake.params.geometry,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        out_json=snakemake.output.summary,
        out_tsne=snakemake.output.tsne,
        out_boundary=snakemake.output.boundary,
        figures_dir=Path(snakemake.output.figures[0]).parent,
        label={"dataset": snakemake.wildcards.dataset, "encoder": snakemake.wildcards.encoder},
        aligned_figures=snakemake.params.aligned,
    )
    log.info(
        f"{snakemake.wildcards.dataset}/{snakemake.wildcards.encoder}: "
        f"modality gap {summary['modality_gap']}, W2 {summary['w2_mean']}"
    )
