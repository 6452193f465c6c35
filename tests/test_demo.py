"""The default study end to end, as the README runs it: the bit widths must order the eval loss."""

import polars as pl
import pytest

from conftest import REPO, snakemake

pytestmark = [pytest.mark.workflow, pytest.mark.slow]


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
