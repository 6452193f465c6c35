"""For a bounds plan written before plan.py gave each row its `overlay` (a results folder of older code, whose plan
rule Snakemake does not rerun for a code change): a bounds addition's label -> the study keys it sets, rebuilt from
the same candidate grids the plan tried (`qlbench.analysis.plan.candidates`). `qlbench adapt` calls this only for a
plan table without an `overlay` column; deletable (with its one call in qlbench/cli/adapt.py) once no such folder
is left.
"""

from __future__ import annotations

import json

import polars as pl

BELOW = " (best tried; below the level)"  # how plan.py marks an addition that does not reach the level


def base_grid(cells: pl.DataFrame) -> dict:
    """The grid the plan saw: its first model's points (as `run_plan` filters them) -> bits, ranks, N, seeds."""
    from qlbench.analysis import bounds

    cells = cells.filter(pl.col("model") == sorted(cells["model"].unique().to_list())[0])
    pts = bounds.points(cells)
    return {"bits": sorted(pts["bits"].unique().to_list()), "ranks": sorted(pts["rank"].unique().to_list()),
            "examples": sorted(pts["train_examples"].unique().to_list()), "seeds": int(pts["seeds"].max())}


def overlay(label: str, grid: dict) -> str | None:
    """The addition `label` of the plan on `grid` as the study keys it sets (JSON), None for none or unknown."""
    from qlbench.analysis import plan

    found = dict(plan.candidates(grid))
    g = found.get(label.removesuffix(BELOW))
    if g is None:
        return None
    return json.dumps({"bits": g["bits"], "ranks": g["ranks"], "train_examples": g["examples"], "seeds": g["seeds"]})


def with_overlays(table: pl.DataFrame, cells: pl.DataFrame) -> pl.DataFrame:
    """The bounds plan `table` with an `overlay` column (the addition's study keys, JSON; null when none)."""
    if "overlay" in table.columns:
        return table
    grid = base_grid(cells)
    return table.with_columns(pl.Series("overlay", [overlay(a, grid) for a in table["addition"]], dtype=pl.String))
