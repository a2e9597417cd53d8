rule retrieval_protocol:
    input:
        embedding_files("results/{dataset}/{encoder}/embeddings"),
    output:
        temp("results/{dataset}/{encoder}/retrieval/{protocol}.parquet"),
    log:
        "results/logs/retrieval/{dataset}/{encoder}/{protocol}.log",
    benchmark:
        "results/benchmarks/retrieval/{dataset}/{encoder}/{protocol}.tsv"
    wildcard_constraints:
        protocol="|".join(PROTOCOLS),
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        retrieval=config["retrieval"],
        seed=config["seed"],
    script:
        "../scripts/retrieval.py"


rule retrieval:
    input:
        expand(
            "results/{{dataset}}/{{encoder}}/retrieval/{protocol}.parquet",
            protocol=config["retrieval"]["protocols"],
        ),
        # The learned variants' test-split rows (rules/learn.smk), appended.
        expand(
            "results/{{dataset}}/{{encoder}}/learn/{variant}.parquet",
            variant=config["learn"]["variants"],
        ),
    output:
        "results/{dataset}/{encoder}/retrieval.parquet",
    log:
        "results/logs/retrieval/{dataset}/{encoder}/combine.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/combine_tables.py"


rule significance:
    input:
        expand(
            "results/{dataset}/{encoder}/retrieval.parquet",
            dataset=DATASETS,
            encoder=ENCODERS,
        ),
    output:
        "results/stats/significance.parquet",
    log:
        "results/logs/significance.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/significance.py"


FINAL_TARGETS.extend(
    expand(
        "results/{dataset}/{encoder}/retrieval.parquet",
        dataset=DATASETS,
        encoder=ENCODERS,
    )
)
FINAL_TARGETS.append("results/stats/significance.parquet")
