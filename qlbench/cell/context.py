"""The first stage: a cell's fixed context — its coordinates checked, its folder, log, stop flag, settings resolved
(and hashed), device and seed. Everything later stages read but never change."""

from __future__ import annotations

import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from qlbench.cell.hooks import Hooks
from qlbench.errors import QlbenchError
from qlbench.study import grid
from qlbench.study import settings as settings_tree
from qlbench.study.config import Study, cell_identity
from qlbench.study.grid import Cell
from qlbench.study.settings import Settings


@dataclass
class Context:
    study: Study
    cell: Cell
    out: Path
    settings: Settings  # the study's fixed settings with overrides, targets resolved: typed, each stage reads its group
    identity: dict  # the settings that determine the numbers (planted trouble left out)
    config_hash: str
    log: logging.Logger
    stop: "StopFlag"
    hooks: Hooks  # what the command running the cell lends it: locks' second names, progress, planted trouble
    device: object  # torch.device
    autocast: object  # torch dtype, or None for float32
    threads: int
    base_bits: int  # the width `bits` gives the base's masked layers (16 when `bits` go to the adapters)
    masked: list[str]  # the module names the cell's mask selects
    task: object  # the task module (qlbench.tasks)
    t_start: float  # when the cell began, for its wall time

    @property
    def spec(self) -> dict:
        return self.study.model(self.cell.model)

    @property
    def layout(self):
        return self.study.layout(self.cell.model)

    @property
    def is_reference(self) -> bool:
        """A cell nothing is quantized in: the 16-bit or `none` cell others are measured against."""
        return self.cell.bits == 16 or self.cell.mask == "none"


def begin(study: Study, cell: Cell, out: Path, flat: dict, threads: int, hooks: Hooks = Hooks()) -> Context:
    """`flat`: the cell's settings as the config names them (`config.cell_settings`); `hooks`: what the command
    running the cell lends it (`cell/hooks.py`)."""
    import torch

    from qlbench import tasks
    from qlbench.cell.measure import pick_device
    from qlbench.study import masks

    t_start = time.perf_counter()
    check_cell(study, cell)
    out.mkdir(parents=True, exist_ok=True)
    (out / grid.ROW).unlink(missing_ok=True)  # a re-run must not leave the old row looking current
    log = cell_logger(out, hooks.keep)
    stop = StopFlag(hooks.deadline)
    masked = masks.resolve(cell.mask, study.layout(cell.model))
    identity, chash = cell_identity(study, cell, flat)  # the cell's targets preset, when an axis, included
    settings = settings_tree.build(flat).replace(targets=identity["targets"])
    log.info(f"cell {study.name}/{cell.path}  config {chash}")
    hooks.before_training(out)  # planted trouble, tests only
    on_base = settings.quant.bits_target == "base"
    if not on_base:  # the bounds study: `bits` quantizes LoRA's A and B, not the base
        settings = settings.replace(adapter_bits=cell.bits)

    torch.set_num_threads(threads)
    torch.manual_seed(cell.seed)
    dtype = settings.runtime.compute_dtype
    autocast = None if dtype == "float32" else getattr(torch, dtype)
    return Context(
        study=study, cell=cell, out=out, settings=settings, identity=identity, config_hash=chash, log=log,
        stop=stop, hooks=hooks, device=pick_device(settings.runtime.device), autocast=autocast, threads=threads,
        base_bits=cell.bits if on_base else 16, masked=masked, task=tasks.get(settings.data.task), t_start=t_start,
    )


def check_cell(study: Study, cell: Cell) -> None:
    """Coordinates outside the grid are allowed, but must be valid."""
    if cell.model not in study.config["models"]:
        raise QlbenchError(f"unknown model {cell.model!r}; models: {', '.join(study.config['models'])}")
    from qlbench import registry  # the widths the backends declare (the study's own backend's: with the settings)

    if cell.bits not in (*registry.widths(), 16):
        raise QlbenchError(f"{cell.bits} bits is not a supported width (use {registry.span(registry.widths())} or 16)")
    if cell.rank < 1:
        raise QlbenchError(f"rank {cell.rank}: must be at least 1")


def cell_logger(out: Path, keep) -> logging.Logger:
    log = logging.getLogger(f"qlbench.cell.{out}")
    log.setLevel(logging.INFO)
    log.propagate = False
    if not log.handlers:
        fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
        for handler in (logging.FileHandler(out / grid.LOG), logging.StreamHandler()):
            handler.setFormatter(fmt)
            log.addHandler(handler)
        keep(out, grid.LOG)  # a second name: a Snakemake job that starts meanwhile unlinks log.txt (cluster/lock.py)
    return log


class StopFlag:
    """SIGTERM, SIGUSR1 (SLURM's warning before a time limit) and SIGUSR2 (submitit's) ask the loop to checkpoint
    and stop; so does `deadline` passing: the SLURM job's time limit drawing near, which no signal announces to the
    cell (the command running it asks: cluster/timelimit.py)."""

    def __init__(self, deadline: float | None = None):
        self.requested = False
        self.deadline = deadline  # None: no time limit
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def __call__(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            self.requested = True
        return self.requested
