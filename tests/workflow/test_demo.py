"""The default study end to end, as the README runs it: the bit widths must order the eval loss, and every number of
its rows and curves, and each adapter, is the pinned reference's, bit for bit (tests/data/reference/demo)."""

import polars as pl
import pytest

from conftest import REPO, snakemake
from tools.same_numbers import reference_differences

# The demo's rows as the code of 2026-12-06 made them (numerics 1, qlbench/results.py): a change that moves a number
# fails here; a deliberate one bumps NUMERICS and pins new rows (tests/tools/reference_rows.py; docs/studies/demo.md).
PINNED = REPO / "tests/data/reference/demo/2026-12-06"


@pytest.mark.workflow
@pytest.mark.slow
def test_default_study_orders_bit_widths(tmp_path):
    run = snakemake(tmp_path, "--profile", REPO / "profiles/local", timeout=1500)
    assert run.returncode == 0, run.stdout[-3000:]
    cells = pl.read_parquet(tmp_path / "results/demo/cells.parquet")
    assert cells.height == 20 and (cells["status"] == "ok").all()
    loss = {b: cells.filter(pl.col("bits") == b)["eval_loss"].mean() for b in (2, 3, 4, 8, 16)}
    assert loss[2] > loss[3] > loss[4] >= loss[8] - 1e-3
    assert abs(loss[8] - loss[16]) < 0.005 < loss[4] - loss[16]  # 8 bits ≈ 16 bits; 4 bits visibly worse
    for rank in (4, 16):  # the ordering holds at each rank too, not just on average
        per = {b: cells.filter((pl.col("bits") == b) & (pl.col("rank") == rank))["eval_loss"].mean() for b in loss}
        assert per[2] > per[3] > per[4] > per[16]
    for name in ("summary.md", "summary.csv", "figures/eval_loss_vs_bits.png", "bounds/bounds.png"):
        assert (tmp_path / "results/demo" / name).stat().st_size > 0
    moved = reference_differences(PINNED, tmp_path / "results/demo")
    assert not moved, "the demo's numbers moved from the pinned rows:\n" + "\n".join(moved[:20])


def test_the_pinned_comparison_sees_the_numbers_that_moved_before_the_pin():
    """The rows of 2026-12-01 against the pinned ones: every cell moved (the 16-bit cells' loss before training by
    5e-6, the curves in their last digits) and the comparison names each column that moved; rows against themselves:
    nothing."""
    old = REPO / "tests/data/reference/demo/2026-12-01"
    assert reference_differences(old, old) == []  # no adapters.txt there: the tables alone
    moved = {":".join(line.split(":")[:2]) for line in reference_differences(PINNED, old)}  # "cells: eval_loss"
    assert {"cells: eval_loss_before", "cells: eval_loss", "cells: train_loss_final", "curves: loss",
            "curves: grad_norm"} <= moved, moved
