# The report (mmalign.report): the paper's tables and report.md; and
# MLflow (mmalign.tracking): one run per (dataset, encoder), a child per stage.


rule report:
    input:
        unpack(report_inputs),
    output:
        report=report(
            path("report"),
            caption="../report/report_md.rst",
            category="Report",
            subcategory="summary",
            labels={"file": "report.md"},
        ),
        tables=report(
            directory(path("tables")),
            patterns=["{table}.{format}"],
            caption="../report/tables.rst",
            category=table_stage,
            subcategory="tables",
            labels={"table": "{table}", "format": "{format}"},
        ),
    log:
        layout.log("report"),
    conda:
        "../envs/analysis.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    script:
        "../scripts/report.py"


rule track:
    input:
        FINAL_TARGETS,
        unpack(track_inputs),
    output:
        path("mlflow_runs"),
    log:
        layout.log("track"),
    conda:
        "../envs/tracking.yaml"
    # The only job that writes the MLflow store: one SQLite writer at a time.
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        commit=git_commit(workflow.basedir),
        artifacts=path("mlflow_artifacts"),
    script:
        "../scripts/track.py"


FINAL_TARGETS_WITH_TRACKING = [*FINAL_TARGETS, path("report"), path("mlflow_runs")]
