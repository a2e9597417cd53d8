import os
import re

from mmalign import layout
from mmalign.config import embedding_plan, validate_config
from mmalign.layout import path
from mmalign.precomputed import input_files
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

PROTOCOLS_RUN = config["retrieval"]["protocols"]
LEARN_VARIANTS = config["learn"]["variants"]
DATASETS = sorted(config["datasets"])
ENCODERS = sorted(config["encoders"])
# COMPUTED: embedded from images and captions (config encoders without an
# adapter, plus a hidden <name>-raw twin where an adapted encoder needs one);
# PRECOMPUTED: the same for `kind: precomputed`, read from files made elsewhere;
# ADAPTED_FROM: adapted encoder -> the computed encoder it projects. Each name
# is made by one rule: embed_merge, embed_precomputed, adapt.
COMPUTED, PRECOMPUTED, ADAPTED_FROM = embedding_plan(config["encoders"])


# Shards per (dataset, encoder); change with --set-scatter embed=N.
scattergather:
    embed=8,


def names_regex(names):
    return "|".join(re.escape(name) for name in sorted(names)) or "(?!)"


wildcard_constraints:
    dataset=names_regex(DATASETS),
    encoder=names_regex(set(ENCODERS) | set(COMPUTED) | set(PRECOMPUTED)),


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def encoder_config(wildcards):
    return (
        COMPUTED.get(wildcards.encoder)
        or PRECOMPUTED.get(wildcards.encoder)
        or config["encoders"][wildcards.encoder]
    )


def precomputed_files(wildcards):
    """The embedding files (and ids files) of a precomputed encoder for the dataset."""
    return input_files(PRECOMPUTED[wildcards.encoder], wildcards.dataset)


def adapter_source(wildcards):
    return layout.embedding_files(
        dataset=wildcards.dataset, encoder=ADAPTED_FROM[wildcards.encoder]
    )


def aligned_heads(wildcards):
    """The align variant's weights, when it is trained, so alignment.json also
    measures the heads' shared space."""
    if "align" not in config["learn"]["variants"]:
        return []
    return [path("variant_weights", variant="align", **wildcards)]


def per_unit(artifact, **wildcards):
    """``artifact`` of every (dataset, encoder) of the config."""
    return expand(path(artifact, **wildcards), dataset=DATASETS, encoder=ENCODERS)


ABLATION = config["learn"]["ablation"]["enabled"]


def ablation_files(artifact):
    return per_unit(artifact) if ABLATION else []


def unit_figures():
    """Every per-unit figure, as PNG."""
    names = [*layout.GEOMETRY_FIGURES, "gap_shift", "recall_at_k"]
    names += ["mlp_ablation"] if ABLATION else []
    return [f for name in names for f in per_unit("figure", name=name, ext="png")]


# Each stage's rule file adds the files `rule all` asks for.
FINAL_TARGETS = []


def report_inputs(wildcards):
    return {
        "retrieval": per_unit("retrieval"),
        "geometry": per_unit("geometry"),
        "similarity": per_unit("similarity"),
        "gap_shift": per_unit("gap_shift"),
        "ablation": ablation_files("ablation"),
        "paired": path("paired"),
        "hubness": per_unit("hubness"),
        "queries": per_unit("extreme_queries"),
        "unit_figures": unit_figures(),
        "figures": [
            path("tsne_grid", ext="png"),
            path("precision_upper_bounds", ext="png"),
        ],
    }


def paired_inputs(wildcards):
    return {
        "ranks": per_unit("ranks"),
        "gap_shift": per_unit("gap_shift_ranks"),
        "ablation": ablation_files("ablation_ranks"),
    }


def track_inputs(wildcards):
    """What MLflow logs, by artifact name (mmalign.tracking.unit_files groups them)."""
    variant_files = {
        f"variant_{name}": expand(
            path(f"variant_{name}"),
            dataset=DATASETS,
            encoder=ENCODERS,
            variant=LEARN_VARIANTS,
        )
        for name in ("summary", "trials")
    }
    return {
        "embedding_file": per_unit("embedding_file", file="meta.json"),
        "retrieval": per_unit("retrieval"),
        "geometry": per_unit("geometry"),
        "similarity": per_unit("similarity"),
        "gap_shift": per_unit("gap_shift"),
        "ablation": ablation_files("ablation"),
        "ablation_curves": ablation_files("ablation_curves"),
        **variant_files,
        "figure": [
            f for png in unit_figures() for f in (png, png.removesuffix("png") + "pdf")
        ],
        "report": path("report"),
        "tables": path("tables"),
    }
