"""Rule `retrieval`: one unit's score rows, per-query ranks and hubness, each
concatenated from the protocols' and the learned variants' files."""

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmalign.io import write_parquet
from mmalign.logs import setup_logging
from mmalign.retrieval import write_ranks

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    for name in ("rows", "hubness"):
        frames = [pd.read_parquet(path) for path in snakemake.input[name]]
        write_parquet(pd.concat(frames, ignore_index=True), snakemake.output[name])
    tables = [pq.read_table(path) for path in snakemake.input.ranks]
    write_ranks(pa.concat_tables(tables), snakemake.output.ranks)
