# The learned stage (paper Section 3 Eq. 1-4, Section 4.5, Tables 3, 4, 6) and
# post-hoc alignment heads (mmalign.learn): one job per (dataset, encoder,
# variant). The retrieval rows, per-query ranks and hubness it writes are
# appended to retrieval.parquet, ranks.parquet and hubness.parquet (rule retrieval).


rule learn:
    input:
        layout.embedding_files(),
    output:
        **{
            name: path(f"variant_{name}")
            for name in ("summary", "rows", "weights", "trials", "ranks", "hubness")
        },
    log:
        layout.log("learn", "dataset", "encoder", "variant"),
    benchmark:
        layout.benchmark("learn", "dataset", "encoder", "variant")
    wildcard_constraints:
        variant=names_regex(LEARN_VARIANTS),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **LEARN_GPU,
        mem_mb=scaled("learn", "mem_mb", config),
        runtime=scaled("learn", "runtime", config),
    params:
        learn=LEARN_CONFIG,
        retrieval=config["retrieval"],
        seed=config["seed"],
        # The Optuna journal is deliberately not an output: Snakemake deletes
        # the outputs of a failed job, and the journal is what lets a killed
        # search resume (completed trials are not re-run).
        study_dir=path("variant_study"),
    script:
        "../scripts/learn.py"


FINAL_TARGETS.extend(
    expand(
        path("variant_summary"),
        dataset=DATASETS,
        encoder=ENCODERS,
        variant=LEARN_VARIANTS,
    )
)


# Beyond the paper: why the paper's MLP fails (mmalign.learn.ablation), one
# factor of its recipe changed at a time.


rule mlp_ablation:
    input:
        layout.embedding_files(),
    output:
        rows=path("ablation"),
        ranks=path("ablation_ranks"),
        curves=path("ablation_curves"),
        figures=reported_figures("mlp_ablation", "Learned", "MLP ablation"),
    log:
        layout.log("mlp_ablation", "dataset", "encoder"),
    benchmark:
        layout.benchmark("mlp_ablation", "dataset", "encoder")
    # The longest jobs after embedding: started first, the short ones fill the
    # other core beside them instead of leaving them to run alone at the end.
    priority: 5
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        **LEARN_GPU,
        mem_mb=scaled("mlp_ablation", "mem_mb", config),
        runtime=scaled("mlp_ablation", "runtime", config),
    params:
        learn=config["learn"],
        retrieval=config["retrieval"],
        seed=config["seed"],
    script:
        "../scripts/mlp_ablation.py"


FINAL_TARGETS.extend(ablation_files("ablation"))
