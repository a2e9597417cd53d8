"""Rule `precision_upper_bounds`: paper Appendix A, the best possible precision@K."""

from mmalign.geometry import precision_upper_bounds
from mmalign.geometry.figures import precision_upper_bounds_figure
from mmalign.logs import setup_logging
from mmalign.plotting import save_figure

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    captions_per_image = snakemake.params.captions_per_image
    table = precision_upper_bounds(snakemake.params.k_max, captions_per_image)
    save_figure(
        precision_upper_bounds_figure(table, captions_per_image),
        snakemake.output.png.removesuffix(".png"),
    )
