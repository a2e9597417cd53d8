rule embed_shard:
    input:
        manifest="results/{dataset}/manifest.parquet",
    output:
        temp("results/{dataset}/{encoder}/shards/{scatteritem}.npz"),
    log:
        "results/logs/embed_shard/{dataset}/{encoder}/{scatteritem}.log",
    benchmark:
        "results/benchmarks/embed_shard/{dataset}/{encoder}/{scatteritem}.tsv"
    wildcard_constraints:
        encoder=names_regex(COMPUTED),
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        encoder=encoder_config,
        embed=config["embed"],
        seed=config["seed"],
    script:
        "../scripts/embed_shard.py"


rule embed_merge:
    input:
        manifest="results/{dataset}/manifest.parquet",
        shards=gather.embed("results/{{dataset}}/{{encoder}}/shards/{scatteritem}.npz"),
    output:
        embedding_files("results/{dataset}/{encoder}/embeddings"),
    log:
        "results/logs/embed_merge/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/embed_merge/{dataset}/{encoder}.tsv"
    wildcard_constraints:
        encoder=names_regex(COMPUTED),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        encoder=encoder_config,
    script:
        "../scripts/embed_merge.py"


rule adapt:
    input:
        raw=adapter_source,
    output:
        embedding_files("results/{dataset}/{encoder}/embeddings"),
    log:
        "results/logs/adapt/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/adapt/{dataset}/{encoder}.tsv"
    wildcard_constraints:
        encoder=names_regex(ADAPTED_FROM),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=60,
    params:
        encoder=encoder_config,
    script:
        "../scripts/adapt.py"


FINAL_TARGETS.extend(
    expand(
        "results/{dataset}/{encoder}/embeddings/meta.json",
        dataset=DATASETS,
        encoder=ENCODERS,
    )
)
