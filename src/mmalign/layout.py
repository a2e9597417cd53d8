"""The results layout and the registries of names: one home for each.

Torch-free and cheap to import: the Snakefile reads it while it parses, so
``snakemake -n`` needs neither torch nor the model stack.

Every artifact has one path template here. Rules, the report, tracking and the
tests take paths from :func:`path` (wildcards left unfilled stay ``{name}``
patterns for Snakemake) and read the wildcards back with :func:`wildcards`.
"""

from __future__ import annotations

import re
import string
from typing import Any

# ---------------------------------------------------------------- names

SPLITS = ("train", "val", "test")
DIRECTIONS = ("t2i", "i2t")
DIRECTION_NAMES = {"t2i": "text → image", "i2t": "image → text"}
#: The fixed-embedding protocols (rule retrieval_protocol).
PROTOCOLS = ("subset", "full", "multicaption")
#: The protocol of the learned stage's rows: its test split.
LEARNED_PROTOCOL = "learned_test"
FIXED_METRICS = ("cosine", "euclidean", "manhattan", "chi2")
CALIBRATED_METRICS = ("centered_cosine", "csls", "qbnorm")
#: The paper's MLPs, each with its loss.
MLP_VARIANTS = {"mlp_mse": "mse", "mlp_contrastive": "contrastive", "mlp_down": "mse"}
#: Every learned variant: the paper's MLPs and the alignment heads.
VARIANTS = (*MLP_VARIANTS, "align", "align_linear")
#: Representational similarity of the two spaces (mmalign.representation).
SIMILARITY_MEASURES = ("cka", "mutual_knn", "cknna")
#: Figures 2-5 per (dataset, encoder), drawn by the geometry rule.
GEOMETRY_FIGURES = ("tsne", "cosine_matrix", "retrieval_t2i", "retrieval_i2t")
#: Figures 2-5 in the alignment heads' shared space (rule aligned_geometry, when the
#: ``align`` variant runs), by the geometry figure each stands beside.
ALIGNED_FIGURES = {name: f"aligned_{name}" for name in GEOMETRY_FIGURES}
FIGURE_FORMATS = ("png", "pdf")
#: The files of one embeddings folder.
EMBEDDING_FILES = ("image.npy", "text.npy", "images.parquet", "texts.parquet", "meta.json")

# ---------------------------------------------------------------- paths

RESULTS = "results"
DATASET = f"{RESULTS}/{{dataset}}"
UNIT = f"{DATASET}/{{encoder}}"

ARTIFACTS: dict[str, str] = {
    # data
    "manifest": f"{DATASET}/manifest.parquet",
    "prepare_report": f"{DATASET}/prepare.json",
    "skipped": f"{DATASET}/skipped.csv",
    # embed
    "shard": f"{UNIT}/shards/{{scatteritem}}.npz",
    "embeddings": f"{UNIT}/embeddings",
    "embedding_file": f"{UNIT}/embeddings/{{file}}",
    # retrieval
    "protocol_rows": f"{UNIT}/retrieval/{{protocol}}.parquet",
    "protocol_ranks": f"{UNIT}/retrieval/{{protocol}}.ranks.parquet",
    "protocol_hubness": f"{UNIT}/retrieval/{{protocol}}.hubness.parquet",
    "retrieval": f"{UNIT}/retrieval.parquet",
    "ranks": f"{UNIT}/ranks.parquet",
    "hubness": f"{UNIT}/hubness.parquet",
    "extreme_queries": f"{UNIT}/extreme_queries.parquet",
    "paired": f"{RESULTS}/stats/paired.parquet",
    # geometry
    "geometry": f"{UNIT}/geometry.json",
    "tsne": f"{UNIT}/tsne.parquet",
    "tsne_boundary": f"{UNIT}/tsne_boundary.parquet",
    "figure": f"{UNIT}/figures/{{name}}.{{ext}}",
    "tsne_grid": f"{RESULTS}/figures/tsne_grid.{{ext}}",
    "precision_upper_bounds": f"{RESULTS}/figures/precision_upper_bounds.{{ext}}",
    "aligned_geometry": f"{UNIT}/aligned_geometry.json",
    # representational similarity
    "similarity": f"{UNIT}/alignment.json",
    # gap shift
    "gap_shift": f"{UNIT}/gap_shift.parquet",
    "gap_shift_ranks": f"{UNIT}/gap_shift.ranks.parquet",
    # learn
    "variant_summary": f"{UNIT}/learn/{{variant}}.json",
    "variant_rows": f"{UNIT}/learn/{{variant}}.parquet",
    "variant_weights": f"{UNIT}/learn/{{variant}}.safetensors",
    "variant_trials": f"{UNIT}/learn/{{variant}}.trials.parquet",
    "variant_ranks": f"{UNIT}/learn/{{variant}}.ranks.parquet",
    "variant_hubness": f"{UNIT}/learn/{{variant}}.hubness.parquet",
    "variant_study": f"{UNIT}/learn/{{variant}}.optuna",
    "ablation": f"{UNIT}/learn/ablation.parquet",
    "ablation_ranks": f"{UNIT}/learn/ablation.ranks.parquet",
    "ablation_curves": f"{UNIT}/learn/ablation_curves.parquet",
    # report and tracking
    "report": f"{RESULTS}/report.md",
    "tables": f"{RESULTS}/tables",
    "mlflow_runs": f"{RESULTS}/mlflow_runs.json",
    "mlflow_artifacts": f"{RESULTS}/mlartifacts",
    "mlflow_db": f"{RESULTS}/mlflow.db",
}


class _Keep(dict):
    """Formatting values that leave an unfilled ``{wildcard}`` as it is."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def path(artifact: str, **wildcards: Any) -> str:
    """The path of ``artifact``; wildcards not given stay ``{name}`` patterns."""
    try:
        template = ARTIFACTS[artifact]
    except KeyError:
        raise KeyError(f"no artifact {artifact!r}; known: {', '.join(ARTIFACTS)}") from None
    return string.Formatter().vformat(template, (), _Keep(wildcards))


def log(rule: str, *wildcards: str) -> str:
    """A rule's log: ``results/logs/{rule}/{wildcard}/...log`` (wildcards as patterns)."""
    return "/".join([RESULTS, "logs", rule, *(f"{{{w}}}" for w in wildcards)]) + (
        ".log" if wildcards else f"/{rule}.log"
    )


def benchmark(rule: str, *wildcards: str) -> str:
    """A rule's benchmark file, beside its log under ``results/benchmarks``."""
    return log(rule, *wildcards).replace("/logs/", "/benchmarks/", 1)[: -len(".log")] + ".tsv"


def match(template: str, file: str) -> dict[str, str] | None:
    """The wildcards of ``file`` if it ends as ``template`` (``{name}`` patterns), else None."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(
        f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    found = re.search(f"(?:^|/)({pattern})$", str(file))
    return None if found is None else found.groupdict()


def wildcards(artifact: str, file: str) -> dict[str, str]:
    """The wildcards ``file`` was made from (the inverse of :func:`path`)."""
    found = match(ARTIFACTS[artifact], file)
    if found is None:
        raise ValueError(f"{file} is not a {artifact!r} file ({ARTIFACTS[artifact]})")
    return found


def unit_of(artifact: str, file: str) -> tuple[str, str]:
    """The (dataset, encoder) of a per-unit file."""
    found = wildcards(artifact, file)
    return found["dataset"], found["encoder"]


def embedding_files(**wildcards: Any) -> list[str]:
    """The files of one embeddings folder."""
    return [path("embedding_file", file=name, **wildcards) for name in EMBEDDING_FILES]


def figures(name: str, **wildcards: Any) -> list[str]:
    """A per-unit figure in every format."""
    return [path("figure", name=name, ext=ext, **wildcards) for ext in FIGURE_FORMATS]
