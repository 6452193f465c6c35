"""A snakemake run that a qlbench command drives (`qlbench adapt`), and what killing that command does to it.

Killed (SIGTERM, SIGINT), the command passes SIGTERM on, so snakemake finishes its running jobs and frees its lock
before the command exits. Snakemake can miss that SIGTERM: its handler takes the scheduler's lock, and a signal that
comes while the scheduler itself holds it (selecting jobs) waits on it for ever (snakemake 9.27,
`JobScheduler.exit_gracefully`; seen here on a 400-job workflow and in the adapt workflow test). A snakemake that
has not said it heard within HEARD_S gets SIGINT, which interrupts that wait: it cancels its running jobs and exits.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

HEARD = "Will exit after finishing currently running jobs"  # what snakemake prints once it has taken a SIGTERM
HEARD_S = 10.0


def run(cmd: list[str], log: Path, say=print, heard_s: float = HEARD_S) -> tuple[int, int | None]:
    """Run `cmd` with its output appended to `log`; return its exit status and the signal that stopped this
    process meanwhile (None: none did)."""
    stopped: list[int] = []

    def stop(signum, frame):
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)  # snakemake takes a second SIGTERM as the first

    with open(log, "a") as out:
        start = out.tell()  # what snakemake prints from here on is this run's
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        before = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            since = None
            while True:
                try:
                    return proc.wait(timeout=0.5), (stopped[0] if stopped else None)
                except subprocess.TimeoutExpired:
                    pass
                if stopped and since is None:
                    since = time.monotonic()
                if since is not None and time.monotonic() - since > heard_s:
                    since = float("inf")  # asked once
                    if not _heard(log, start):
                        say(f"snakemake did not take the SIGTERM within {heard_s:g} s (it can miss one that comes "
                            "while it selects jobs); sent SIGINT: its running jobs are cancelled")
                        proc.send_signal(signal.SIGINT)
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)


def _heard(log: Path, start: int) -> bool:
    with open(log, errors="replace") as f:
        f.seek(start)
        return HEARD in f.read()
