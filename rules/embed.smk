# The embedding stage (mmalign.embed): shard by shard, merged, and adapted
# (an encoder with an `adapter` projects another encoder's embeddings); or, for
# `kind: precomputed`, read from files made elsewhere (mmalign.precomputed).


rule embed_shard:
    input:
        manifest=path("manifest"),
    output:
        temp(path("shard")),
    log:
        layout.log("embed_shard", "dataset", "encoder", "scatteritem"),
    benchmark:
        layout.benchmark("embed_shard", "dataset", "encoder", "scatteritem")
    wildcard_constraints:
        encoder=names_regex(COMPUTED),
    conda:
        "../envs/torch.yaml"
    # On a GPU, one decoding worker beside the main process; on the CPU one thread
    # decodes and runs the frozen graph (as fast per core, and shards run side by side).
    threads: 2 if EMBED_GPU else 1
    resources:
        **EMBED_GPU,
        mem_mb=scaled("embed_shard", "mem_mb", config, MANIFESTS),
        runtime=scaled("embed_shard", "runtime", config, MANIFESTS),
    params:
        encoder=encoder_config,
        embed=config["embed"],
        seed=config["seed"],
    script:
        "../scripts/embed_shard.py"


rule embed_merge:
    input:
        manifest=path("manifest"),
        shards=gather.embed(path("shard", dataset="{{dataset}}", encoder="{{encoder}}")),
    output:
        embedding_outputs(),
    log:
        layout.log("embed_merge", "dataset", "encoder"),
    benchmark:
        layout.benchmark("embed_merge", "dataset", "encoder")
    wildcard_constraints:
        encoder=names_regex(COMPUTED),
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=scaled("embed_merge", "mem_mb", config),
        runtime=scaled("embed_merge", "runtime", config),
    params:
        encoder=encoder_config,
    script:
        "../scripts/embed_merge.py"


rule embed_precomputed:
    input:
        manifest=path("manifest"),
        files=precomputed_files,
    output:
        embedding_outputs(),
    log:
        layout.log("embed_precomputed", "dataset", "encoder"),
    benchmark:
        layout.benchmark("embed_precomputed", "dataset", "encoder")
    wildcard_constraints:
        encoder=names_regex(PRECOMPUTED),
    conda:
        "../envs/data.yaml"
    threads: 1
    resources:
        mem_mb=scaled("embed_precomputed", "mem_mb", config),
        runtime=scaled("embed_precomputed", "runtime", config),
    params:
        encoder=encoder_config,
    script:
        "../scripts/embed_precomputed.py"


rule adapt:
    input:
        raw=adapter_source,
    output:
        embedding_outputs(),
    log:
        layout.log("adapt", "dataset", "encoder"),
    benchmark:
        layout.benchmark("adapt", "dataset", "encoder")
    wildcard_constraints:
        encoder=names_regex(ADAPTED_FROM),
    # A few seconds that unblock every job of the adapted encoder: run it first.
    priority: 10
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=scaled("adapt", "mem_mb", config),
        runtime=scaled("adapt", "runtime", config),
    params:
        encoder=encoder_config,
    script:
        "../scripts/adapt.py"


FINAL_TARGETS.extend(per_unit("embedding_file", file="meta.json"))
