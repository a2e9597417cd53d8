# The retrieval stage (mmalign.retrieval): every metric, both directions, per
# protocol; combined with the learned variants' test-split rows; the per-query
# error analysis; and the paired tests across encoders, metrics and spaces.


rule retrieval_protocol:
    input:
        layout.embedding_files(),
    output:
        rows=temp(path("protocol_rows")),
        ranks=temp(path("protocol_ranks")),
        hubness=temp(path("protocol_hubness")),
    log:
        layout.log("retrieval_protocol", "dataset", "encoder", "protocol"),
    benchmark:
        layout.benchmark("retrieval_protocol", "dataset", "encoder", "protocol")
    wildcard_constraints:
        protocol=names_regex(layout.PROTOCOLS),
    conda:
        "../envs/torch.yaml"
    threads: analysis_threads(2)
    resources:
        **SCORING_GPU,
        mem_mb=scaled("retrieval_protocol", "mem_mb", config),
        runtime=scaled("retrieval_protocol", "runtime", config),
    params:
        retrieval=config["retrieval"],
        seed=config["seed"],
        captions=lambda wc: config["datasets"][wc.dataset].get("captions"),
    script:
        "../scripts/retrieval_protocol.py"


rule retrieval:
    input:
        # Each protocol's files, then the learned variants' test-split files.
        **{
            name: [
                *[path(f"protocol_{name}", protocol=p) for p in PROTOCOLS_RUN],
                *[path(f"variant_{name}", variant=v) for v in LEARN_VARIANTS],
            ]
            for name in ("rows", "ranks", "hubness")
        },
    output:
        rows=path("retrieval"),
        ranks=path("ranks"),
        hubness=path("hubness"),
    log:
        layout.log("retrieval", "dataset", "encoder"),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=scaled("retrieval", "mem_mb", config),
        runtime=scaled("retrieval", "runtime", config),
    script:
        "../scripts/retrieval.py"


rule error_analysis:
    input:
        ranks=path("ranks"),
        manifest=path("manifest"),
    output:
        queries=path("extreme_queries"),
        figures=reported_figures("recall_at_k", "Retrieval", "recall@K curves"),
    log:
        layout.log("error_analysis", "dataset", "encoder"),
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=scaled("error_analysis", "mem_mb", config),
        runtime=scaled("error_analysis", "runtime", config),
    script:
        "../scripts/error_analysis.py"


rule paired:
    input:
        unpack(paired_inputs),
    output:
        path("paired"),
    log:
        layout.log("paired"),
    benchmark:
        layout.benchmark("paired")
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=scaled("paired", "mem_mb", config),
        runtime=scaled("paired", "runtime", config),
    params:
        retrieval=config["retrieval"],
        seed=config["seed"],
    script:
        "../scripts/paired.py"


for artifact in ("retrieval", "ranks", "hubness", "extreme_queries"):
    FINAL_TARGETS.extend(per_unit(artifact))
FINAL_TARGETS.append(path("paired"))
