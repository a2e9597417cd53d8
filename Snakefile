# mmalign: how image and text embeddings align, and how well they retrieve.
# The Snakefile only loads and validates the config, includes the stages and
# names the final targets; helpers live in rules/common.smk, logic in src/mmalign.
from snakemake.utils import min_version

min_version("9.0")


# config.yaml is the default; --configfile replaces it rather than merging
# into it, so `--configfile configs/paper.yaml` studies the paper's grid only.
if not workflow.overwrite_configfiles:

    configfile: "config.yaml"


# `snakemake --report report.html` after a run: every figure and table, grouped
# by stage, with the captions under report/ (see the README).
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/embed.smk"
include: "rules/retrieval.smk"
include: "rules/geometry.smk"
include: "rules/learn.smk"
include: "rules/representation.smk"
include: "rules/gap_shift.smk"
include: "rules/report.smk"


rule all:
    default_target: True
    input:
        FINAL_TARGETS_WITH_TRACKING,
