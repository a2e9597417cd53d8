"""Concatenate long-form result tables into one parquet file."""

import pandas as pd

from mmalign.io import write_parquet
from mmalign.logs import setup_logging

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    frames = [pd.read_parquet(path) for path in snakemake.input]
    write_parquet(pd.concat(frames, ignore_index=True), snakemake.output[0])
