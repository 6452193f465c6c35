"""One run of a cell at a time: `with CellLock(out):` around a cell's run holds an exclusive lock on `<out>/.lock`
(flock: the kernel drops it when the process dies, kill -9 included, so a killed run never leaves a lock behind).

Two drivers that start one cell at once — two `qlbench sweep` submissions of a study, a sweep beside a snakemake
run — meet here: the second waits for the first, and if the first left a row while it waited, the second has
nothing to do (`finished_meanwhile`) and writes nothing, so no row is clobbered and no cell runs twice at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from qlbench.study import finished, grid

LOCK = ".lock"


class CellLock:
    def __init__(self, out: Path, echo=print):
        self.out, self.echo = Path(out), echo
        self._fd: int | None = None
        self.finished_meanwhile = False  # another run wrote a readable row while this one waited

    def __enter__(self):
        self.out.mkdir(parents=True, exist_ok=True)
        path = self.out / LOCK
        row = self.out / grid.ROW
        before = finished.stamp(str(row))
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            self.echo(f"{self.out}: another run of this cell holds its lock ({holder}); waiting for it")
            start = time.time()
            fcntl.flock(self._fd, fcntl.LOCK_EX)
            after = finished.stamp(str(row))
            self.finished_meanwhile = after is not None and after != before and _readable(row)
            self.echo(f"{self.out}: the other run ended after {time.time() - start:.0f} s" +
                      ("; it left a row: nothing to do" if self.finished_meanwhile else "; running the cell"))
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps({"host": socket.gethostname(), "pid": os.getpid()}) + "\n").encode(), 0)
        return self

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


def _readable(row: Path) -> bool:
    corrupt: dict[str, str] = {}
    finished.read_many([str(row)], corrupt, finished.row_required())
    return not corrupt
