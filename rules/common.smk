import os
import re

from mmalign import layout
from mmalign.config import embedding_plan, validate_config
from mmalign.devices import gpu_resources
from mmalign.layout import path
from mmalign.precomputed import input_files
from mmalign.resources import scaled
from mmalign.tracking import benchmark_file, git_commit, tracking_uri

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
# The `gpu` resource of the rules that score retrieval (retrieval_protocol,
# gap_shift): {"gpu": 1} for retrieval.device cuda, and for auto when a GPU is
# visible here, where the run is planned; else none (mmalign.devices.gpu_resources).
SCORING_GPU = gpu_resources(config["retrieval"]["device"])
# The same for embedding (embed.device) and training (learn.device). Declared
# only where a GPU will run the job: on a machine without one these jobs take
# no `gpu`, so `--resources gpu=1` does not serialise them, and single-threaded
# they run side by side (small-batch training gains nothing from a second
# thread: 2 threads on 2 busy cores ran an epoch 4x slower than 1, measured).
EMBED_GPU = gpu_resources(config["embed"]["device"])
LEARN_GPU = gpu_resources(config["learn"]["device"])
LEARN_VARIANTS = config["learn"]["variants"]


# The threads of the analysis rules (retrieval_protocol, gap_shift, geometry,
# aligned_geometry, representation_similarity) when this machine runs them: at
# most half its cores, so that two run side by side. At the default study's size
# a second thread barely helps any of them (on 2 cores, alone, 2 threads vs 1:
# geometry 70 vs 78 s, aligned_geometry 30 vs 33, retrieval_protocol 19 vs 18,
# gap_shift 30 vs 26, representation_similarity 13 vs 12), while jobs holding
# both cores ran one at a time. Cluster jobs (and the jobs they run) keep `n`.
def analysis_threads(n):
    cores = workflow.resource_settings.cores
    if not (workflow.is_main_process and workflow.local_exec) or not cores:
        return n
    return max(1, min(n, cores // 2))


# The align variant's heads are trained: rule aligned_geometry draws Figures 2-5
# in their shared space, and the raw figures that are n/a point to those.
ALIGNED = "align" in LEARN_VARIANTS
DATASETS = sorted(config["datasets"])
ENCODERS = sorted(config["encoders"])
# Every dataset's manifest: the shard jobs go to SLURM as one array, whose tasks all
# get one job's request, so each asks for the largest dataset's shard
# (mmalign.resources.scaled's peers).
MANIFESTS = [path("manifest", dataset=d) for d in DATASETS]
# COMPUTED: embedded from images and captions (config encoders without an
# adapter, plus a hidden <name>-raw twin where an adapted encoder needs one);
# PRECOMPUTED: the same for `kind: precomputed`, read from files made elsewhere;
# ADAPTED_FROM: adapted encoder -> the computed encoder it projects. Each name
# is made by one rule: embed_merge, embed_precomputed, adapt.
COMPUTED, PRECOMPUTED, ADAPTED_FROM = embedding_plan(config["encoders"])


# Shards per (dataset, encoder); change with --set-scatter embed=N. Two run side
# by side on a 2-core CPU; more only add start-ups (about 10 s each: imports,
# models, the ONNX export), so raise it where there are more GPUs or cores.
scattergather:
    embed=2,


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
    names += list(layout.ALIGNED_FIGURES.values()) if ALIGNED else []
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


def track_benchmarks():
    """The benchmark files of the jobs each unit's MLflow runs span, so that their
    Duration is the jobs' time (mmalign.tracking.STAGE_BENCHMARKS)."""
    files = []
    for dataset, encoder in ((d, e) for d in DATASETS for e in ENCODERS):
        bench = lambda rule, **extra: benchmark_file(rule, dataset, encoder, **extra)
        if encoder in ADAPTED_FROM:
            files.append(bench("adapt"))
        elif encoder in PRECOMPUTED:
            files.append(bench("embed_precomputed"))
        else:
            files += [
                bench("embed_shard", scatteritem=s)
                for s in gather.embed("{scatteritem}")
            ]
            files.append(bench("embed_merge"))
        files += [bench("retrieval_protocol", protocol=p) for p in PROTOCOLS_RUN]
        files += [
            bench(rule)
            for rule in ("geometry", "representation_similarity", "gap_shift")
        ]
        files += [bench("aligned_geometry")] if ALIGNED else []
        files += [bench("mlp_ablation")] if ABLATION else []
        files += [bench("learn", variant=v) for v in LEARN_VARIANTS]
    return files


def track_inputs(wildcards):
    """What MLflow logs, by artifact name (mmalign.tracking.unit_files groups them;
    the manifests are the runs' datasets, the benchmark files their times)."""
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
        "aligned_geometry": per_unit("aligned_geometry") if ALIGNED else [],
        "similarity": per_unit("similarity"),
        "gap_shift": per_unit("gap_shift"),
        "ablation": ablation_files("ablation"),
        "ablation_curves": ablation_files("ablation_curves"),
        **variant_files,
        "figure": [
            f for png in unit_figures() for f in (png, png.removesuffix("png") + "pdf")
        ],
        "manifest": expand(path("manifest"), dataset=DATASETS),
        "benchmark": track_benchmarks(),
        "report": path("report"),
        "tables": path("tables"),
    }


# The Snakemake report (`snakemake --report <file>.html`): the figures and
# tables each stage marks with report(), one category per stage, a caption for
# each under report/ (caption paths are relative to the rule files).
UNIT_LABELS = {"dataset": "{dataset}", "encoder": "{encoder}"}


def report_png(file, caption, category, subcategory, labels=UNIT_LABELS):
    """``file`` marked for the report when it is the PNG (the PDF is the same figure)."""
    if not file.endswith(".png"):
        return file
    return report(
        file,
        caption=f"../report/{caption}.rst",
        category=category,
        subcategory=subcategory,
        labels=labels,
    )


# The report's subcategory of each of Figures 2-5 (rule geometry).
GEOMETRY_SUBCATEGORIES = {
    "tsne": "t-SNE (Fig. 2)",
    "cosine_matrix": "cosine matrix (Fig. 3)",
    "retrieval_t2i": "text → image example (Fig. 4)",
    "retrieval_i2t": "image → text example (Fig. 5)",
}


def reported_figures(name, category, subcategory):
    """layout.figures(name) of one (dataset, encoder), its PNG in the report
    (captioned by report/<name>.rst), labelled by unit and figure name (so
    several figures can share a subcategory)."""
    labels = {**UNIT_LABELS, "figure": name}
    return [
        report_png(f, name, category, subcategory, labels) for f in layout.figures(name)
    ]


def embedding_outputs():
    """layout.embedding_files(), meta.json in the report's Embedding stage."""
    meta = path("embedding_file", file="meta.json")
    marked = report(
        meta,
        caption="../report/embeddings.rst",
        category="Embedding",
        subcategory="{dataset}",
        labels={"encoder": "{encoder}"},
    )
    return [marked if f == meta else f for f in layout.embedding_files()]


# The stage whose category each table of rule report joins (mmalign.report names
# the tables); a table not listed here stays under "Report".
TABLE_STAGES = {
    "table2_geometry": "Geometry",
    "table3_t2i_hit": "Retrieval",
    "table4_i2t_hit": "Retrieval",
    "table5_multicaption_precision": "Retrieval",
    "significance": "Retrieval",
    "beyond_calibrated_t2i": "Retrieval",
    "beyond_hubness": "Retrieval",
    "beyond_full_vs_subset": "Retrieval",
    "table6_mlp_down": "Learned",
    "beyond_alignment": "Learned",
    "beyond_mlp_ablation": "Learned",
    "beyond_alignment_measures": "Representation",
    "beyond_gap_shift": "Gap shift",
}


def table_stage(wildcards):
    return TABLE_STAGES.get(wildcards.table, "Report")
