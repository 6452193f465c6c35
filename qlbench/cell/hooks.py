"""What the command that runs a cell lends it: the cell asks for nothing from Snakemake, SLURM or submitit, and a
cell run with the defaults (a test, a notebook) locks nothing, reports nothing, has no time limit and plants no
trouble. `qlbench run` fills them from `qlbench.cluster.runner`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


def _keep_nothing(out: Path, name: str) -> None:
    pass


def _report_nothing(out: Path):
    return None


def _plant_nothing(out: Path) -> None:
    pass


def _same_step(on_step, out: Path):
    return on_step


@dataclass(frozen=True)
class Hooks:
    # a second name for a file the cell just wrote or opened (its row, its log), should a driver delete it
    keep: Callable[[Path, str], None] = _keep_nothing
    # the training loop's `progress(done, steps)` for a cell folder, or None: nobody watches
    progress: Callable[[Path], Callable[[int, int], None] | None] = _report_nothing
    # when (epoch seconds) to checkpoint and stop before the job's time limit; None: no limit
    deadline: float | None = None
    # planted trouble (tests only): raise or hold memory before training, and the loop's step hook wrapped
    before_training: Callable[[Path], None] = _plant_nothing
    on_step: Callable[[Callable[[int], None] | None, Path], Callable[[int], None] | None] = _same_step
