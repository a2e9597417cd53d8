import os
import re

from mmalign.config import embedding_plan, validate_config
from mmalign.embed import EMBEDDING_FILES
from mmalign.retrieval import PROTOCOLS
from mmalign.tracking import git_commit, tracking_uri

# Validates in place and fills the defaults; a bad key stops here, named.
validate_config(config)

# Declared so that cluster jobs receive them. MMALIGN_ROOT: the conda envs
# (--sdm conda) pip-install this checkout from it. MLFLOW_TRACKING_URI: when
# unset, the config's (or the default SQLite) URI is exported.
os.environ["MMALIGN_ROOT"] = workflow.basedir
os.environ.setdefault("MLFLOW_TRACKING_URI", tracking_uri(config))


envvars:
    "MMALIGN_ROOT",
    "MLFLOW_TRACKING_URI",


# The learn config without the ablation's section: what the learned variants,
# and the jobs that reuse their splits and heads, depend on (so a change to the
# ablation's settings reruns the ablation only).
LEARN_CONFIG = {
    key: value for key, value in config["learn"].items() if key != "ablation"
}

DATASETS = sorted(config["datasets"])
ENCODERS = sorted(config["encoders"])
# COMPUTED: embedded from images and captions (config encoders without an
# adapter, plus a hidden <name>-raw twin where an adapted encoder needs one);
# ADAPTED_FROM: adapted encoder -> the computed encoder it projects.
COMPUTED, ADAPTED_FROM = embedding_plan(config["encoders"])


# Shards per (dataset, encoder); change with --set-scatter embed=N.
scattergather:
    embed=8,


def names_regex(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


wildcard_constraints:
    dataset=names_regex(DATASETS),
    encoder=names_regex(set(ENCODERS) | set(COMPUTED)),


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def encoder_config(wildcards):
    return COMPUTED.get(wildcards.encoder) or config["encoders"][wildcards.encoder]


def embedding_files(folder):
    return [f"{folder}/{name}" for name in EMBEDDING_FILES]


def adapter_source(wildcards):
    base = ADAPTED_FROM[wildcards.encoder]
    return embedding_files(f"results/{wildcards.dataset}/{base}/embeddings")


def aligned_heads(wildcards):
    """The align variant's weights, when it is trained, so alignment.json also
    measures the heads' shared space."""
    if "align" not in config["learn"]["variants"]:
        return []
    return [f"results/{wildcards.dataset}/{wildcards.encoder}/learn/align.safetensors"]


# Each stage's rule file adds the files `rule all` asks for.
FINAL_TARGETS = []


def report_inputs(wildcards):
    units = expand("results/{dataset}/{encoder}", dataset=DATASETS, encoder=ENCODERS)
    return {
        "retrieval": [f"{u}/retrieval.parquet" for u in units],
        "geometry": [f"{u}/geometry.json" for u in units],
        "alignment": [f"{u}/alignment.json" for u in units],
        "gap_shift": [f"{u}/gap_shift.parquet" for u in units],
        "ablation": (
            [f"{u}/learn/ablation.parquet" for u in units]
            if config["learn"]["ablation"]["enabled"]
            else []
        ),
        "paired": "results/stats/paired.parquet",
        "hubness": [f"{u}/hubness.parquet" for u in units],
        "queries": [f"{u}/extreme_queries.parquet" for u in units],
        "recall_figures": [f"{u}/figures/recall_at_k.png" for u in units],
        "figures": [
            "results/figures/tsne_grid.png",
            "results/figures/precision_upper_bounds.png",
        ],
    }


def paired_inputs(wildcards):
    units = expand("results/{dataset}/{encoder}", dataset=DATASETS, encoder=ENCODERS)
    return {
        "ranks": [f"{u}/ranks.parquet" for u in units],
        "gap_shift": [f"{u}/gap_shift.ranks.parquet" for u in units],
        "ablation": (
            [f"{u}/learn/ablation.ranks.parquet" for u in units]
            if config["learn"]["ablation"]["enabled"]
            else []
        ),
    }
