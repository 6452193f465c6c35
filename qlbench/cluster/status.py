"""Where a study stands, from its files alone: which cells are done, diverged, failed, running or missing, why
each failure happened (the last `error:` line of its log), and the command that resubmits what is not done.

No scheduler is asked and no model is loaded, so it answers in about a second for thousands of cells, on a login
node, for a tree written by Snakemake or by `qlbench sweep` alike. A running cell keeps a heartbeat file
(`.running`: host, pid, SLURM job) fresh; a cell killed outright (out of memory, time limit, SIGKILL) leaves it to
go stale, which is how such a death is told from a cell still at work.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from qlbench.cluster import progress
from qlbench.results import numerics_stale
from qlbench.study import grid
from qlbench.study.finished import MOVED_ASIDE
from qlbench.study.config import Study, changed_settings
from qlbench.study.identities import cell_identities

STATES = ("done", "diverged", "stale", "failed", "running", "missing", "corrupt")
# corrupt: a row that cannot be read, or is not a row (truncated by a full disk, an interrupted copy): both drivers
# rerun the cell, no aggregate reads it. Counted in the summary line only when there is one.
ROW_STATE = ("status", "config_hash", "settings_json", "numerics")  # the columns a row's state is read from
RUNNING = ".running"
HEARTBEAT_S = 30  # how often a running cell touches its heartbeat file
STALE_S = 150  # a heartbeat older than this means the process is gone
_START = "cell "  # the cell logger's first line of every attempt: "HH:MM:SS cell <study>/<path>  config <hash>"


@dataclass(frozen=True)
class CellStatus:
    path: str  # the cell's folder under cells/
    state: str  # one of STATES
    reason: str = ""  # failed: why; running: where; stale: which settings changed, or the numerics
    progress: dict | None = None  # running: its loop's step of N (cluster/progress.py)


class Heartbeat:
    """`with Heartbeat(out):` around a cell's run: `.running` names the process and stays fresh while it lives."""

    def __init__(self, out: Path, interval_s: float = HEARTBEAT_S):
        self.path = Path(out) / RUNNING
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="qlbench-heartbeat", daemon=True)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job": _slurm_job(),
                "started": datetime.now().isoformat(timespec="seconds")}
        self.path.write_text(json.dumps(info) + "\n")
        (self.path.parent / progress.PROGRESS).unlink(missing_ok=True)  # an earlier attempt's step is not this one's
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.interval_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __exit__(self, *exc):
        self._stop.set()
        self.path.unlink(missing_ok=True)
        (self.path.parent / progress.PROGRESS).unlink(missing_ok=True)
        return False


def _slurm_job() -> str | None:
    job = os.environ.get("SLURM_JOB_ID")
    if job and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{os.environ.get('SLURM_ARRAY_JOB_ID', job)}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return job


def cell_status(cell_dir: Path, path: str, now: float | None = None, identity: tuple[dict, str] | None = None
                ) -> CellStatus:
    """`identity`: the cell's current (settings, hash); a row made under other settings, or by other numerics
    (`results.NUMERICS`), is then `stale`."""
    row = cell_dir / grid.ROW
    if row.exists():
        try:
            values = read_row_status(row)
        except Exception as e:  # noqa: BLE001  (whatever the bytes make pyarrow raise)
            return CellStatus(path, "corrupt", f"{row}: unreadable ({type(e).__name__}: {str(e).strip()[:200]})")
        return row_state(path, values, identity)
    return unfinished_status(cell_dir, path, time.time() if now is None else now)


def row_state(path: str, row: tuple, identity: tuple[dict, str] | None) -> CellStatus:
    """A finished cell's state from its row's (status, config_hash, settings_json, numerics); with `identity`, a row
    of other settings or of other numerics (None: a row without the column, version 0) is stale. A row of the
    current settings made before the numerics' last bump is stale even where its numbers equal the code's (rows
    made between a change and its bump): rerunning it costs a cell and gives the same numbers, now versioned."""
    state, chash, settings_json, numerics = (*row, None)[:4]
    if identity is not None and chash is not None:  # a row without a hash (not a cell's) has nothing to compare
        if chash != identity[1]:
            changed = changed_settings(settings_json, identity[0])
            return CellStatus(path, "stale", f"made under other settings: {changed}")
        if why := numerics_stale(numerics):
            return CellStatus(path, "stale", why)
    return CellStatus(path, "done" if state == "ok" else state)


def unfinished_status(cell_dir: Path, path: str, now: float) -> CellStatus:
    """A cell without a row: running (a fresh heartbeat), failed (its log's reason) or missing."""
    marker = cell_dir / RUNNING
    info = _marker(marker, now)
    if info is not None and info["alive"]:
        where = f"{info.get('host')} pid {info.get('pid')}"
        if info.get("slurm_job"):
            where += f", SLURM job {info['slurm_job']}"
        done = progress.read(cell_dir)
        step = f"step {done['step']}/{done['steps']}  " if done else ""
        started = str(info.get("started", "?")).split("T")[-1]  # the time of day; the date is today's, or near it
        return CellStatus(path, "running", f"{step}since {started} on {where}", done)
    log = cell_dir / grid.LOG
    aside = cell_dir / (grid.ROW + MOVED_ASIDE)
    if aside.exists() and (not log.exists() or _last_error(log) is None):
        return CellStatus(path, "corrupt", f"{aside}: a row that could not be read, moved aside; rerun the cell")
    if not log.exists():
        return CellStatus(path, "missing")
    reason = _last_error(log)
    if reason is None:
        if info is not None:  # a heartbeat that stopped: the process was killed from outside
            job = f" (SLURM job {info['slurm_job']})" if info.get("slurm_job") else ""
            reason = (f"killed without a word at {datetime.fromtimestamp(info['mtime']):%H:%M}{job}: "
                      "out of memory, time limit, preemption or SIGKILL?")
        else:
            reason = "stopped without writing a result or an error (killed before it could?)"
    if (cell_dir / grid.CHECKPOINT).exists():
        reason += "  [checkpoint saved: a resubmission resumes]"
    return CellStatus(path, "failed", reason)


def read_row_status(row: Path) -> tuple[str, str | None, str, int | None]:
    """(status, config_hash, settings_json, numerics) of a finished cell's row; no hash or numerics where the row
    has none."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(row)
    columns = [c for c in ROW_STATE if c in file.schema_arrow.names]
    table = file.read(columns=columns)  # faster than read_table
    values = {c: table.column(c)[0] for c in columns}
    numerics = values["numerics"].as_py() if "numerics" in values else None
    return (str(values["status"]), str(values["config_hash"]) if "config_hash" in values else None,
            str(values.get("settings_json", "{}")), numerics)


def _marker(marker: Path, now: float) -> dict | None:
    try:
        mtime = marker.stat().st_mtime
        info = json.loads(marker.read_text() or "{}")
    except (OSError, ValueError):
        return None
    info["mtime"] = mtime
    alive = now - mtime < STALE_S
    if alive and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int):
        alive = _pid_alive(info["pid"])  # same machine: ask the process table, not the clock
    info["alive"] = alive
    return info


def _pid_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")  # a zombie has finished


def _last_error(log: Path) -> str | None:
    """The `error:` line written after the last attempt started, if that attempt wrote one."""
    reason = None
    with open(log, errors="replace") as f:
        for line in f:
            body = line.split(" ", 1)[1] if line[:2].isdigit() and " " in line else line
            if body.startswith(_START):
                reason = None
            elif line.startswith("error: "):
                reason = line[len("error: "):].strip()
    return reason


def study_status(study: Study, results: str) -> list[CellStatus]:
    """Every cell's state: one stat per cell, the rows read together (and cached, study/finished.py), the logs and
    heartbeats of unfinished cells only."""
    from qlbench.study import finished

    now = time.time()
    cells = grid.cells(study)
    paths = finished.cell_files(results, study.name, cells, grid.ROW)
    stamps = [finished.stamp(p) for p in paths]
    done = [i for i, s in enumerate(stamps) if s]
    columns = list(ROW_STATE)
    corrupt: dict[str, str] = {}
    rows = finished.stack([paths[i] for i in done], [stamps[i] for i in done],
                          finished.cache_path(results, study.name, "cells"), columns, corrupt=corrupt,
                          required=finished.row_required(), one_row=True)
    bad = {i: CellStatus(cells[i].path, "corrupt", f"{paths[i]}: {corrupt[paths[i]]}") for i in done
           if paths[i] in corrupt}
    done = [i for i in done if i not in bad]
    values = [rows[c].to_list() if c in rows.columns else [None] * len(done) for c in columns]
    identities = cell_identities(study, [cells[i] for i in done])
    by_cell = {i: row_state(cells[i].path, (state, chash, settings or "{}", numerics), identity)
               for i, state, chash, settings, numerics, identity in zip(done, *values, identities)}
    by_cell.update(bad)
    return [by_cell[i] if i in by_cell else unfinished_status(Path(paths[i]).parent, c.path, now)
            for i, c in enumerate(cells)]


def study_estimate(study: Study, results: str, statuses: list[CellStatus]) -> progress.Estimate | None:
    """When the sweep should end: the finished cells' step times (their rows, from the cache study_status filled)
    and the running cells' step of N."""
    from qlbench.study import finished

    running = [s.progress for s in statuses if s.state == "running" and s.progress]
    if not running:  # nothing to estimate: status stays one pass over the tree
        return None
    by_path = {c.path: c for c in grid.cells(study)}
    done = [s for s in statuses if s.state in ("done", "diverged")]
    files = finished.cell_files(results, study.name, [by_path[s.path] for s in done], grid.ROW)
    stamped = [(f, s) for f in files if (s := finished.stamp(f))]
    rows = finished.stack([f for f, _ in stamped], [s for _, s in stamped],
                          finished.cache_path(results, study.name, "cells"), ["step_time_s", "steps_done", "wall_s"])
    to_start = sum(s.state in ("failed", "missing", "stale") for s in statuses)
    return progress.estimate(study.tree.train.steps, rows.to_dicts(), running, to_start)


def counts(statuses: list[CellStatus]) -> dict[str, int]:
    out = dict.fromkeys(STATES, 0)
    for s in statuses:
        out[s.state] = out.get(s.state, 0) + 1
    return out


def resubmit_commands(study: str, config_files: list[str], results: str | None, profile: str) -> list[str]:
    """What reruns exactly the cells without a result: a plain re-run of either driver skips the finished ones."""
    extra = [f for f in config_files if Path(f).resolve() != Path("config.yaml").resolve()]
    smk = ["snakemake", "--profile", profile]
    for f in extra:
        smk += ["--configfile", f]
    smk += ["--config", f"study={study}"] + ([f"results={results}"] if results else [])
    sweep = ["qlbench", "sweep", study]
    for f in config_files if extra else []:
        sweep += ["-c", f]
    sweep += ["--executor", "slurm" if "slurm" in profile else "local"]
    if results:
        sweep += ["--results", results]
    return [shlex.join(smk), shlex.join(sweep)]


def report(study: Study, statuses: list[CellStatus], cells_dir: str, commands: list[str],
           show_all: bool = False, estimate: progress.Estimate | None = None) -> str:
    n = counts(statuses)
    head = ", ".join(f"{n[s]} {s}" for s in STATES if s != "corrupt" or n[s])
    lines = [f"{study.name}: {len(statuses)} cells: {head}  ({cells_dir})"]
    shown = [s for s in statuses if show_all or s.state != "done"]
    width = max((len(s.path) for s in shown), default=0)
    for s in shown:
        lines.append(f"  {s.state:<8}  {s.path:<{width}}  {s.reason}".rstrip())
    todo = n["failed"] + n["missing"] + n["stale"] + n["corrupt"]
    if todo:
        stale = f", {n['stale']} stale" if n["stale"] else ""
        stale += f", {n['corrupt']} corrupt" if n["corrupt"] else ""
        lines.append(f"resubmit the {n['failed']} failed{stale} and {n['missing']} missing cells "
                     "(finished cells are kept; a checkpointed cell resumes):")
        lines += [f"  {commands[0]}", f"  or: {commands[1]}"]
    elif n["running"]:
        lines.append(f"{n['running']} cells still running")
    if estimate is not None and n["running"]:
        lines.append(estimate.line())
    return "\n".join(lines)
