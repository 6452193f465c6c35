"""What each configuration costs: memory, time, throughput, trainable parameters, bits per parameter."""

from __future__ import annotations

import polars as pl

KEYS = ["model", "backend", "format", "bits", "rank", "mask", "targets"]


def table(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per configuration: medians over seeds of time and throughput, maxima of memory."""
    keys = [k for k in KEYS if k in cells.columns]
    wanted = {
        "step_time_s": pl.col("step_time_s").median().alias("step_time_ms") * 1000,
        "tokens_per_s": pl.col("tokens_per_s").median(),
        "peak_mem_mb": pl.col("peak_mem_mb").max(),
        "weight_mem_mb": pl.col("weight_mem_mb").max(),
        "bits_per_param": pl.col("bits_per_param").max(),
        "trainable_params": pl.col("trainable_params").max(),
        "device": pl.col("device").first(),
    }
    aggs = [expr for column, expr in wanted.items() if column in cells.columns]
    return cells.group_by(keys).agg(pl.len().alias("cells"), *aggs).sort(
        keys, descending=[k == "bits" for k in keys])
