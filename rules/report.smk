rule report:
    input:
        unpack(report_inputs),
    output:
        report="results/report.md",
        tables=directory("results/tables"),
    log:
        "results/logs/report.log",
    conda:
        "../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/report.py"


rule track:
    input:
        FINAL_TARGETS,
        report="results/report.md",
    output:
        "results/mlflow_runs.json",
    log:
        "results/logs/track.log",
    conda:
        "../envs/torch.yaml"
    # The only job that writes the MLflow store: one SQLite writer at a time.
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        commit=git_commit(workflow.basedir),
    script:
        "../scripts/track.py"


FINAL_TARGETS_WITH_TRACKING = [
    *FINAL_TARGETS,
    "results/report.md",
    "results/mlflow_runs.json",
]
