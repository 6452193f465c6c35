"""`qlbench plan`: which cells would decide each bounds claim the study's grid cannot (runs no cell), from the
study's cells (or its config's grid and a nominal law before there are any)."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.registry import Analysis
from qlbench.results import write_parquet

ANALYSIS = Analysis(
    name="plan",
    summary="the cells that would decide each bounds claim, with their power and estimated cell-hours",
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
    """The plan table from the study's cells (or its config's grid and a nominal law); written to `outputs`."""
    from qlbench.analysis import bounds, plan

    cells_path = root / st.name / "cells.parquet"
    cells = pl.read_parquet(cells_path) if cells_path.exists() else None
    pts = None
    if cells is not None:
        cells = cells.filter(pl.col("model") == sorted(cells["model"].unique().to_list())[0])
        pts = bounds.points(cells)
        if pts.height < 4 or pts.filter(pl.col("bits") < 16).is_empty() or pts.filter(pl.col("bits") >= 16).is_empty():
            pts = None
    nominal = pts is None
    if nominal:
        masks = {m for ms in st.masks.values() for m in ms}
        if 16 not in st.bits or not [b for b in st.bits if b < 16] or "all" not in masks:
            raise ValueError(f"{st.name} has no bounds grid (it needs 16-bit cells and quantized cells of mask `all`)")
        examples = sorted({n or 1000 for n in st.n_train})
        pts = plan.nominal_points(st.bits, st.ranks, examples, len(st.seeds))
    table = plan.plan(pts, cells, level, replicates)
    timed = bool(plan.cell_seconds(cells))
    text = plan.markdown(table, st.name, level, nominal, timed)
    if outputs is not None:
        from qlbench.analysis.tables import html

        outputs["plan"].parent.mkdir(parents=True, exist_ok=True)
        write_parquet(table, outputs["plan"])
        outputs["markdown"].write_text(text)
        outputs["table"].write_text(html(table, f"{st.name}: the cells that would decide each bounds claim",
                                         text.split("\n\n")[-1] if "\n\n" in text else ""))
    return text
