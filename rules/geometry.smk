# The geometry stage (paper Section 4.3, Table 2, Figures 2-5, Appendix A):
# modality gap, Wasserstein-2, cosine statistics, t-SNE and retrieval examples.
# Per (dataset, encoder): Figures 2-5 (mmalign.plots.FIGURE_NAMES), as PNG and PDF.
GEOMETRY_FIGURES = ["tsne", "cosine_matrix", "retrieval_t2i", "retrieval_i2t"]


rule geometry:
    input:
        embeddings=embedding_files("results/{dataset}/{encoder}/embeddings"),
        manifest="results/{dataset}/manifest.parquet",
    output:
        summary="results/{dataset}/{encoder}/geometry.json",
        tsne="results/{dataset}/{encoder}/tsne.parquet",
        figures=expand(
            "results/{{dataset}}/{{encoder}}/figures/{name}.{ext}",
            name=GEOMETRY_FIGURES,
            ext=["png", "pdf"],
        ),
    log:
        "results/logs/geometry/{dataset}/{encoder}.log",
    benchmark:
        "results/benchmarks/geometry/{dataset}/{encoder}.tsv"
    conda:
        "../envs/torch.yaml"
    # Exact W2 batches run in parallel, one process each (~0.6 GB per 5,000-pair batch).
    threads: 8
    resources:
        mem_mb=16000,
        runtime=240,
    params:
        geometry=config["geometry"],
        seed=config["seed"],
    script:
        "../scripts/geometry.py"


rule tsne_grid:
    input:
        summaries=expand(
            "results/{dataset}/{encoder}/geometry.json",
            dataset=DATASETS,
            encoder=ENCODERS,
        ),
        points=expand(
            "results/{dataset}/{encoder}/tsne.parquet",
            dataset=DATASETS,
            encoder=ENCODERS,
        ),
    output:
        png="results/figures/tsne_grid.png",
        pdf="results/figures/tsne_grid.pdf",
    log:
        "results/logs/tsne_grid/tsne_grid.log",
    benchmark:
        "results/benchmarks/tsne_grid/tsne_grid.tsv"
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        # The same order as expand() gives the inputs: datasets outer, encoders inner.
        panels=[[d, e] for d in DATASETS for e in ENCODERS],
        datasets=DATASETS,
        encoders=ENCODERS,
    script:
        "../scripts/geometry_grid.py"


rule precision_upper_bounds:
    output:
        png="results/figures/precision_upper_bounds.png",
        pdf="results/figures/precision_upper_bounds.pdf",
    log:
        "results/logs/precision_upper_bounds/precision_upper_bounds.log",
    conda:
        "../envs/torch.yaml"
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


FINAL_TARGETS.extend(
    expand(
        "results/{dataset}/{encoder}/geometry.json",
        dataset=DATASETS,
        encoder=ENCODERS,
    )
)
FINAL_TARGETS.extend(
    [
        "results/figures/tsne_grid.png",
        "results/figures/precision_upper_bounds.png",
    ]
)
