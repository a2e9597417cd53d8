"""Rule `retrieval_protocol`: every metric, both directions, for one protocol."""

import torch

from mmalign.embed import Embeddings
from mmalign.io import write_parquet
from mmalign.logs import setup_logging
from mmalign.retrieval import (
    QueryRanks,
    RetrievalOptions,
    hubness_rows,
    ranks_table,
    score_protocol,
    write_ranks,
)

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    torch.set_num_threads(snakemake.threads)
    emb = Embeddings.load(snakemake.input[0].rsplit("/", 1)[0])
    ranked: list[QueryRanks] = []
    frame = score_protocol(
        emb,
        snakemake.wildcards.protocol,
        RetrievalOptions.from_config(snakemake.params.retrieval, snakemake.params.seed),
        snakemake.wildcards.dataset,
        snakemake.wildcards.encoder,
        ranked,
        snakemake.params.captions,
    )
    write_parquet(frame, snakemake.output.rows)
    write_ranks(ranks_table(ranked, emb.texts, emb.images), snakemake.output.ranks)
    write_parquet(hubness_rows(ranked), snakemake.output.hubness)
