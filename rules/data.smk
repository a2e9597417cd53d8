rule prepare:
    output:
        manifest="results/{dataset}/manifest.parquet",
        report="results/{dataset}/prepare.json",
        skipped="results/{dataset}/skipped.csv",
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}.tsv"
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        # A change to the dataset's config, or to the seed that draws its random
        # split and max_images subset, re-runs the rule (params rerun trigger).
        dataset=dataset_config,
        seed=config["seed"],
    script:
        "../scripts/prepare.py"


FINAL_TARGETS.extend(expand("results/{dataset}/manifest.parquet", dataset=DATASETS))
