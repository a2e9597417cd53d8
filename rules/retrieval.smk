rule retrieval_protocol:
    input:
        embedding_files("results/{dataset}/{encoder}/embeddings"),
    output:
        rows=temp("results/{dataset}/{encoder}/retrieval/{protocol}.parquet"),
        ranks=temp("results/{dataset}/{encoder}/retrieval/{protocol}.ranks.parquet"),
        hubness=temp("results/{dataset}/{encoder}/retrieval/{protocol}.hubness.parquet"),
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
        captions=lambda wc: config["datasets"][wc.dataset].get("captions"),
    script:
        "../scripts/retrieval.py"


rule retrieval:
    input:
        # Each protocol's files, then the learned variants' test-split files
        # (rules/learn.smk), appended.
        **{
            name: [
                *expand(
                    "results/{{dataset}}/{{encoder}}/retrieval/{protocol}{suffix}.parquet",
                    protocol=config["retrieval"]["protocols"],
                    suffix=suffix,
                ),
                *expand(
                    "results/{{dataset}}/{{encoder}}/learn/{variant}{suffix}.parquet",
                    variant=config["learn"]["variants"],
                    suffix=suffix,
                ),
            ]
            for name, suffix in (
                ("rows", ""),
                ("ranks", ".ranks"),
                ("hubness", ".hubness"),
            )
        },
    output:
        rows="results/{dataset}/{encoder}/retrieval.parquet",
        ranks="results/{dataset}/{encoder}/ranks.parquet",
        hubness="results/{dataset}/{encoder}/hubness.parquet",
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


rule error_analysis:
    input:
        ranks="results/{dataset}/{encoder}/ranks.parquet",
        manifest="results/{dataset}/manifest.parquet",
    output:
        queries="results/{dataset}/{encoder}/extreme_queries.parquet",
        figures=expand(
            "results/{{dataset}}/{{encoder}}/figures/recall_at_k.{ext}",
            ext=["png", "pdf"],
        ),
    log:
        "results/logs/error_analysis/{dataset}/{encoder}.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    script:
        "../scripts/error_analysis.py"


rule paired:
    input:
        unpack(paired_inputs),
    output:
        "results/stats/paired.parquet",
    log:
        "results/logs/paired.log",
    benchmark:
        "results/benchmarks/paired.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        retrieval=config["retrieval"],
        seed=config["seed"],
    script:
        "../scripts/paired.py"


FINAL_TARGETS.extend(
    expand(
        "results/{dataset}/{encoder}/{name}",
        dataset=DATASETS,
        encoder=ENCODERS,
        name=[
            "retrieval.parquet",
            "ranks.parquet",
            "hubness.parquet",
            "extreme_queries.parquet",
        ],
    )
)
FINAL_TARGETS.append("results/stats/paired.parquet")
