"""A SLURM job's time limit, seen from the cell inside it.

At a time limit SLURM sends SIGTERM only to each step's task — the nested snakemake of
snakemake-executor-plugin-slurm, or submitit's process — never to the cell they started (checked on Slurm 22.05:
a child, in the same process group or not, gets nothing until the SIGKILL). So the cell watches the clock itself:
it asks once for its job's end time and stops to save a checkpoint a margin before it.
"""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime

MARGIN_S = (30.0, 300.0)  # stop this long before the limit: 5% of the job's time, at least 30 s, at most 5 min


def job_end(job_id: str | None = None) -> float | None:
    """The end time (epoch seconds) of this SLURM job; None outside SLURM, without a limit, or if squeue fails."""
    job_id = job_id or os.environ.get("SLURM_JOB_ID")
    if not job_id:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True, timeout=20)
        return datetime.fromisoformat(out.stdout.strip()).timestamp() if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired, ValueError):  # no squeue, or "N/A" / "Unknown"
        return None


def stop_time(now: float | None = None, end: float | None = None) -> float | None:
    """When a cell should checkpoint and stop to beat its job's time limit; None when there is no limit."""
    end = job_end() if end is None else end
    if end is None:
        return None
    now = time.time() if now is None else now
    lo, hi = MARGIN_S
    return end - min(hi, max(lo, 0.05 * (end - now)))
