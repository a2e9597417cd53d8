"""Rule `adapt`: project a computed encoder's embeddings with the config's adapter."""

from pathlib import Path

from mmalign.embed import Embeddings, apply_adapter
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    apply_adapter(
        Embeddings.load(Path(snakemake.input.raw[0]).parent),
        snakemake.params.encoder["adapter"],
        Path(snakemake.output[0]).parent,
        {"encoder": snakemake.wildcards.encoder, "config": snakemake.params.encoder},
    )
