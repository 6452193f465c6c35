"""The cost of serving formats: each cell's merged model requantized in its study's `deploy` formats
(`qlbench.cell.deployed`), per configuration and format — the eval loss as served and what the format costs over the
merged 16-bit model (deployed − merged, paired by cell), means over seeds with 95% t-intervals. Answers "which GGUF
type can my fine-tune afford". Polars only, no torch."""

from __future__ import annotations

import math

import polars as pl

from qlbench.analysis.stats import ci95_halfwidth

CONFIG = ["model", "bits", "rank", "mask"]
COLUMNS = {"model": pl.String, "bits": pl.Int64, "rank": pl.Int64, "mask": pl.String, "deploy": pl.String,
           "seeds": pl.Int64, "merged_eval_loss": pl.Float64, "deployed_eval_loss": pl.Float64,
           "deployed_ci95": pl.Float64, "cost": pl.Float64, "cost_ci95": pl.Float64}


def long(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (cell, deploy format): `deployed_eval_loss` (one format, named by `deploy`) or the
    `deployed_eval_loss@NAME` columns of a sweep."""
    parts = []
    keep = [c for c in (*CONFIG, "seed", "merged_eval_loss") if c in cells.columns]
    if "deployed_eval_loss" in cells.columns:
        parts.append(cells.select(*keep, pl.col("deploy"), pl.col("deployed_eval_loss").cast(pl.Float64)))
    for col in (c for c in cells.columns if c.startswith("deployed_eval_loss@")):
        parts.append(cells.select(*keep, pl.lit(col.partition("@")[2]).alias("deploy"),
                                  pl.col(col).cast(pl.Float64).alias("deployed_eval_loss")))
    return pl.concat(parts) if parts else pl.DataFrame()


def table(cells: pl.DataFrame) -> pl.DataFrame:
    rows = []
    frame = long(cells)
    if frame.is_empty():
        return pl.DataFrame(schema=COLUMNS)
    frame = frame.filter(pl.col("deployed_eval_loss").is_not_nan())
    for key, g in frame.group_by([*CONFIG, "deploy"], maintain_order=True):
        cost = (g["deployed_eval_loss"] - g["merged_eval_loss"]).drop_nans()
        rows.append({**dict(zip([*CONFIG, "deploy"], key)), "seeds": g.height,
                     "merged_eval_loss": g["merged_eval_loss"].mean(), "deployed_eval_loss": g["deployed_eval_loss"].mean(),
                     "deployed_ci95": ci95_halfwidth(_sd(g["deployed_eval_loss"]), g.height),
                     "cost": cost.mean() if len(cost) else math.nan,
                     "cost_ci95": ci95_halfwidth(_sd(cost), len(cost))})
    out = pl.DataFrame(rows, schema=COLUMNS)
    return out.sort(["model", "bits", "rank", "mask", "cost"], descending=[False, True, False, False, False])


def _sd(values: pl.Series) -> float:
    sd = values.std()
    return float("nan") if sd is None else float(sd)
