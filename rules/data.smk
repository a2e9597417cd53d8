# The data stage: a dataset's images and captions -> its manifest (mmalign.datasets).


rule prepare:
    output:
        manifest=path("manifest"),
        report=report(
            path("prepare_report"),
            caption="../report/prepare.rst",
            category="Data",
            subcategory="{dataset}",
            labels={"file": "preparation summary"},
        ),
        skipped=report(
            path("skipped"),
            caption="../report/skipped.rst",
            category="Data",
            subcategory="{dataset}",
            labels={"file": "skipped inputs"},
        ),
    log:
        layout.log("prepare", "dataset"),
    benchmark:
        layout.benchmark("prepare", "dataset")
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


FINAL_TARGETS.extend(expand(path("manifest"), dataset=DATASETS))
