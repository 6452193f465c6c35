"""`qlbench plan`: which cells would decide each bounds claim the study's grid cannot (runs no cell), from the
study's cells (or its config's grid and a nominal law before there are any)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.registry import Analysis
from qlbench.results import write_parquet

ANALYSIS = Analysis(
    name="plan",
    summary="the cells that would decide each verdict (bounds claims, sensitivity ranks, gaps), with their power and cell-hours",
    needs=["cells"],
    applies="bounds",
    outputs={"plan": "bounds/plan.parquet", "markdown": "bounds/plan.md", "table": "bounds/plan.html"},
    report={
        "table": (
            "Bounds",
            "Tables",
            "The experimental design for the bounds verdicts (``qlbench plan``): per claim, the power of its test on "
            "this grid (the chance of deciding it correctly against its rival, by simulation with the study's fitted "
            "values and seed noise), and for each claim below the level the smallest addition to the grid (widths, "
            "ranks, data sizes N, seeds) that would decide it, with the cells it adds and their estimated cell-hours "
            "(from the measured wall time per cell)."
        ),
    },
)

LEVEL = 0.8  # the power a claim's test must reach
REPLICATES = 100  # simulated data sets per claim and grid


def run(job) -> str:
    level, replicates = job.option("level", LEVEL), job.option("replicates", REPLICATES)
    return run_plan(job.study, job.folder.parent, level, replicates, job.outputs)


def run_plan(st, root: Path, level: float, replicates: int, outputs: dict[str, Path] | None) -> str:
    """Every verdict's plan (qlbench.analysis.plan.verdict_plan), one table per kind; written to `outputs`."""
    from qlbench.analysis import plan

    table = plan.verdict_plan(st, root, level, replicates)
    if table.is_empty():
        raise ValueError(f"{st.name} has no verdict to plan (no bounds grid — 16-bit cells and quantized cells of "
                         "mask `all` — and no seed-paired verdict in its cells)")
    cells_path = root / st.name / "cells.parquet"
    cells = pl.read_parquet(cells_path) if cells_path.exists() else None
    notes = [f"Power: the chance of deciding the verdict correctly (level {level}). power_now is the verdicts' own "
             "(the simulation the verdicts table prints, from the study's fitted values and seed noise); power_after "
             "is the promise: the fitted values' own uncertainty drawn in, and an addition must clear the level by "
             "its Monte-Carlo error."]
    if cells is None:
        notes.append("No cells yet: the plan plants a nominal law (the bound, L* = 2, c1 = 0.5, a 4-bit gap of 0.02 "
                     "nats at rank 8, seed sd 0.003 nats); rerun it once cells exist.")
    if not plan.cell_seconds(cells):
        notes.append("cell_hours: unknown until cells with a measured wall time exist.")
    text = plan.verdict_markdown(table, st.name, level) + "\n" + " ".join(notes) + "\n"
    if outputs is not None:
        from qlbench.analysis.tables import html

        outputs["plan"].parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, outputs["plan"])
        outputs["markdown"].write_text(text)
        outputs["table"].write_text(html(table, f"{st.name}: the cells that would decide each verdict",
                                         " ".join(notes)))
    return text
