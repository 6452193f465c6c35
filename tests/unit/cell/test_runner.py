"""What `qlbench run` lends a cell (`cluster/runner.py` filling `cell/hooks.py`): the cell's own defaults do
nothing, the driver's keep second names, report progress and plant the `fail` setting's trouble in its cells only."""

from __future__ import annotations

import pytest

from qlbench.cell.hooks import Hooks
from qlbench.cluster import lock, progress
from qlbench.cluster.runner import cell_hooks
from qlbench.study import grid

CELL = "micro-gpt2/b4/r4/all/s0"


def test_a_cell_on_its_own_is_lent_nothing(tmp_path):
    hooks = Hooks()
    (tmp_path / grid.ROW).write_text("row")
    hooks.keep(tmp_path, grid.ROW)
    hooks.before_training(tmp_path)
    step = object()
    assert hooks.on_step(step, tmp_path) is step and hooks.progress(tmp_path) is None and hooks.deadline is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [grid.ROW]


def test_the_drivers_hooks_keep_second_names_and_report_progress(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    hooks = cell_hooks(CELL)
    (tmp_path / grid.ROW).write_text("row")
    hooks.keep(tmp_path, grid.ROW)
    assert (tmp_path / lock.KEPT[grid.ROW]).samefile(tmp_path / grid.ROW)
    hooks.progress(tmp_path)(3, 10)
    assert progress.read(tmp_path)["step"] == 3
    assert hooks.deadline is None  # outside SLURM: no time limit


def test_planted_trouble_reaches_only_the_cells_it_names(tmp_path):
    hooks = cell_hooks(CELL, ["first:b4/r4/all", "kill@15:b4/r4/all"])
    with pytest.raises(RuntimeError, match="planted failure on the first attempt"):
        hooks.before_training(tmp_path)
    hooks.before_training(tmp_path)  # the second attempt runs
    assert hooks.on_step(None, tmp_path) is not None  # kill@15 wraps the loop's step hook
    other = cell_hooks("micro-gpt2/b16/r4/none/s0", ["first:b4/r4/all", "kill@15:b4/r4/all"])
    other.before_training(tmp_path / "x")
    assert other.on_step(None, tmp_path) is None
