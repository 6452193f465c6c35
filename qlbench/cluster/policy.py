"""One policy, two drivers: how often a failed cell is retried, how its memory and time grow with each attempt, how
many cells share a job and how many of them run at once. Its one home is the SLURM profile
(profiles/slurm/config.yaml: `retries`, `group-components: [pack=N]`, `resources: [pack_slot=M]` and the `cell`
rule's `set-resources`), which Snakemake reads itself; `qlbench sweep` reads the same lines here and evaluates the
cell's per-attempt expressions of `attempt` as Snakemake does. Change a number there and both drivers follow."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from qlbench.errors import QlbenchError

PROFILE = "profiles/slurm"  # under the working directory, else the repository's own


@dataclass(frozen=True)
class Policy:
    retries: int  # a failed cell is run again this many times
    mem_mb: str  # the cell's memory on attempt `attempt` (1, 2, ...): a Python expression, as the profile gives it
    runtime: str  # the cell's time limit in minutes on attempt `attempt`: likewise
    cpus: int  # per cell
    cells_per_job: int  # a pack
    cells_at_once: int  # of a pack's cells, side by side (sharing the job's GPUs)
    source: str  # the profile it was read from
    mem_scale: float = 1.0  # another first attempt's memory, the same growth (`qlbench sweep --mem-gb`)
    runtime_scale: float = 1.0  # likewise the time (`--time-min`)

    def mem_mb_at(self, attempt: int) -> float:
        return self.mem_scale * _evaluate(self.mem_mb, attempt, "mem_mb", self.source)

    def runtime_min_at(self, attempt: int) -> float:
        return self.runtime_scale * _evaluate(self.runtime, attempt, "runtime", self.source)

    def starting_at(self, mem_mb: float | None = None, runtime_min: float | None = None) -> Policy:
        """The same growth from another first attempt's memory or time."""
        for name, value in (("memory", mem_mb), ("time", runtime_min)):
            if value is not None and not value > 0:
                raise QlbenchError(f"a first attempt's {name} of {value}: must be more than 0")
        mem_scale = self.mem_scale if mem_mb is None else mem_mb / self.mem_mb_at(1) * self.mem_scale
        runtime_scale = self.runtime_scale if runtime_min is None else \
            runtime_min / self.runtime_min_at(1) * self.runtime_scale
        return replace(self, mem_scale=mem_scale, runtime_scale=runtime_scale)

    def job_size(self, cells: int, at_once: int, attempt: int, *, cpus: int, gpus: int) -> dict:
        """What a job of `cells` cells, `at_once` at a time, asks for on `attempt`: the memory and CPUs of the cells
        that run side by side, the GPUs of one cell (they share them), and the time of its rounds — as Snakemake
        sizes a pack of `pack_slot` cells at once."""
        at_once = min(at_once, cells)
        rounds = -(-cells // at_once)
        return {"mem_gb": self.mem_mb_at(attempt) / 1000 * at_once, "time_min": self.runtime_min_at(attempt) * rounds,
                "cpus": cpus * at_once, "gpus": gpus}


def read(profile: str | Path | None = None) -> Policy:
    """The policy the SLURM profile declares (`profile`: its folder; default: ./profiles/slurm, else the
    repository's)."""
    import yaml

    folder = _find(profile)
    try:
        p = yaml.safe_load((folder / "config.yaml").read_text())
        cell = p["set-resources"]["cell"]
        return Policy(retries=int(p.get("retries", 0)), mem_mb=str(cell["mem_mb"]), runtime=str(cell["runtime"]),
                      cpus=int(cell.get("cpus_per_task", 1)),
                      cells_per_job=int(_pairs(p.get("group-components")).get("pack", 1)),
                      cells_at_once=int(_pairs(p.get("resources")).get("pack_slot", 1)), source=str(folder))
    except (KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        raise QlbenchError(f"{folder}/config.yaml: no retry policy to read ({type(e).__name__}: {e}); it needs "
                           "set-resources: cell: mem_mb and runtime") from None


def _find(profile) -> Path:
    if profile is not None:
        candidates = [Path(profile)]
    else:
        candidates = [Path(PROFILE), Path(__file__).resolve().parents[2] / PROFILE]
    for folder in candidates:
        if (folder / "config.yaml").is_file():
            return folder
    raise QlbenchError(f"no Snakemake profile at {candidates[0]} (its config.yaml holds the retry policy); "
                       "give its folder with --profile")


def _pairs(items) -> dict:
    """`["pack=8"]` (a profile's list of NAME=VALUE) -> {"pack": "8"}."""
    if isinstance(items, dict):
        return items
    return dict(str(item).split("=", 1) for item in items or [])


def _evaluate(expression: str, attempt: int, name: str, source: str) -> float:
    # what Snakemake's resource expressions see that a cell's memory or time may use: attempt and the environment
    try:
        value = eval(os.path.expandvars(expression), {"__builtins__": {}}, {"attempt": attempt})
    except Exception as e:  # noqa: BLE001
        raise QlbenchError(f"{source}: the cell's {name} {expression!r} on attempt {attempt}: {e}") from None
    if not isinstance(value, (int, float)) or value <= 0:
        raise QlbenchError(f"{source}: the cell's {name} {expression!r} on attempt {attempt} is {value!r}, "
                           "not a positive number")
    return float(value)
