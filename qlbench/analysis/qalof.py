"""QaLoF's tables from cells: EM/F1 per configuration, and its layer-wise scan beside the scan retrained per mask.

A row of a cell yields several configurations (polars only, no torch):
- its own widths: `FP LoRA` (16 bits) or `LoRA, b-bit base`;
- `eval_<metric>_b<w>` columns: a full-precision cell at w bits without retraining is `w-bit static PTQ`; a
  switchable cell is `switchable, all-w`; a CPT cell `CPT at w bits`;
- `eval_<metric>_random_switch`: random precision inference (a width per forward pass) of that model;
- a named per-layer map (`eval_maps`), e.g. `switchable, hybrid`.
Each row names the schedule its cell trained under (`schedule`: cyclic, random or sequential for a switchable
cell, CPT's cycle, none), so switchable rows of different schedules stay apart. Mean and a 95% t interval over
seeds. The scan: a unit's drop is its scan score below the scan's base (all at
`rest`); the retrained drop is the mask cell's below the `none` cell (all at high bits), paired by seed; the two
rankings' Spearman agreement and what each cost (seconds of cells and of scanning).
"""

from __future__ import annotations

import json
import re

import polars as pl

from qlbench.analysis.seeds import mean_ci
from qlbench.analysis.stats import spearman

METRICS = ("em", "f1")
_COLUMN = re.compile(r"^eval_(em|f1)_(.+)$")


def kind(settings: dict) -> str:
    if settings.get("switch_bits"):
        return "switchable"
    if settings.get("cpt_bits"):
        return "CPT"
    return "static"


def schedule(settings: dict) -> str:
    """How a cell's training changed widths: a switchable cell's `switch_schedule` (cyclic, random, or QaLoF's
    sequential), CPT's cycle shape, or none (static)."""
    if settings.get("switch_bits"):
        return settings.get("switch_schedule", "cyclic")
    if settings.get("cpt_bits"):
        return f"CPT {settings.get('cpt_schedule', 'cosine')}"
    return "none"


def label(kind_: str, bits: int, config: str, mask: str = "all") -> str | None:
    """The table's name for a configuration of a cell (None: not a row of QaLoF's table)."""
    if config == "own":
        if kind_ == "static":
            if bits == 16:
                return "FP LoRA"
            # a cell of one block or module at `bits` (the retrained scan) is no uniform-width LoRA
            return f"LoRA, {bits}-bit base" if mask == "all" else None
        return None  # a switchable or CPT cell's own width is one of its b<w> configurations
    if config.startswith("scan_"):
        return None
    width = re.fullmatch(r"b(\d+)", config)
    if kind_ == "static":
        if bits != 16:
            return None
        if width:
            return f"{width.group(1)}-bit static PTQ"
        return "FP, random precision" if config == "random_switch" else f"FP, {config}"
    if width:
        return f"switchable, all-{width.group(1)}" if kind_ == "switchable" else f"CPT at {width.group(1)} bits"
    return f"{kind_}, {'random precision' if config == 'random_switch' else config}"


def configurations(cells: pl.DataFrame) -> pl.DataFrame:
    """One row per (configuration, seed): EM and F1 of every configuration every cell reports."""
    rows = []
    for r in cells.iter_rows(named=True):
        settings = json.loads(r["settings_json"])
        k, how = kind(settings), schedule(settings)
        configs = {"own": {m: r.get(m) for m in METRICS}}
        for column, value in r.items():
            match = _COLUMN.match(column)
            if match and value is not None:
                configs.setdefault(match.group(2), {})[match.group(1)] = value
        for config, values in configs.items():
            name = label(k, r["bits"], config, r["mask"])
            if name is not None and all(values.get(m) is not None for m in METRICS):
                rows.append({"model": r["model"], "rank": r["rank"], "configuration": name, "schedule": how,
                             "seed": r["seed"], **{m: float(values[m]) for m in METRICS}})
    return pl.DataFrame(rows, schema={"model": pl.String, "rank": pl.Int64, "configuration": pl.String,
                                      "schedule": pl.String, "seed": pl.Int64, "em": pl.Float64, "f1": pl.Float64})


ORDER = ["FP LoRA", "8-bit static PTQ", "4-bit static PTQ", "FP, random precision", "LoRA, 8-bit base",
         "LoRA, 4-bit base", "switchable, all-8", "switchable, all-4", "switchable, random precision",
         "switchable, hybrid", "CPT at 4 bits", "CPT at 5 bits", "CPT at 6 bits", "CPT at 7 bits", "CPT at 8 bits",
         "CPT, random precision"]


def table(cells: pl.DataFrame) -> pl.DataFrame:
    """QaLoF's table: EM and F1 (mean, 95% CI over seeds) per configuration, in QaLoF's order."""
    per_seed = configurations(cells)
    if per_seed.is_empty():
        return per_seed
    out = mean_ci(per_seed, ["model", "rank", "configuration", "schedule"], METRICS)
    order = {name: i for i, name in enumerate(ORDER)}
    return (out.with_columns(pl.col("configuration").replace_strict(order, default=len(ORDER)).alias("_o"))
            .sort("model", "rank", "_o", "configuration", "schedule").drop("_o"))


def static_cells(cells: pl.DataFrame) -> pl.DataFrame:
    """The cells trained at one width (neither switchable nor CPT): FP, static PTQ's source, LoRA, retrained masks."""
    return cells.filter(pl.col("settings_json").map_elements(lambda s: kind(json.loads(s)) == "static",
                                                             return_dtype=pl.Boolean))


def drops(cells: pl.DataFrame, metric: str = "f1") -> tuple[pl.DataFrame, pl.DataFrame]:
    """Per unit and seed: (the scan's drop of `metric`, `scan_drop`; the retrained cell's, `retrain_drop`)."""
    rows = []
    for r in cells.iter_rows(named=True):
        base = r.get(f"eval_{metric}_scan_base")
        if base is None:
            continue
        for column, value in r.items():
            unit = column.removeprefix(f"eval_{metric}_scan_")
            if column.startswith(f"eval_{metric}_scan_") and unit != "base" and value is not None:
                rows.append({"model": r["model"], "rank": r["rank"], "mask": unit, "seed": r["seed"],
                             "scan_drop": base - value})
    scanned = pl.DataFrame(rows, schema={"model": pl.String, "rank": pl.Int64, "mask": pl.String, "seed": pl.Int64,
                                         "scan_drop": pl.Float64})
    static = static_cells(cells)
    none = static.filter(pl.col("mask") == "none").select("model", "rank", "bits", "seed",
                                                          pl.col(metric).alias("ref"))
    retrained = (static.filter((pl.col("mask") != "none") & (pl.col("mask") != "all") & (pl.col("bits") < 16))
                 .join(none, on=["model", "rank", "bits", "seed"])
                 .select("model", "rank", "mask", "seed", (pl.col("ref") - pl.col(metric)).alias("retrain_drop")))
    return scanned, retrained


def scan(cells: pl.DataFrame, metric: str = "f1") -> pl.DataFrame:
    """Per unit (block or module): the drop of `metric` when it alone goes to the scan's low width, measured on one
    trained switchable model without retraining (scan), and by retraining a cell per mask (retrain)."""
    scanned, retrained = drops(cells, metric)
    static = static_cells(cells)
    if scanned.is_empty() or retrained.is_empty():
        return pl.DataFrame()
    both = (mean_ci(scanned, ["model", "rank", "mask"], ["scan_drop"])
            .join(mean_ci(retrained, ["model", "rank", "mask"], ["retrain_drop"]).drop("seeds"),
                  on=["model", "rank", "mask"], how="inner"))
    both = both.with_columns(pl.col("scan_drop").rank("ordinal", descending=True).over("model", "rank")
                             .alias("rank_scan"),
                             pl.col("retrain_drop").rank("ordinal", descending=True).over("model", "rank")
                             .alias("rank_retrain"))
    agreement = []
    for (model, rank), g in both.group_by(["model", "rank"], maintain_order=True):
        agreement.append({"model": model, "rank": rank,
                          "spearman": spearman(g["scan_drop"].to_list(), g["retrain_drop"].to_list())
                          if g.height > 2 else None})
    cost = {"scan_s": _sum(cells, "scan_s"),
            "retrain_s": _sum(static.filter(pl.col("mask") != "all"), "wall_s")}
    return (both.join(pl.DataFrame(agreement, schema_overrides={"rank": pl.Int64}), on=["model", "rank"])
            .with_columns(pl.lit(cost["scan_s"]).alias("scan_s"), pl.lit(cost["retrain_s"]).alias("retrain_s"))
            .sort("model", "rank", "rank_retrain"))


def _sum(cells: pl.DataFrame, column: str) -> float | None:
    return float(cells[column].drop_nulls().sum()) if column in cells.columns else None
