"""Rule `significance`: Holm-corrected pairwise tests between encoders."""

import pandas as pd

from mmalign.io import write_parquet
from mmalign.logs import setup_logging
from mmalign.stats import pairwise_significance

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    results = pd.concat([pd.read_parquet(path) for path in snakemake.input], ignore_index=True)
    write_parquet(pairwise_significance(results), snakemake.output[0])
