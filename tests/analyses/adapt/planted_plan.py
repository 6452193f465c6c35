"""A plan with planted verdicts for tests/workflow/test_adapt_workflow.py (on QLBENCH_ANALYSES there, followed with
`qlbench adapt --plan planted_plan`): the loop's course known in advance, whatever the micro cells measure. In the
all-kinds plan's form (kind, verdict, decided, overlay, ...): without rank 2, "c1" wants it (4 cells) and "ratio"
wants a second seed (8 cells); with it, "ratio" wants width 5 (3 cells); with width 5, all are decided."""

from qlbench.registry import Analysis

ANALYSIS = Analysis(
    name="planted_plan",
    summary="a plan with planted verdicts (a test fixture)",
    needs=["cells"],
    applies="bounds",
    outputs={"plan": "planted/plan.parquet"},
)


def run(job) -> str:
    import json

    import polars as pl

    cells = pl.read_parquet(job.inputs["cells"])
    ranks, bits = set(cells["rank"]), set(cells["bits"])
    row = lambda verdict, decided, overlay, after: {
        "kind": "bounds", "verdict": verdict, "decided": decided, "testable_now": True, "power_now": 0.5,
        "addition": json.dumps(overlay) if overlay else "none needed",
        "overlay": json.dumps(overlay) if overlay else None,
        "cells": 0, "cell_hours": 0.0, "power_after": after}
    if 2 not in ranks:
        rows = [row("c1", False, {"ranks": [2]}, 0.9), row("ratio", False, {"seeds": [0, 1]}, 0.9)]
    elif 5 not in bits:
        rows = [row("c1", True, None, 0.9), row("ratio", False, {"bits": [5]}, 0.9)]
    else:
        rows = [row("c1", True, None, 0.9), row("ratio", True, None, 0.9)]
    job.outputs["plan"].parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame(rows).write_parquet(job.outputs["plan"])
    return f"{len(rows)} planted verdicts"
