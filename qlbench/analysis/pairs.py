"""Pair every quantized cell with its reference cell of the same seed (polars only)."""

from __future__ import annotations

import polars as pl

SEEDED = ["model", "n_train", "targets", "rank", "seed"]


def with_reference(cells: pl.DataFrame, metric: str = "eval_loss") -> pl.DataFrame:
    """Quantized rows with `ref_<metric>` and `delta_<metric>`: against the `none` mask at the same bits when the
    study has one (everything at high_bits), otherwise against the 16-bit cell of the same model, rank and seed."""
    keys = [k for k in SEEDED if k in cells.columns]
    quantized = cells.filter(pl.col("bits") < 16)
    sixteen = cells.filter(pl.col("bits") == 16).select(*keys, pl.col(metric).alias("ref16"))
    none = quantized.filter(pl.col("mask") == "none").select(*keys, "bits", pl.col(metric).alias("ref_none"))
    out = (
        quantized.filter(pl.col("mask") != "none")
        .join(sixteen, on=keys, how="left", nulls_equal=True)
        .join(none, on=[*keys, "bits"], how="left", nulls_equal=True)
        .with_columns(pl.coalesce("ref_none", "ref16").alias(f"ref_{metric}"))
        .drop("ref_none", "ref16")
        .filter(pl.col(f"ref_{metric}").is_not_null())
    )
    return out.with_columns((pl.col(metric) - pl.col(f"ref_{metric}")).alias(f"delta_{metric}"))
