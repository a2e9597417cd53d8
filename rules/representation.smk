# Beyond the paper: how similar the two embedding spaces are, pair by pair
# (CKA, CKNNA, mutual k-NN; mmalign.representation), in the raw space and in
# the alignment heads' shared space.


rule representation_similarity:
    input:
        embeddings=layout.embedding_files(),
        heads=aligned_heads,
    output:
        path("similarity"),
    log:
        layout.log("representation_similarity", "dataset", "encoder"),
    benchmark:
        layout.benchmark("representation_similarity", "dataset", "encoder")
    conda:
        "../envs/torch.yaml"
    threads: analysis_threads(2)
    resources:
        mem_mb=scaled("representation_similarity", "mem_mb", config),
        runtime=scaled("representation_similarity", "runtime", config),
    params:
        alignment=config["alignment"],
        learn=LEARN_CONFIG,
        seed=config["seed"],
    script:
        "../scripts/representation_similarity.py"


FINAL_TARGETS.extend(per_unit("similarity"))
