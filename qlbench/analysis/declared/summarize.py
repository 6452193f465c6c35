"""The summary table (mean and sample sd of the eval loss over seeds per configuration), its figure against bits,
and the cost of each configuration."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.registry import Analysis

ANALYSIS = Analysis(
    name="summarize",
    summary="eval loss per configuration (mean, sd over seeds), its figure against bits, and the cost table",
    needs=["cells"],
    outputs={
        "table": "summary.md",
        "csv": "summary.csv",
        "efficiency": "efficiency.md",
        "table_html": "summary.html",
        "efficiency_html": "efficiency.html",
        "figure": "figures/eval_loss_vs_bits.png",
    },
    report={
        "table_html": (
            "Quality",
            "Tables",
            "Eval loss after LoRA per configuration (model, bits, rank, mask): mean and standard deviation over "
            "seeds."
        ),
        "efficiency_html": (
            "Efficiency",
            "Tables",
            "Cost per configuration: peak memory, time per step, tokens per second, trainable parameters and bits per"
            " parameter."
        ),
        "figure": (
            "Quality",
            "",
            "Eval loss (mean next-token cross-entropy on held-out data) after LoRA fine-tuning, against the bit width"
            " of the quantized layers; 16 means the base is not quantized. One line per model, rank and mask; error "
            "bars are the standard deviation over seeds."
        ),
    },
)


def run(job) -> str:
    o = job.outputs
    return run_summary(job.inputs["cells"], o["table"], o["csv"], o["figure"], o["efficiency"])


def run_summary(cells_parquet: Path, table_path: Path, csv_path: Path, figure_path: Path,
                efficiency_path: Path | None) -> str:
    from qlbench.analysis import efficiency, summary
    from qlbench.analysis.figures import eval_loss_vs_bits
    from qlbench.analysis.tables import html
    from qlbench.results import atomic_path

    cells = pl.read_parquet(cells_parquet)
    study = cells["study"][0]
    table = summary.by_config(cells)
    title = f"{study}: eval loss after LoRA (mean and sd over seeds)"
    with atomic_path(table_path) as tmp:
        tmp.write_text(summary.markdown(table, title))
    with atomic_path(table_path.with_suffix(".html")) as tmp:
        tmp.write_text(html(table, title))
    with atomic_path(csv_path) as tmp:
        table.write_csv(tmp)
    with atomic_path(figure_path) as tmp:
        eval_loss_vs_bits(table, tmp.with_suffix(".png"), f"{study}: eval loss against bits")
        tmp.with_suffix(".png").replace(tmp)
    if efficiency_path:
        cost = efficiency.table(cells)
        with atomic_path(efficiency_path) as tmp:
            tmp.write_text(summary.markdown(cost, f"{study}: cost per configuration"))
        with atomic_path(efficiency_path.with_suffix(".html")) as tmp:
            tmp.write_text(html(cost, f"{study}: cost per configuration"))
    return f"{study}: {table.height} configurations -> {table_path}"
