"""What a cell run by a driver (Snakemake, `qlbench sweep`, a SLURM job) is lent (`qlbench.cell.hooks`): second
names for its row and log (lock.py), its step of N for `qlbench status` (progress.py), the SLURM job's time limit
(timelimit.py) and, in the tests, the trouble its `fail` setting plants (plant.py). `qlbench run` passes them in;
the cell imports none of it."""

from __future__ import annotations

from qlbench.cell.hooks import Hooks
from qlbench.cluster import lock, plant, progress, timelimit


def cell_hooks(cell_path: str, fail=None) -> Hooks:
    """`fail`: the cell's `fail` setting (the `testing` group; None in every real run)."""
    plants = plant.for_cell(fail, cell_path)
    return Hooks(keep=lock.keep, progress=progress.Progress, deadline=timelimit.stop_time(),
                 before_training=lambda out: plant.before_training(plants, out),
                 on_step=lambda on_step, out: plant.with_kill(on_step, plants, out))
