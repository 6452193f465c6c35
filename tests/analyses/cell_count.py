"""An analysis of one's own, in a file of its own: tests/unit/analysis/test_declared_analyses.py puts this folder on
QLBENCH_ANALYSES, and nothing else names it — the workflow's rule, final_targets, the report and the CLI find it."""

from qlbench.registry import Analysis

ANALYSIS = Analysis(
    name="cell_count",
    summary="how many cells each bit width has (a test fixture)",
    needs=["cells"],
    outputs={"table": "cell_count/cells_per_bits.md", "html": "cell_count/cells_per_bits.html"},
    report={"html": ("Fixture counts", "Tables", "Cells per bit width, counted from cells.parquet by the fixture.")},
)


def run(job) -> str:
    import polars as pl

    from qlbench.analysis import tables

    counts = pl.read_parquet(job.inputs["cells"]).group_by("bits").len("cells").sort("bits")
    job.outputs["table"].write_text(tables.markdown(counts, "cells per bit width"))
    job.outputs["html"].write_text(tables.html(counts, "cells per bit width"))
    return ", ".join(f"{b} bits: {n}" for b, n in counts.iter_rows())
