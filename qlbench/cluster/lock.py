"""One run of a cell at a time: `with CellLock(out):` around a cell's run holds an exclusive lock on `<out>/.lock`
(flock: the kernel drops it when the process dies, kill -9 included, so a killed run never leaves a lock behind).

Two drivers that start one cell at once — two `qlbench sweep` submissions of a study, a sweep beside a snakemake
run — meet here: the second waits for the first, and if the first left a row while it waited, the second has
nothing to do (`already_finished`) and writes nothing, so no row is clobbered and no cell runs twice at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from qlbench.cluster import status

LOCK = ".lock"


class CellLock:
    """`identity`: the cell's (settings, hash) now. Once the lock is held, a readable row made under exactly these
    settings means another driver finished the cell after this one was told to run it (every driver runs only
    cells without such a row): `already_finished`, and the row is left as it is."""

    def __init__(self, out: Path, identity: tuple[dict, str], echo=print):
        self.out, self.identity, self.echo = Path(out), identity, echo
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
        if waited is not None or self.already_finished:
            self.echo(f"{self.out}: " + (f"the other run ended after {waited:.0f} s; " if waited is not None else "")
                      + ("a row of these settings is there: nothing to do (delete it to run the cell again)"
                         if self.already_finished else "running the cell"))
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
