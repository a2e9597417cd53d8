"""Rule `retrieval_protocol`: every metric, both directions, for one protocol."""

import torch

from mmalign.embed import Embeddings
from mmalign.io import write_parquet
from mmalign.logs import setup_logging
from mmalign.retrieval import RetrievalOptions, score_protocol

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    frame = score_protocol(
        Embeddings.load(snakemake.input[0].rsplit("/", 1)[0]),
        snakemake.wildcards.protocol,
        RetrievalOptions.from_config(snakemake.params.retrieval, snakemake.params.seed),
        snakemake.wildcards.dataset,
        snakemake.wildcards.encoder,
    )
    write_parquet(frame, snakemake.output[0])
