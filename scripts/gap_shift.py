"""Rule `gap_shift`: the gap-shift sweep of one (dataset, encoder), and its figure."""

from pathlib import Path

from mmalign.gapshift import gap_shift_figure, gap_shift_job
from mmalign.logs import setup_logging
from mmalign.plotting import save_figure

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    label = {"dataset": snakemake.wildcards.dataset, "encoder": snakemake.wildcards.encoder}
    frame = gap_shift_job(
        embeddings_dir=Path(snakemake.input.embeddings[0]).parent,
        heads=snakemake.input.heads[0] if snakemake.input.heads else None,
        cfg=snakemake.params.gap_shift,
        retrieval_cfg=snakemake.params.retrieval,
        learn_cfg=snakemake.params.learn,
        seed=snakemake.params.seed,
        threads=snakemake.threads,
        out_rows=snakemake.output.rows,
        out_ranks=snakemake.output.ranks,
        label=label,
    )
    stem = Path(snakemake.output.figures[0]).with_suffix("")
    save_figure(gap_shift_figure(frame, " / ".join(label.values())), stem)
