"""The summary table: eval loss (mean ± sd over seeds) per model, n_train, LoRA targets, bits, rank and mask."""

from __future__ import annotations

import polars as pl

KEYS = ["model", "n_train", "targets", "bits", "rank", "mask"]


def by_config(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: mean and sd over seeds of each headline metric."""
    keys = [k for k in KEYS if k in cells.columns]
    return (
        cells.group_by(keys)
        .agg(
            pl.len().alias("seeds"),
            (pl.col("status") == "diverged").sum().alias("diverged"),
            pl.col("eval_loss_before").mean().alias("eval_loss_before"),
            pl.col("eval_loss").mean().alias("eval_loss_mean"),
            pl.col("eval_loss").std().alias("eval_loss_sd"),
            pl.col("eval_ppl").mean().alias("eval_ppl"),
            pl.col("step_time_s").median().alias("step_time_s"),
            pl.col("peak_mem_mb").max().alias("peak_mem_mb"),
        )
        .sort([k for k in ("model", "n_train", "targets", "rank", "bits", "mask") if k in keys],
              descending=[k == "bits" for k in ("model", "n_train", "targets", "rank", "bits", "mask") if k in keys])
    )


def markdown(table: pl.DataFrame, title: str) -> str:
    cols = table.columns
    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in table.iter_rows():
        lines.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    return "\n".join(lines) + "\n"


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if v != v else f"{v:.4f}"
    return "–" if v is None else str(v)
