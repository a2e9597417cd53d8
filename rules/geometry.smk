# The geometry stage (paper Section 4.3, Table 2, Figures 2-5, Appendix A;
# mmalign.geometry): modality gap, Wasserstein-2, cosine statistics, t-SNE and
# retrieval examples, per (dataset, encoder); the t-SNE grid over all of them.


rule geometry:
    input:
        embeddings=layout.embedding_files(),
        manifest=path("manifest"),
    output:
        summary=path("geometry"),
        tsne=path("tsne"),
        boundary=path("tsne_boundary"),
        figures=[
            f
            for name in layout.GEOMETRY_FIGURES
            for f in reported_figures(name, "Geometry", GEOMETRY_SUBCATEGORIES[name])
        ],
    log:
        layout.log("geometry", "dataset", "encoder"),
    benchmark:
        layout.benchmark("geometry", "dataset", "encoder")
    conda:
        "../envs/torch.yaml"
    # Exact W2 batches run in parallel, one process each (~0.6 GB per 5,000-pair batch).
    threads: analysis_threads(8)
    resources:
        mem_mb=scaled("geometry", "mem_mb", config),
        runtime=scaled("geometry", "runtime", config),
    params:
        geometry=config["geometry"],
        seed=config["seed"],
        # The n/a figures name their aligned-space counterparts.
        aligned=ALIGNED,
    script:
        "../scripts/geometry.py"


rule tsne_grid:
    input:
        summaries=per_unit("geometry"),
        points=per_unit("tsne"),
        boundaries=per_unit("tsne_boundary"),
    output:
        **{
            ext: report_png(
                path("tsne_grid", ext=ext),
                "tsne_grid",
                "Geometry",
                "t-SNE grid (Fig. 2)",
                labels={"figure": "every dataset × encoder"},
            )
            for ext in layout.FIGURE_FORMATS
        },
    log:
        layout.log("tsne_grid"),
    benchmark:
        layout.benchmark("tsne_grid")
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # The same order as per_unit() gives the inputs: datasets outer, encoders inner.
        panels=[[d, e] for d in DATASETS for e in ENCODERS],
        datasets=DATASETS,
        encoders=ENCODERS,
    script:
        "../scripts/tsne_grid.py"


rule precision_upper_bounds:
    output:
        **{
            ext: report_png(
                path("precision_upper_bounds", ext=ext),
                "precision_upper_bounds",
                "Geometry",
                "precision upper bounds (Appendix A)",
                labels={"figure": "best possible P@K"},
            )
            for ext in layout.FIGURE_FORMATS
        },
    log:
        layout.log("precision_upper_bounds"),
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        # Paper Appendix A: Flickr30K and MS-COCO have five captions per image.
        k_max=10,
        captions_per_image=5,
    script:
        "../scripts/precision_upper_bounds.py"


# Figures 2-5 in the alignment heads' shared space (mmalign.geometry.aligned), on
# the learned stage's test split: t-SNE before and after the heads, the cosine
# matrix and the retrieval examples, per (dataset, encoder) when align runs.


rule aligned_geometry:
    input:
        embeddings=layout.embedding_files(),
        manifest=path("manifest"),
        heads=path("variant_weights", variant="align"),
    output:
        summary=path("aligned_geometry"),
        # Each PNG in the Snakemake report, captioned by report/<name>.rst.
        figures=[
            f
            for name in layout.ALIGNED_FIGURES.values()
            for f in reported_figures(name, "Geometry", "aligned space")
        ],
    log:
        layout.log("aligned_geometry", "dataset", "encoder"),
    benchmark:
        layout.benchmark("aligned_geometry", "dataset", "encoder")
    conda:
        "../envs/torch.yaml"
    threads: analysis_threads(2)
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        geometry=config["geometry"],
        learn=LEARN_CONFIG,
        seed=config["seed"],
    script:
        "../scripts/aligned_geometry.py"


FINAL_TARGETS.extend(per_unit("geometry"))
FINAL_TARGETS.extend(per_unit("aligned_geometry") if ALIGNED else [])
FINAL_TARGETS.extend(
    [path("tsne_grid", ext="png"), path("precision_upper_bounds", ext="png")]
)
