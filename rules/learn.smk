# The learned stage (paper Section 3 Eq. 1-4, Section 4.5, Tables 3, 4, 6) and
# post-hoc alignment heads: one job per (dataset, encoder, variant). The
# retrieval rows, per-query ranks and hubness it writes are appended to
# retrieval.parquet, ranks.parquet and hubness.parquet (rules/retrieval.smk).
LEARN_VARIANTS = config["learn"]["variants"]


rule learn:
    input:
        embedding_files("results/{dataset}/{encoder}/embeddings"),
    output:
        summary="results/{dataset}/{encoder}/learn/{variant}.json",
        rows="results/{dataset}/{encoder}/learn/{variant}.parquet",
        weights="results/{dataset}/{encoder}/learn/{variant}.safetensors",
        trials="results/{dataset}/{encoder}/learn/{variant}.trials.parquet",
        ranks="results/{dataset}/{encoder}/learn/{variant}.ranks.parquet",
        hubness="results/{dataset}/{encoder}/learn/{variant}.hubness.parquet",
    log:
        "results/logs/learn/{dataset}/{encoder}/{variant}.log",
    benchmark:
        "results/benchmarks/learn/{dataset}/{encoder}/{variant}.tsv"
    wildcard_constraints:
        variant=names_regex(LEARN_VARIANTS),
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        learn=LEARN_CONFIG,
        retrieval=config["retrieval"],
        seed=config["seed"],
        # The Optuna journal is deliberately not an output: Snakemake deletes
        # the outputs of a failed job, and the journal is what lets a killed
        # search resume (completed trials are not re-run).
        study_dir="results/{dataset}/{encoder}/learn/{variant}.optuna",
    script:
        "../scripts/learn.py"


FINAL_TARGETS.extend(
    expand(
        "results/{dataset}/{encoder}/learn/{variant}.json",
        dataset=DATASETS,
        encoder=ENCODERS,
        variant=LEARN_VARIANTS,
    )
)
