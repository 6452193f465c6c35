"""`qlbench plan` of every verdict kind: one row per verdict in the frame `qlbench adapt` reads, with the seeds (or
grid points) that would decide it, their cells and cell-hours."""

import json
from types import SimpleNamespace

import numpy as np
import polars as pl

from qlbench.analysis import plan, seed_power


def sensitivity_cells(seeds=2, sd=0.05, rng=0):
    """An 8-bit model with one block at a time at 4 bits: blocks cost 0.4, 0.3, 0.2, 0.1 nats; each cell 60 s."""
    g = np.random.default_rng(rng)
    cost = {"none": 0.0, "b0": 0.4, "b1": 0.3, "b2": 0.2, "b3": 0.1}
    rows = [{"model": "m", "n_train": None, "targets": "c_attn", "rank": 8, "bits": 4, "mask": mask, "seed": s,
             "status": "ok", "eval_loss": 2.0 + c + g.normal(0, sd), "wall_s": 60.0, "study": "sens"}
            for mask, c in cost.items() for s in range(seeds)]
    return pl.DataFrame(rows, schema_overrides={"n_train": pl.Int64})


def test_every_seed_paired_verdict_has_a_plan_in_the_contract_frame(tmp_path):
    (tmp_path / "sens").mkdir()
    sensitivity_cells().write_parquet(tmp_path / "sens/cells.parquet")
    st = SimpleNamespace(name="sens", seeds=[0, 1], bits=[4], ranks=[8], masks={"m": ["none", "b0"]}, n_train=[None])
    table = plan.verdict_plan(st, tmp_path)
    assert table.schema == pl.Schema(plan.VERDICT_COLUMNS)
    assert set(table["kind"]) == {"sensitivity", "recommendation"}
    ranks = table.filter(pl.col("verdict").str.starts_with("rank "))
    assert ranks.height == 3  # b0 > b1 > b2 > b3: three adjacent pairs
    undecided = table.filter(~pl.col("decided"))
    assert undecided.height >= 2  # two seeds at sd 0.05 cannot order blocks 0.1 nats apart
    for r in undecided.iter_rows(named=True):
        seeds = json.loads(r["overlay"])["seeds"]
        added = len(seeds) - 2
        assert seeds[:2] == [0, 1] and added >= 1
        # seeds are the study's: every one of its 5 cells (none + 4 blocks) runs again per new seed, 60 s each
        assert r["cells"] == 5 * added and abs(r["cell_hours"] - 5 * added * 60 / 3600) < 1e-9
        assert r["power_after"] >= 0.8 or "below the level" in r["addition"]
    # with twelve seeds, 0.1 nats apart at sd 0.05 is decided: nothing to add
    (tmp_path / "sens").joinpath("cells.parquet").unlink()
    sensitivity_cells(seeds=12).write_parquet(tmp_path / "sens/cells.parquet")
    decided = plan.verdict_plan(st, tmp_path)
    assert decided.filter(pl.col("kind") == "sensitivity")["decided"].all()
    assert (decided.filter(pl.col("decided"))["overlay"] == "{}").all()


def test_a_seed_plan_needs_more_seeds_for_a_smaller_gap():
    g = np.random.default_rng(3)
    noise = 0.3 * g.standard_normal(3)
    small, large = seed_power.seeds_needed(0.5 + noise, 0.8), seed_power.seeds_needed(1.5 + noise, 0.8)
    assert small[0] > large[0] and large[1] >= 0.8
