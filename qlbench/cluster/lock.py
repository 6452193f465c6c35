"""One run of a cell at a time: `with CellLock(out):` around a cell's run holds an exclusive lock on `<out>/.lock`
(flock: the kernel drops it when the process dies, kill -9 included, so a killed run never leaves a lock behind).

Two drivers that start one cell at once — two `qlbench sweep` submissions of a study, a sweep beside a snakemake
run — meet here: the second waits for the first, and if the first left a row while it waited, the second has
nothing to do (`already_finished`) and writes nothing, so no row is clobbered and no cell runs twice at once.

One driver deletes files itself: Snakemake removes a job's output and log just before it runs the job. A cell it
planned while the cell had no row, and that a sweep finished meanwhile, reaches here without the sweep's row; a job
that starts while a sweep runs the cell unlinks the log the sweep is writing. So a run's log and its finished row
keep second names (`KEPT`: hard links, no bytes copied). A run Snakemake planned (`planned_at`, set by the Snakefile
when it is read) puts back a row of its settings made after that moment instead of running the cell again; a row
made before it (deleted to run the cell again, or `--forcerun`) is never put back. A run with nothing to do puts
back a log Snakemake took away.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from qlbench.cluster import status
from qlbench.study import grid

LOCK = ".lock"
KEPT = {grid.ROW: ".row.parquet.kept", grid.LOG: ".log.txt.kept"}  # not *.parquet: no glob of tables finds them
PLANNED_AT = "QLBENCH_PLANNED_AT"  # the environment variable the Snakefile sets: when it planned its jobs (epoch s)


def keep(out: Path, name: str) -> None:
    """A second name for `out/name` (the row just written, the log just opened), should Snakemake delete it."""
    _link(Path(out) / name, Path(out) / KEPT[name])


def _link(source: Path, target: Path) -> bool:
    """`target` becomes another name of `source`'s file, atomically; False where that cannot be done."""
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, target)
        return True
    except OSError:  # no hard links on this filesystem, or a full one: only a restore is lost, never a result
        tmp.unlink(missing_ok=True)
        return False


def planned_at(environ=os.environ) -> float | None:
    value = environ.get(PLANNED_AT)
    try:
        return float(value) if value else None
    except ValueError:
        return None


class CellLock:
    """`identity`: the cell's (settings, hash) now. Once the lock is held, a readable row made under exactly these
    settings means another driver finished the cell after this one was told to run it (every driver runs only
    cells without such a row): `already_finished`, and the row is left as it is."""

    def __init__(self, out: Path, identity: tuple[dict, str], echo=print, planned_at: float | None = None):
        self.out, self.identity, self.echo, self.planned_at = Path(out), identity, echo, planned_at
        self._fd: int | None = None
        self.already_finished = False

    def __enter__(self):
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOCK
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = None
        except BlockingIOError:
            self.echo(f"{self.out}: another run of this cell holds its lock ({_holder(path)}); waiting for it")
            start = time.time()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            waited = time.time() - start
        self.already_finished = status.cell_status(self.out, "", identity=self.identity).state in ("done", "diverged")
        if not self.already_finished and self._restore_row():
            self.already_finished = True
            self.echo(f"{self.out}: restored the row another run finished after Snakemake planned this one "
                      "(Snakemake deletes a job's output before running it)")
        if self.already_finished:
            self._restore_log()
        if waited is not None or self.already_finished:
            self.echo(f"{self.out}: " + (f"the other run ended after {waited:.0f} s; " if waited is not None else "")
                      + ("a row of these settings is there: nothing to do (delete it to run the cell again)"
                         if self.already_finished else "running the cell"))
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n").encode(), 0)
        return self

    def _restore_row(self) -> bool:
        """Put back a row of the current settings that another driver finished after `planned_at`."""
        row, kept = self.out / grid.ROW, self.out / KEPT[grid.ROW]
        if self.planned_at is None or row.exists():
            return False
        try:
            if kept.stat().st_mtime < self.planned_at:
                return False
            state = status.row_state("", status.read_row_status(kept), self.identity).state
        except Exception:  # noqa: BLE001  (no second name, or bytes pyarrow cannot read: run the cell)
            return False
        return state in ("done", "diverged") and _link(kept, row)

    def _restore_log(self):
        """The finished run's log, where Snakemake unlinked it when it started this job (it leaves none, or empty)."""
        log, kept = self.out / grid.LOG, self.out / KEPT[grid.LOG]
        try:
            if kept.exists() and not (log.exists() and (log.samefile(kept) or log.stat().st_size)):
                _link(kept, log)
        except OSError:
            pass

    def __exit__(self, *exc):
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
        return False


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
        return f"{info.get('host')} pid {info.get('pid')}"
    except (OSError, ValueError):
        return "unknown process"
