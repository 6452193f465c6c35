"""The sensitivity checkpoint's recommendation, run: its masks as validation cells, measured against predicted
degradation."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from qlbench.registry import Analysis
from qlbench.results import write_parquet

ANALYSIS = Analysis(
    name="validate_recommendation",
    summary="the recommended mixed-precision masks run as cells: measured against predicted degradation",
    needs=["cells", "sensitivity.recommendation", "validation_rows"],
    applies="sensitivity",
    outputs={"validation": "sensitivity/validation.parquet", "table": "sensitivity/validation.html"},
    report={
        "table": (
            "Sensitivity",
            "Tables",
            "The recommended configuration, run as validation cells by the Snakemake checkpoint: predicted (summed "
            "single-unit degradations) against measured degradation, mean over seeds."
        ),
    },
)


def validation_cells(study, recommended: pl.DataFrame) -> list:
    """The cells of the recommended mixed-precision masks, every seed (the workflow's `validation_rows`)."""
    from qlbench.study import grid

    cells = {
        grid.Cell(r["model"], r["bits"], r["rank"], r["mask"], seed, r.get("n_train"))
        for r in recommended.iter_rows(named=True)
        if r["mask"] != "none" and r.get("runnable", True)  # a map of several low widths is not one cell
        for seed in study.seeds
    }
    return sorted(cells)


def run(job) -> str:
    from qlbench.study import grid

    recommendation = job.inputs["sensitivity.recommendation"]
    cells = validation_cells(job.study, pl.read_parquet(recommendation))
    rows = [Path(grid.cell_dir(str(job.folder.parent), job.study.name, c)) / grid.ROW for c in cells]
    return run_validation(job.inputs["cells"], recommendation, [r for r in rows if r.exists()],
                          job.outputs["validation"])


def run_validation(cells_parquet: Path, recommendation_parquet: Path, rows: list[Path], out: Path) -> str:
    from qlbench.analysis.sensitivity import validate
    from qlbench.analysis.tables import write as _tables

    extra = pl.concat([pl.read_parquet(r) for r in rows], how="diagonal_relaxed") if rows else pl.DataFrame()
    table = validate(pl.read_parquet(cells_parquet), pl.read_parquet(recommendation_parquet), extra)
    write_parquet(table, out)
    _tables(out.parent, out.stem, table, f"{table['model'][0] if table.height else ''}: the recommendation, run: "
            "predicted against measured degradation")
    def measured(r):
        return "not run" if r["measured_degradation"] is None else f"{r['measured_degradation']:+.4f}"

    return "\n".join(f"{r['model']} r={r['rank']} {r['bits']} bits, {r['mask']}: predicted "
                     f"{r['predicted_degradation']:+.4f}, measured {measured(r)}"
                     for r in table.iter_rows(named=True))


