"""Means over seeds with their spread: sd and the 95% t-interval's half-width (polars; the t quantile is stats')."""

from __future__ import annotations

import polars as pl

from qlbench.analysis.stats import ci95_halfwidth


def mean_ci(frame: pl.DataFrame, group: list[str], metrics) -> pl.DataFrame:
    """Per group: `seeds`, and for each metric its mean, `<metric>_sd` and `<metric>_ci95` (NaN from one seed)."""
    aggs = [pl.len().alias("seeds")]
    for m in metrics:
        aggs += [pl.col(m).mean().alias(m), pl.col(m).std().alias(f"{m}_sd")]
    out = frame.group_by(group, maintain_order=True).agg(aggs)
    return out.with_columns([
        pl.struct([f"{m}_sd", "seeds"]).map_elements(lambda r, m=m: ci95_halfwidth(r[f"{m}_sd"], r["seeds"]),
                                                     return_dtype=pl.Float64).alias(f"{m}_ci95")
        for m in metrics])
