"""Layer-wise sensitivity: how much each block or module hurts when it alone drops to low bits.

Degradation of a cell = its eval loss minus its reference's (the `none` mask at the same bits, everything at
high_bits; else the 16-bit cell), paired by seed. Per mask: mean, 95% confidence interval over seeds, rank (1 = most
sensitive) and how stable that ranking is across seeds (mean pairwise Spearman). Then a mixed-precision
recommendation: the least sensitive masks to drop to low bits under a budget.
"""

from __future__ import annotations

import itertools
import math
import re

import numpy as np
import polars as pl

from qlbench.analysis.pairs import with_reference

GROUP = ["model", "n_train", "rank", "bits"]
# two-sided 95% Student t quantiles for 1..10 degrees of freedom; 1.96 beyond
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def level(mask: str) -> str:
    if re.fullmatch(r"b\d+", mask):
        return "block"
    if re.fullmatch(r"b\d+\.[A-Za-z_.]+", mask):
        return "module"
    return "other"


def ranking(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, n_train, rank, bits, mask) of single-block or single-module masks."""
    paired = with_reference(cells).filter(pl.col("mask") != "all")
    paired = paired.with_columns(pl.col("mask").map_elements(level, return_dtype=pl.String).alias("level"))
    paired = paired.filter(pl.col("level") != "other")
    if paired.is_empty():
        return pl.DataFrame()
    group = [g for g in GROUP if g in paired.columns] + ["level"]
    summary = (
        paired.group_by(*group, "mask")
        .agg(pl.col("delta_eval_loss").mean().alias("degradation"),
             pl.col("delta_eval_loss").std().alias("sd"), pl.len().alias("seeds"))
        .with_columns(
            (pl.col("seeds").map_elements(lambda n: T95.get(n - 1, 1.96), return_dtype=pl.Float64)
             * pl.col("sd") / pl.col("seeds").sqrt()).alias("ci95"),
            pl.col("degradation").rank("ordinal", descending=True).over(group).alias("rank_measured"),
        )
    )
    stability = _seed_stability(paired, group)
    return summary.join(stability, on=group, how="left", nulls_equal=True).sort(*group, "rank_measured")


def with_estimates(ranked: pl.DataFrame, probes: pl.DataFrame) -> pl.DataFrame:
    """Add each mask's one-pass estimate (the sum over its modules, mean over seeds) and the Spearman agreement
    of the estimated ranking with the measured one, per group."""
    if ranked.is_empty() or probes.is_empty():
        return ranked
    parts = probes["module"].str.extract_groups(r"\.(\d+)\.(.+)$")
    modules = probes.with_columns(parts.struct.field("1").cast(pl.Int64).alias("block"),
                                  parts.struct.field("2").alias("suffix"))
    keys = [k for k in ("model", "n_train", "rank") if k in ranked.columns]
    per_module = modules.group_by(*keys, "block", "suffix").agg(pl.col("estimate").mean())
    block_mask = per_module.group_by(*keys, "block").agg(pl.col("estimate").sum()).with_columns(
        pl.format("b{}", "block").alias("mask"))
    module_mask = per_module.with_columns(pl.format("b{}.{}", "block", "suffix").alias("mask"))
    estimates = pl.concat([block_mask.select(*keys, "mask", "estimate"), module_mask.select(*keys, "mask", "estimate")])
    out = ranked.join(estimates, on=[*keys, "mask"], how="left", nulls_equal=True)
    group = [g for g in GROUP if g in out.columns] + ["level"]
    out = out.with_columns(pl.col("estimate").rank("ordinal", descending=True).over(group).alias("rank_estimated"))
    agreement = out.group_by(group).agg(
        pl.corr("rank_measured", "rank_estimated", method="pearson").alias("estimate_spearman"))
    return out.join(agreement, on=group, how="left", nulls_equal=True).sort(*group, "rank_measured")


def _seed_stability(paired: pl.DataFrame, group: list[str]) -> pl.DataFrame:
    rows = []
    for key, g in paired.group_by(group, maintain_order=True):
        by_seed = {s: dict(zip(d["mask"], d["delta_eval_loss"])) for (s,), d in g.group_by(["seed"])}
        masks = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if by_seed else []
        rhos = [_spearman([a[m] for m in masks], [b[m] for m in masks])
                for a, b in itertools.combinations(by_seed.values(), 2)] if len(masks) > 2 else []
        rows.append({**dict(zip(group, key)), "rank_stability": float(np.mean(rhos)) if rhos else None})
    schema = {**{g: paired.schema[g] for g in group}, "rank_stability": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _spearman(a: list[float], b: list[float]) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def recommend(ranked: pl.DataFrame, budget_fraction: float) -> pl.DataFrame:
    """Per group and level: which masks to drop to low bits so that at least `budget_fraction` of them are low,
    minimising the summed measured degradation. Masks of one level count alike, so the exact optimum of this
    0/1 program is the least sensitive ones."""
    rows = []
    group = [g for g in GROUP if g in ranked.columns] + ["level"]
    for key, g in ranked.group_by(group, maintain_order=True):
        k = math.ceil(budget_fraction * g.height)
        chosen = g.sort("degradation").head(k)
        masks = sorted(chosen["mask"].to_list(), key=lambda m: (len(m), m))
        rows.append({**dict(zip(group, key)), "budget_fraction": budget_fraction, "low_bit_masks": k,
                     "mask": "+".join(masks) or "none",
                     "predicted_degradation": float(chosen["degradation"].sum())})
    return pl.DataFrame(rows, schema_overrides={g: ranked.schema[g] for g in group})


def validate(cells: pl.DataFrame, recommendation: pl.DataFrame, validation_cells: pl.DataFrame) -> pl.DataFrame:
    """The recommended masks, run: their measured degradation (mean over seeds) beside the predicted one."""
    everything = pl.concat([cells, validation_cells], how="diagonal_relaxed").unique(
        subset=[c for c in ("model", "n_train", "bits", "rank", "mask", "seed") if c in cells.columns])
    paired = with_reference(everything)
    keys = [k for k in ("model", "n_train", "rank", "bits", "mask") if k in recommendation.columns]
    measured = paired.group_by(keys).agg(pl.col("delta_eval_loss").mean().alias("measured_degradation"),
                                         pl.len().alias("seeds"))
    return recommendation.join(measured, on=keys, how="left", nulls_equal=True)
