"""Layer-wise sensitivity: how much each block or module hurts when it alone drops to low bits.

Degradation of a cell = its eval loss minus its reference's (the `none` mask at the same bits, everything at
high_bits; else the 16-bit cell), paired by seed. Per mask: mean, 95% confidence interval over seeds, rank (1 = most
sensitive) and how stable that ranking is across seeds (mean pairwise Spearman). Then a mixed-precision
recommendation: a bit width per block or module under an average-bits budget, weighted by each one's parameter
count, as an exact integer program (pulp + CBC); or, as a shorthand, the least sensitive fraction of them.
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import polars as pl

from qlbench.analysis.pairs import with_reference
from qlbench.analysis.stats import spearman, spearman_test, t_quantile
from qlbench.study import masks as masklang

GROUP = ["model", "n_train", "rank", "bits"]


def level(mask: str) -> str:
    return masklang.single_block_or_module(mask) or "other"


HIGHER_IS_BETTER = ("em", "f1", "eval_em", "eval_f1", "eval_accuracy", "accuracy")


def task_metric(cells: pl.DataFrame) -> str:
    """What a study's sensitivity ranks by: the task's metric (F1 for extractive QA), else the eval loss."""
    if "task" in cells.columns and set(cells["task"].drop_nulls().unique()) == {"extractive_qa"}:
        return "f1"
    return "eval_loss"


def ranking(cells: pl.DataFrame, metric: str = "eval_loss") -> pl.DataFrame:
    """One row per (model, n_train, rank, bits, mask) of single-block or single-module masks. `degradation` is how
    much worse `metric` is than the reference's: a loss's rise, or a score's (EM, F1) fall."""
    sign = -1.0 if metric in HIGHER_IS_BETTER else 1.0
    paired = with_reference(cells, metric).filter(pl.col("mask") != "all")
    paired = paired.with_columns((sign * pl.col(f"delta_{metric}")).alias("worse"))  # per seed: worse than ref by
    paired = paired.with_columns(pl.col("mask").map_elements(level, return_dtype=pl.String).alias("level"))
    paired = paired.filter(pl.col("level") != "other")
    if paired.is_empty():
        return pl.DataFrame()
    group = [g for g in GROUP if g in paired.columns] + ["level"]
    summary = (
        paired.group_by(*group, "mask")
        .agg(pl.col("worse").mean().alias("degradation"),
             pl.col("worse").std().alias("sd"), pl.len().alias("seeds"))
        .with_columns(
            (pl.col("seeds").map_elements(lambda n: t_quantile(0.975, n - 1) if n > 1 else None,
                                          return_dtype=pl.Float64)
             * pl.col("sd") / pl.col("seeds").sqrt()).alias("ci95"),
            pl.col("degradation").rank("ordinal", descending=True).over(group).alias("rank_measured"),
        )
    )
    stability = _seed_stability(paired, group)
    return summary.join(stability, on=group, how="left", nulls_equal=True).sort(*group, "rank_measured")


def with_estimates(ranked: pl.DataFrame, probes: pl.DataFrame) -> pl.DataFrame:
    """Add each mask's one-pass estimates (the sum over its modules, mean over seeds): `estimate` (empirical
    Fisher × noise) and, where the probes hold it, `hessian_estimate` (Hutchinson trace × noise, HAWQ-V2); and per
    group the Spearman agreement of each estimated ranking with the measured one, with its one-sided permutation
    probability (exact for up to 8 masks) and a 95% CI (`estimate_spearman`, `estimate_p`, `estimate_ci_lo/hi`;
    `hessian_*` likewise)."""
    if ranked.is_empty() or probes.is_empty():
        return ranked
    parts = probes["module"].str.extract_groups(r"\.(\d+)\.(.+)$")
    modules = probes.with_columns(parts.struct.field("1").cast(pl.Int64).alias("block"),
                                  parts.struct.field("2").alias("suffix"))
    keys = [k for k in ("model", "n_train", "rank") if k in ranked.columns]
    kinds = [c for c in ("estimate", "hessian_estimate") if c in probes.columns and probes[c].is_not_null().any()]
    per_module = modules.group_by(*keys, "block", "suffix").agg(*(pl.col(c).mean() for c in kinds))
    block_mask = per_module.group_by(*keys, "block").agg(*(pl.col(c).sum() for c in kinds)).with_columns(
        pl.format("b{}", "block").alias("mask"))
    module_mask = per_module.with_columns(pl.format("b{}.{}", "block", "suffix").alias("mask"))
    estimates = pl.concat([block_mask.select(*keys, "mask", *kinds), module_mask.select(*keys, "mask", *kinds)])
    out = ranked.join(estimates, on=[*keys, "mask"], how="left", nulls_equal=True)
    group = [g for g in GROUP if g in out.columns] + ["level"]
    out = out.with_columns(pl.col("estimate").rank("ordinal", descending=True).over(group).alias("rank_estimated"))
    rows = []
    for key, g in out.group_by(group, maintain_order=True):
        row = dict(zip(group, key))
        for c in kinds:
            prefix = "estimate" if c == "estimate" else "hessian"
            ok = g.filter(pl.col(c).is_not_null() & pl.col("degradation").is_not_null())
            t = spearman_test(ok["degradation"].to_numpy(), ok[c].to_numpy())
            row |= {f"{prefix}_spearman": t["rho"], f"{prefix}_p": t["p"], f"{prefix}_ci_lo": t["ci_lo"],
                    f"{prefix}_ci_hi": t["ci_hi"]}
        rows.append(row)
    agreement = pl.DataFrame(rows, schema_overrides={g: out.schema[g] for g in group})
    return out.join(agreement, on=group, how="left", nulls_equal=True).sort(*group, "rank_measured")


def _seed_stability(paired: pl.DataFrame, group: list[str]) -> pl.DataFrame:
    rows = []
    for key, g in paired.group_by(group, maintain_order=True):
        by_seed = {s: dict(zip(d["mask"], d["worse"])) for (s,), d in g.group_by(["seed"])}
        masks = sorted(set.intersection(*(set(v) for v in by_seed.values()))) if by_seed else []
        rhos = [spearman([a[m] for m in masks], [b[m] for m in masks])
                for a, b in itertools.combinations(by_seed.values(), 2)] if len(masks) > 2 else []
        rows.append({**dict(zip(group, key)), "rank_stability": float(np.mean(rhos)) if rhos else None})
    schema = {**{g: paired.schema[g] for g in group}, "rank_stability": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


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


def sizes(probes: pl.DataFrame) -> pl.DataFrame:
    """Parameters per block and per module mask (`b3`, `b3.attn.c_attn`) from the probes' `numel`, per model."""
    if probes.is_empty() or "numel" not in probes.columns or probes["numel"].is_null().all():
        return pl.DataFrame()
    parts = probes["module"].str.extract_groups(r"\.(\d+)\.(.+)$")
    per_module = (probes.with_columns(parts.struct.field("1").cast(pl.Int64).alias("block"),
                                      parts.struct.field("2").alias("suffix"))
                  .group_by("model", "block", "suffix").agg(pl.col("numel").first()))
    modules = per_module.select("model", pl.format("b{}.{}", "block", "suffix").alias("mask"), "numel")
    blocks = per_module.group_by("model", "block").agg(pl.col("numel").sum()).select(
        "model", pl.format("b{}", "block").alias("mask"), "numel")
    return pl.concat([modules, blocks])


def solve_bits(cost: dict[str, dict[int, float]], numel: dict[str, int], high_bits: int, budget_bits: float
               ) -> tuple[dict[str, int], str]:
    """The exact integer program: one width per unit u (from the widths it was measured at, or high_bits at
    no cost) minimising Σ cost[u][w], subject to Σ numel[u]·w ≤ budget_bits·Σ numel[u]. Solved by CBC."""
    import warnings

    import pulp

    units = sorted(cost)
    options = {u: sorted(set(cost[u]) | {high_bits}) for u in units}
    prob = pulp.LpProblem("bits", pulp.LpMinimize)
    x = {(u, w): prob.add_variable(f"x{i}_{w}", cat="Binary") for i, u in enumerate(units) for w in options[u]}
    prob += pulp.lpSum(cost[u].get(w, 0.0) * x[u, w] for u in units for w in options[u])
    for u in units:
        prob += pulp.lpSum(x[u, w] for w in options[u]) == 1
    total = sum(numel[u] for u in units)
    prob += pulp.lpSum(numel[u] * w * x[u, w] for u in units for w in options[u]) <= budget_bits * total
    with warnings.catch_warnings():  # pulp 3 announces that 4 will ship CBC as an extra (pulp[cbc])
        warnings.simplefilter("ignore", DeprecationWarning)
        prob.solve(pulp.PULP_CBC_CMD(msg=False))
    status = pulp.LpStatus[prob.status]
    if status != "Optimal":
        return {}, status
    return {u: next(w for w in options[u] if x[u, w].value() > 0.5) for u in units}, status


def recommend_bits(ranked: pl.DataFrame, module_sizes: pl.DataFrame, budget_bits: float, high_bits: int
                   ) -> pl.DataFrame:
    """Per (model, n_train, rank, level): a width per block or module (from the widths scanned; the rest at
    high_bits) whose parameter-weighted average bits is at most `budget_bits`, minimising the summed measured
    degradation (assumed additive over units). One row per group: the bit map, its average bits, the predicted
    degradation, and — when it uses one low width — the mask and bits a validation cell runs it as."""
    if module_sizes.is_empty():
        raise ValueError("a bit budget needs each module's size: probes.parquet with `numel` (reference cells "
                         "with probe_bits > 0)")
    group = [g for g in ("model", "n_train", "rank") if g in ranked.columns] + ["level"]
    sized = ranked.join(module_sizes, on=["model", "mask"], how="left")
    rows = []
    for key, g in sized.group_by(group, maintain_order=True):
        if g["numel"].is_null().any():
            raise ValueError(f"no size for {g.filter(pl.col('numel').is_null())['mask'][0]}")
        cost: dict[str, dict[int, float]] = {}
        for r in g.iter_rows(named=True):
            cost.setdefault(r["mask"], {})[int(r["bits"])] = float(r["degradation"])
        numel = dict(zip(g["mask"], g["numel"]))
        chosen, status = solve_bits(cost, numel, high_bits, budget_bits)
        low = sorted({w for w in chosen.values() if w != high_bits})
        total = sum(numel.values())
        masks = sorted((u for u, w in chosen.items() if w != high_bits), key=lambda m: (len(m), m))
        rows.append({**dict(zip(group, key)), "budget_bits": budget_bits, "solver": status,
                     "bit_map": json.dumps({u: chosen[u] for u in sorted(chosen)}),
                     "avg_bits": sum(numel[u] * w for u, w in chosen.items()) / total if chosen else None,
                     "low_bit_masks": len(masks),
                     "bits": low[0] if len(low) == 1 else (min(low) if low else high_bits),
                     "mask": "+".join(masks) or "none",
                     "runnable": len(low) <= 1,  # one cell is one low width: a map of several needs layer_bits
                     "predicted_degradation": sum(cost[u].get(w, 0.0) for u, w in chosen.items())})
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
