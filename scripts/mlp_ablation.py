"""Rule `mlp_ablation`: why the paper's MLP fails, on one (dataset, encoder)."""

from pathlib import Path

from mmalign.learn.ablation import ablation_job
from mmalign.learn.figures import mlp_ablation_figure
from mmalign.logs import setup_logging
from mmalign.plotting import save_figure

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    label = {"dataset": snakemake.wildcards.dataset, "encoder": snakemake.wildcards.encoder}
    rows, curves = ablation_job(
        embeddings_dir=Path(snakemake.input[0]).parent,
        learn_cfg=snakemake.params.learn,
        retrieval_cfg=snakemake.params.retrieval,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        out_rows=snakemake.output.rows,
        out_ranks=snakemake.output.ranks,
        out_curves=snakemake.output.curves,
        label=label,
    )
    stem = Path(snakemake.output.figures[0]).with_suffix("")
    save_figure(mlp_ablation_figure(curves, rows, " / ".join(label.values())), stem)
