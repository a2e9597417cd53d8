# Beyond the paper, per (dataset, encoder): how aligned the two spaces are
# (mmalign.alignment), whether closing the modality gap helps retrieval
# (mmalign.gapshift), and why the paper's MLP fails (mmalign.learn.ablation).


rule alignment:
    input:
        embeddings=embedding_files("results/{dataset}/{encoder}/embeddings"),
        heads=aligned_heads,
    output:
        "results/{dataset}/{encoder}/alignment.json",
    log:
        "results/logs/alignment/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/alignment/{dataset}/{encoder}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        alignment=config["alignment"],
        learn=LEARN_CONFIG,
        seed=config["seed"],
    script:
        "../scripts/alignment.py"


rule gap_shift:
    input:
        embeddings=embedding_files("results/{dataset}/{encoder}/embeddings"),
        heads=aligned_heads,
    output:
        rows="results/{dataset}/{encoder}/gap_shift.parquet",
        ranks="results/{dataset}/{encoder}/gap_shift.ranks.parquet",
        figures=expand(
            "results/{{dataset}}/{{encoder}}/figures/gap_shift.{ext}",
            ext=["png", "pdf"],
        ),
    log:
        "results/logs/gap_shift/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/gap_shift/{dataset}/{encoder}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        gap_shift=config["gap_shift"],
        retrieval=config["retrieval"],
        learn=LEARN_CONFIG,
        seed=config["seed"],
    script:
        "../scripts/gap_shift.py"


FINAL_TARGETS.extend(
    expand(
        "results/{dataset}/{encoder}/{name}",
        dataset=DATASETS,
        encoder=ENCODERS,
        name=["alignment.json", "gap_shift.parquet"],
    )
)


rule mlp_ablation:
    input:
        embedding_files("results/{dataset}/{encoder}/embeddings"),
    output:
        rows="results/{dataset}/{encoder}/learn/ablation.parquet",
        ranks="results/{dataset}/{encoder}/learn/ablation.ranks.parquet",
        curves="results/{dataset}/{encoder}/learn/ablation_curves.parquet",
        figures=expand(
            "results/{{dataset}}/{{encoder}}/figures/mlp_ablation.{ext}",
            ext=["png", "pdf"],
        ),
    log:
        "results/logs/mlp_ablation/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/mlp_ablation/{dataset}/{encoder}.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        learn=config["learn"],
        retrieval=config["retrieval"],
        seed=config["seed"],
    script:
        "../scripts/mlp_ablation.py"


if config["learn"]["ablation"]["enabled"]:

    FINAL_TARGETS.extend(
        expand(
            "results/{dataset}/{encoder}/learn/ablation.parquet",
            dataset=DATASETS,
            encoder=ENCODERS,
        )
    )
