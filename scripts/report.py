"""Rule `report`: the paper's tables (CSV + Markdown) and results/report.md."""

from pathlib import Path

import pandas as pd

from mmalign.layout import unit_of
from mmalign.logs import setup_logging
from mmalign.report import build_report, load_units, unit_figure_order

if __name__ == "__main__":
    setup_logging(snakemake.log[0])
    inputs = snakemake.input
    build_report(
        results=pd.concat([pd.read_parquet(p) for p in inputs.retrieval], ignore_index=True),
        geometry=load_units("geometry", inputs.geometry),
        paired=pd.read_parquet(inputs.paired),
        tables_dir=Path(snakemake.output.tables),
        report_path=Path(snakemake.output.report),
        figures={
            "Figures: t-SNE grid; precision@K upper bounds": list(inputs.figures),
            "Figures per dataset and encoder (t-SNE, cosines, retrieval examples, each "
            "beside its counterpart in the alignment heads' space (aligned_*: the test "
            "split; t-SNE before and after the heads); gap shift, MLP ablation, recall@K "
            "curves)": unit_figure_order(inputs.unit_figures),
        },
        alignment=load_units("similarity", inputs.similarity),
        gap_shift=pd.concat([pd.read_parquet(p) for p in inputs.gap_shift], ignore_index=True),
        queries={unit_of("extreme_queries", p): pd.read_parquet(p) for p in inputs.queries},
        hubness=pd.concat([pd.read_parquet(p) for p in inputs.hubness], ignore_index=True),
        ablation=pd.concat([pd.read_parquet(p) for p in inputs.ablation], ignore_index=True)
        if inputs.ablation
        else None,
    )
