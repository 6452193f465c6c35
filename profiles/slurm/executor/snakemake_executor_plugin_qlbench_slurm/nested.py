"""The snakemake a job of the profile runs (`python -m snakemake_executor_plugin_qlbench_slurm.nested ARGS`): the
one snakemake spawns, but for `--force` on a requeued job.

Snakemake starts a job's snakemake with `--force`, so every target runs, and deletes its output first. A job SLURM
requeues (preemption, `scontrol requeue`) starts the same command again with SLURM_RESTART_COUNT ≥ 1: forced, the
cells of a pack that had finished before the requeue lost their rows and ran again. On a restart `--force` is left
out, so a target whose row is there is up to date (Snakemake's own checks: its output, its rerun triggers) and only
the cells without one run; the first start is snakemake's command unchanged.
"""

from __future__ import annotations

import os
import sys


def args(argv: list[str], environ=os.environ) -> list[str]:
    """snakemake's arguments for this start of the job."""
    restarts = environ.get("SLURM_RESTART_COUNT", "") or "0"
    if restarts.isdigit() and int(restarts) > 0:
        return [a for a in argv if a != "--force"]
    return list(argv)


def main() -> None:
    argv = args(sys.argv[1:])
    os.execv(sys.executable, [sys.executable, "-m", "snakemake", *argv])


if __name__ == "__main__":
    main()
