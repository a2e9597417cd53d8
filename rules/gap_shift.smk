# Beyond the paper: whether closing the modality gap helps retrieval
# (mmalign.gapshift): both modalities shifted towards each other by lambda.


rule gap_shift:
    input:
        embeddings=layout.embedding_files(),
        heads=aligned_heads,
    output:
        rows=path("gap_shift"),
        ranks=path("gap_shift_ranks"),
        figures=reported_figures("gap_shift", "Gap shift", "sweep"),
    log:
        layout.log("gap_shift", "dataset", "encoder"),
    benchmark:
        layout.benchmark("gap_shift", "dataset", "encoder")
    conda:
        "../envs/torch.yaml"
    threads: analysis_threads(2)
    resources:
        **SCORING_GPU,
        mem_mb=scaled("gap_shift", "mem_mb", config),
        runtime=scaled("gap_shift", "runtime", config),
    params:
        gap_shift=config["gap_shift"],
        retrieval=config["retrieval"],
        learn=LEARN_CONFIG,
        seed=config["seed"],
    script:
        "../scripts/gap_shift.py"


FINAL_TARGETS.extend(per_unit("gap_shift"))
