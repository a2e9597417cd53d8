"""Rule `precision_upper_bounds`: paper Appendix A, the best possible precision@K."""

from mmalign.logs import setup_logging
from mmalign.plots import precision_upper_bounds_figure, save_figure

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    save_figure(
        precision_upper_bounds_figure(snakemake.params.k_max, snakemake.params.captions_per_image),
        snakemake.output.png.removesuffix(".png"),
    )
