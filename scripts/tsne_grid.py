"""Rule `tsne_grid`: Figure 2 over every dataset x encoder."""

from mmalign.geometry.figures import write_tsne_grid
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    write_tsne_grid(
        summaries=list(snakemake.input.summaries),
        points=list(snakemake.input.points),
        boundaries=list(snakemake.input.boundaries),
        panels=snakemake.params.panels,
        datasets=snakemake.params.datasets,
        encoders=snakemake.params.encoders,
        out_stem=snakemake.output.png.removesuffix(".png"),
    )
