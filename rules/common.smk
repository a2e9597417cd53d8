from mmalign.config import validate_config

# Validates in place and fills the defaults; a bad key stops here, named.
validate_config(config)

DATASETS = sorted(config["datasets"])
ENCODERS = sorted(config["encoders"])


wildcard_constraints:
    dataset="|".join(DATASETS),
    encoder="|".join(ENCODERS),


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def final_targets():
    return expand("results/{dataset}/manifest.parquet", dataset=DATASETS)
