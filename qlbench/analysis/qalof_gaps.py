"""What QaLoF's table can decide: each gap it turns on, paired by seed, with a 95% interval and a verdict.

A gap is configuration B minus configuration A of the same trained cells (same model, rank and training schedule,
the same seed): e.g. 4-bit static PTQ minus FP LoRA is the FP model evaluated at 4 bits minus itself at 16. Per
gap and metric: the mean over seeds, a 95% t interval, and the verdict: `B < A` or `B > A` where the interval
excludes zero, else `not established with N seeds`. The layer-wise scan's agreement with the scan retrained per
mask is the Spearman correlation of the two per-unit drops within each seed, with the same interval over seeds;
`agree` or `disagree` where it excludes zero.
"""

from __future__ import annotations

import polars as pl

from qlbench.analysis import qalof
from qlbench.analysis.seeds import mean_ci
from qlbench.analysis.stats import spearman

# (the question, A, B): the gap is B - A
GAPS = (
    ("8-bit static PTQ vs FP", "FP LoRA", "8-bit static PTQ"),
    ("4-bit static PTQ vs FP", "FP LoRA", "4-bit static PTQ"),
    ("LoRA on the 4-bit base vs FP LoRA", "FP LoRA", "LoRA, 4-bit base"),
    ("switchable: all-4 vs all-8", "switchable, all-8", "switchable, all-4"),
    ("switchable: hybrid vs all-4", "switchable, all-4", "switchable, hybrid"),
    ("CPT: 4 bits vs 8 bits", "CPT at 8 bits", "CPT at 4 bits"),
)
KEYS = ["model", "rank", "schedule", "seed"]
SCHEMA = {"model": pl.String, "rank": pl.Int64, "schedule": pl.String, "gap": pl.String, "a": pl.String,
          "b": pl.String, "metric": pl.String, "seeds": pl.Int64, "mean": pl.Float64, "ci95": pl.Float64,
          "low": pl.Float64, "high": pl.Float64, "verdict": pl.String}


def verdict(mean: float, ci95: float, seeds: int, below: str, above: str) -> str:
    """`below`/`above` where the 95% interval lies wholly below/above zero; else not established."""
    if seeds < 2 or ci95 != ci95:  # NaN: one seed gives no interval
        return f"not established with {seeds} seed{'s' if seeds != 1 else ''}"
    if mean + ci95 < 0:
        return below
    if mean - ci95 > 0:
        return above
    return f"not established with {seeds} seeds"


def _interval(mean: float, ci95: float, seeds: int, below: str, above: str) -> dict:
    return {"seeds": seeds, "mean": mean, "ci95": ci95, "low": mean - ci95, "high": mean + ci95,
            "verdict": verdict(mean, ci95, seeds, below, above)}


def gaps(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (model, rank, schedule, gap, metric) whose two configurations share seeds."""
    per_seed = qalof.configurations(cells)
    rows = []
    for question, a, b in GAPS:
        pa = per_seed.filter(pl.col("configuration") == a).drop("configuration")
        pb = per_seed.filter(pl.col("configuration") == b).drop("configuration")
        paired = pb.join(pa, on=KEYS, suffix="_a")  # static cells (FP, PTQ, LoRA) share the schedule `none`
        if paired.is_empty():
            continue
        diffs = paired.select(*KEYS, *[(pl.col(m) - pl.col(f"{m}_a")).alias(m) for m in qalof.METRICS])
        summary = mean_ci(diffs, ["model", "rank", "schedule"], qalof.METRICS)
        for r in summary.iter_rows(named=True):
            for m in qalof.METRICS:
                rows.append({"model": r["model"], "rank": r["rank"], "schedule": r["schedule"], "gap": question,
                             "a": a, "b": b, "metric": m,
                             **_interval(r[m], r[f"{m}_ci95"], r["seeds"], f"{b} < {a}", f"{b} > {a}")})
    return pl.DataFrame(rows, schema=SCHEMA)


def agreement(cells: pl.DataFrame, metric: str = "f1") -> pl.DataFrame:
    """The scan's and the retrained scan's per-unit drops, Spearman within each seed, mean and 95% t interval over
    seeds, and the verdict (agree: the interval above zero)."""
    scanned, retrained = qalof.drops(cells, metric)
    if scanned.is_empty() or retrained.is_empty():
        return pl.DataFrame(schema={**SCHEMA, "units": pl.Int64})
    both = scanned.join(retrained, on=["model", "rank", "mask", "seed"])
    rows = []
    for (model, rank, seed), g in both.group_by(["model", "rank", "seed"], maintain_order=True):
        if g.height > 2:
            rows.append({"model": model, "rank": rank, "seed": seed, "units": g.height,
                         "spearman": spearman(g["scan_drop"].to_list(), g["retrain_drop"].to_list())})
    per_seed = pl.DataFrame(rows, schema={"model": pl.String, "rank": pl.Int64, "seed": pl.Int64,
                                          "units": pl.Int64, "spearman": pl.Float64})
    summary = mean_ci(per_seed.drop_nans("spearman"), ["model", "rank"], ["spearman"])
    units = per_seed.group_by("model", "rank").agg(pl.col("units").max())
    out = []
    for r in summary.join(units, on=["model", "rank"]).iter_rows(named=True):
        out.append({"model": r["model"], "rank": r["rank"], "schedule": "scan vs retrained",
                    "gap": f"layer-wise scan vs retrained scan ({metric} drops)", "a": "scan", "b": "retrained",
                    "metric": "spearman",
                    **_interval(r["spearman"], r["spearman_ci95"], r["seeds"], "disagree", "agree"),
                    "units": r["units"]})
    return pl.DataFrame(out, schema={**SCHEMA, "units": pl.Int64})
