"""The serving formats' cost: each configuration's merged model in each `deploy` format, with intervals over seeds
(qlbench.analysis.deployed)."""

from __future__ import annotations

from qlbench.registry import Analysis

ANALYSIS = Analysis(
    name="deploy_cost",
    summary="eval loss of the merged model in each deploy format and its cost over the 16-bit merge, 95% intervals",
    needs=["cells"],
    outputs={"table": "deploy_cost.md", "csv": "deploy_cost.csv", "table_html": "deploy_cost.html"},
    applies="deploy",
    report={"table_html": ("Quality", "Tables", "The merged model requantized in each deploy format (deployed_eval_"
                                                "loss) and its cost over the merged 16-bit model: means over seeds "
                                                "with 95% t-intervals.")},
)


def run(job) -> str:
    import polars as pl

    from qlbench.analysis import deployed
    from qlbench.analysis.summary import markdown
    from qlbench.analysis.tables import html
    from qlbench.results import atomic_path

    cells = pl.read_parquet(job.inputs["cells"])
    table = deployed.table(cells)
    study = cells["study"][0] if cells.height else "?"
    title = f"{study}: the merged model in each deploy format (mean and 95% interval over seeds)"
    o = job.outputs
    with atomic_path(o["table"]) as tmp:
        tmp.write_text(markdown(table, title))
    with atomic_path(o["table_html"]) as tmp:
        tmp.write_text(html(table, title))
    with atomic_path(o["csv"]) as tmp:
        table.write_csv(tmp)
    return f"{study}: {table.height} configuration x format rows -> {o['table']}"
