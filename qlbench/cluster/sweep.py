"""`qlbench sweep` / `qlbench.sweep()`: a study's grid through submitit — a SLURM job array, or local processes —
writing the same tree as the Snakemake workflow (the folders come from `qlbench.study.grid`), so `qlbench status`, the
aggregate rules and the analyses read either.

    import qlbench
    outcome = qlbench.sweep("micro", executor="slurm", partition="debug", account="qlbench")

Bases the study pretrains itself are prepared first; cells with a row already are skipped; each cell is one
`qlbench run` process (so a cell behaves exactly as under Snakemake: same log, same checkpoint, same exit codes);
with `cells_per_job` > 1 a job runs a pack of cells, each forked from the job's warm process: one after another,
or `cells_at_once` side by side (sharing the job's GPUs: cells per GPU).
Retries, the memory and time each attempt gets and the pack sizes are the SLURM profile's (`qlbench.cluster.policy`:
one policy for this driver and Snakemake's); a failed cell resumes from its checkpoint. A job that dies
without a result (killed, out of memory, time limit) is noticed from the scheduler's queue — not from the result
file submitit would wait for — and reported as failed with its reason; nothing waits forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from qlbench.study import finished, grid as gridlib
from qlbench.cluster import policy as policylib, status as statuslib
from qlbench.study import config as studylib
from qlbench.errors import QlbenchError

SLURM_FINAL = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
               "PREEMPTED", "TIMEOUT", "SPECIAL_EXIT", "REVOKED"}


@dataclass
class SweepOutcome:
    study: str
    results: str
    done: list[str] = field(default_factory=list)  # cells finished by this sweep
    skipped: list[str] = field(default_factory=list)  # cells that had a row already
    failed: dict[str, str] = field(default_factory=dict)  # cell -> one-line reason
    cells_parquet: Path | None = None


class Command:
    """One `qlbench` process inside a submitit job. SLURM signals only a step's task — submitit's process, not the
    cell under it — so on a time limit or preemption (submitit's SIGUSR2) `checkpoint` passes SIGUSR1 on to the
    cell, waits while it saves its checkpoint, and requeues the same command, which resumes."""

    def __init__(self, args: list[str], cwd: str, label: str):
        self.args, self.cwd, self.label = args, cwd, label
        self._proc = None

    def __call__(self) -> str:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen([sys.executable, "-m", "qlbench.cli", *self.args], cwd=self.cwd, env=env)
        code = self._proc.wait()
        if code != 0:
            raise RuntimeError(f"{self.label}: qlbench exited with {code}")
        return self.label

    def checkpoint(self, *args, **kwargs):
        import submitit

        self.stop()
        self.wait_stopped()
        return submitit.helpers.DelayedSubmission(Command(self.args, self.cwd, self.label))

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGUSR1)

    def wait_stopped(self) -> None:
        if self._proc is not None:
            try:
                self._proc.wait(timeout=60)  # the cell saves its checkpoint, then exits
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def __getstate__(self):
        return {"args": self.args, "cwd": self.cwd, "label": self.label, "_proc": None}

    def finished(self) -> bool:
        """Has the cell this command runs a row (a requeued pack skips it)?"""
        out = self.args[self.args.index("--out") + 1] if "--out" in self.args else None
        return out is not None and (Path(self.cwd) / out / gridlib.ROW).exists()


class Pack:
    """Several cells in one job, `at_once` at a time, each forked from the job's warm process (`qlbench run --warm`):
    the imports are paid once per job. A cell that fails does not stop the others; the job fails if any did, and
    every cell is judged by its own row. On a time limit the running cells checkpoint and the pack is requeued
    with the cells that have no row yet."""

    def __init__(self, commands: list[Command], at_once: int = 1):
        self.commands, self.at_once = commands, at_once
        self._running: set[Command] = set()

    def __call__(self) -> list[str]:
        with ThreadPoolExecutor(self.at_once) as pool:  # threads only wait: each cell is a process
            failed = [e for e in pool.map(self._run, self.commands) if e]
        if failed:
            raise RuntimeError(f"{len(failed)} of {len(self.commands)} cells failed: {'; '.join(failed)}")
        return [c.label for c in self.commands]

    def _run(self, command: Command) -> str | None:
        self._running.add(command)
        _say(f"pack: {command.label} starts")
        try:
            command()
            return None
        except RuntimeError as e:
            return str(e)
        finally:
            self._running.discard(command)
            _say(f"pack: {command.label} ends")

    def checkpoint(self, *args, **kwargs):
        import submitit

        running = list(self._running)
        for command in running:  # every running cell saves its checkpoint at once, then the pack waits for them
            command.stop()
        for command in running:
            command.wait_stopped()
        left = [Command(c.args, c.cwd, c.label) for c in self.commands if not c.finished()]
        return submitit.helpers.DelayedSubmission(Pack(left, self.at_once))

    def __getstate__(self):
        return {"commands": self.commands, "at_once": self.at_once, "_running": set()}


def _say(line: str) -> None:
    """One line in one write: print writes a line's end apart, and the pack's threads share one stdout."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def sweep(
    study: str | None = None,
    *,
    config_files: list[str] | tuple[str, ...] = ("config.yaml",),
    executor: str = "slurm",
    results: str | None = None,
    partition: str | None = None,
    account: str | None = None,
    mem_gb: float | None = None,
    time_min: float | None = None,
    gpus: int | None = None,
    threads: int = 1,
    parallel: int | None = None,
    retries: int | None = None,
    cells_per_job: int | None = None,
    cells_at_once: int | None = None,
    profile: str | None = None,
    log_dir: str | None = None,
    aggregate: bool = True,
    poll_s: float = 2.0,
    echo: Callable[[str], None] = print,
) -> SweepOutcome:
    """Run every cell of STUDY that has no result yet; return what finished, what was skipped, what failed.
    `retries`, `mem_gb` and `time_min` (a first attempt's; later ones grow as the policy says), `cells_per_job` and
    `cells_at_once` left None are the policy's, read from `profile` (`qlbench.cluster.policy`); on one machine
    (`executor="local"`) a job is one cell unless asked, as under profiles/local."""
    if executor not in ("slurm", "local"):
        raise QlbenchError(f"executor {executor!r}: use 'slurm' or 'local'")
    policy = policylib.read(profile).starting_at(None if mem_gb is None else mem_gb * 1000, time_min)
    retries = policy.retries if retries is None else retries
    if cells_per_job is None:
        cells_per_job = policy.cells_per_job if executor == "slurm" else 1  # packs share a cluster job's start-up
    cells_at_once = policy.cells_at_once if cells_at_once is None else cells_at_once
    if cells_per_job < 1 or cells_at_once < 1:
        raise QlbenchError(f"cells per job {cells_per_job}, cells at once {cells_at_once}: each must be 1 or more")
    files = [str(Path(f).resolve()) for f in config_files]
    st = studylib.load(studylib.read_config(files), study)
    root = results or st.results
    outcome = SweepOutcome(st.name, root)
    cwd = os.getcwd()
    logs = Path(log_dir or Path(root) / st.name / "logs" / "sweep").resolve()
    config_args = [a for f in files for a in ("--config", f)]
    gpus = st.tree.runtime.gpus if gpus is None else gpus
    if parallel is None and executor == "local":  # jobs at once: each takes `threads` CPUs per cell it runs at once
        parallel = max(1, (os.cpu_count() or 1) // max(1, threads * min(cells_at_once, cells_per_job)))

    def submitter(name: str, attempt: int, cpus: int, gpu: int, cells: int = 1, at_once: int = 1):
        size = policy.job_size(cells, at_once, attempt, cpus=cpus, gpus=gpu)
        return _Submitter(executor, logs, name, partition, account, parallel=parallel, **size)

    _prepare_bases(st, config_args, cwd, submitter, poll_s, echo)

    todo = []
    for cell, state in zip(gridlib.cells(st), statuslib.study_status(st, root)):  # one pass over the tree
        if state.state in ("done", "diverged"):
            outcome.skipped.append(cell.path)
        else:  # missing, failed, made under other settings (stale), or a row that cannot be read (corrupt)
            if state.state == "corrupt":  # moved aside, as the workflow does: no driver takes it for a result
                finished.move_aside(str(Path(gridlib.cell_dir(root, st.name, cell)) / gridlib.ROW))
            todo.append(cell)
    echo(f"{st.name}: {len(todo)} cells to run, {len(outcome.skipped)} already done ({executor})")
    for attempt in range(1, retries + 2):
        if not todo:
            break
        jobs = {}
        sub = submitter(f"qlbench-{st.name}", attempt, threads, gpus, min(cells_per_job, len(todo)),
                        cells_at_once)
        warm = ["--warm"] if cells_per_job > 1 else []  # a pack forks its cells from one warm process
        for cell in todo:
            out = str(Path(gridlib.cell_dir(root, st.name, cell)).resolve())
            args = ["run", *warm, *config_args, "--study", st.name, *cell.args(), "--out", out,
                    "--threads", str(threads)]
            jobs[cell] = Command(args, cwd, cell.path)
        commands = list(jobs.values())
        packs = [Pack(commands[i:i + cells_per_job], cells_at_once) for i in range(0, len(commands), cells_per_job)]
        handles = sub.run(packs if cells_per_job > 1 else commands, poll_s)
        echo(f"attempt {attempt}: submitted {len(todo)} cells in {len(handles)} jobs{_ids(handles)}")
        job_states = sub.wait(handles, poll_s)
        states = [job_states[i // cells_per_job] for i in range(len(commands))]
        todo = []
        for cell, state in zip(jobs, states):
            out = Path(gridlib.cell_dir(root, st.name, cell))
            if statuslib.cell_status(out, cell.path).state in ("done", "diverged"):  # a row, and a readable one
                outcome.done.append(cell.path)
                outcome.failed.pop(cell.path, None)
                continue
            reason = statuslib.cell_status(out, cell.path, now=time.time() + statuslib.STALE_S).reason
            outcome.failed[cell.path] = f"{reason} [job {state}]" if state else reason
            echo(f"  failed: {cell.path}: {outcome.failed[cell.path]}")
            todo.append(cell)
    if outcome.failed:
        echo(f"{st.name}: {len(outcome.failed)} cells failed; `qlbench status {st.name}` lists them")
        return outcome
    if aggregate:
        outcome.cells_parquet = _aggregate(st, root, config_args, cwd).resolve()
        echo(f"{st.name}: {len(outcome.done)} cells run, {len(outcome.skipped)} skipped -> {outcome.cells_parquet}")
    return outcome


def _prepare_bases(st, config_args, cwd, submitter, poll_s, echo) -> None:
    from qlbench.data import models

    resources = st.resources
    for name in st.models:
        target = Path(models.base_dir(resources, name))
        if st.model(name)["source"] not in models.PREPARED or target.exists():
            continue
        echo(f"preparing base {name} -> {target}")
        sub = submitter(f"qlbench-prepare-{name}", 1, 2, 0)
        cmd = Command(["prepare", *config_args, name, "--out", str(target.resolve()), "--threads", "2"], cwd, name)
        handles = sub.run([cmd], poll_s)
        state = sub.wait(handles, poll_s)[0]
        if not target.exists():
            raise QlbenchError(f"preparing base {name} failed{f' ({state})' if state else ''}; "
                               f"see {sub.logs} for its log")


def _aggregate(st, root: str, config_args: list[str], cwd: str) -> Path:
    """The same command the workflow's aggregate rule runs, so both trees aggregate alike."""
    cmd = [sys.executable, "-m", "qlbench.cli", "aggregate", *config_args, st.name, "--results", root]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise QlbenchError(f"aggregating {st.name} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
    return Path(cwd) / root / st.name / "cells.parquet"


def _ids(handles) -> str:
    ids = sorted({str(h.job_id).split("_")[0] for h in handles})
    return f" (job {', '.join(ids[:3])}{'...' if len(ids) > 3 else ''})" if ids else ""


class _Submitter:
    """submitit underneath; the queue, not submitit's result file, decides when a SLURM job has ended."""

    def __init__(self, kind, logs: Path, name, partition, account, mem_gb, time_min, cpus, gpus, parallel):
        import submitit

        self.kind, self.logs, self.parallel = kind, logs, parallel
        self.executor = submitit.AutoExecutor(folder=str(logs / "%j"), cluster=kind)
        params = dict(name=name, timeout_min=int(time_min), mem_gb=mem_gb, cpus_per_task=cpus)
        if kind == "slurm":
            params.update(slurm_array_parallelism=parallel or 1000, gpus_per_node=gpus or None,
                          slurm_partition=partition, slurm_account=account)
            params = {k: v for k, v in params.items() if v is not None}
        self.executor.update_parameters(**params)

    def run(self, commands: list, poll_s: float) -> list:
        if self.kind == "slurm":
            with self.executor.batch():
                handles = [self.executor.submit(c) for c in commands]
            return handles
        # local: at most `parallel` processes at once
        handles, running = [], []
        for c in commands:
            while len([h for h in running if not h.done()]) >= (self.parallel or 1):
                time.sleep(poll_s / 4)
            h = self.executor.submit(c)
            handles.append(h)
            running.append(h)
        return handles

    def wait(self, handles: list, poll_s: float) -> list[str | None]:
        """Until every job has ended; returns each job's final state (SLURM's word for it, or None)."""
        states: dict[int, str | None] = {}
        while len(states) < len(handles):
            queue = _squeue_states([h.job_id for h in handles]) if self.kind == "slurm" else {}
            for i, h in enumerate(handles):
                if i in states:
                    continue
                if self.kind == "slurm":
                    state = queue.get(str(h.job_id))
                    if state is None or state in SLURM_FINAL:  # gone from the queue, or over
                        states[i] = _sacct_state(h.job_id) or state
                elif h.done():
                    states[i] = None if h.state in ("FINISHED", "DONE") else h.state
            if len(states) < len(handles):
                time.sleep(poll_s)
        return [states[i] for i in range(len(handles))]


def _squeue_states(job_ids: list[str]) -> dict[str, str]:
    """job id (`123` or `123_4`) -> state, for the jobs still known to the controller (finished ones stay for
    MinJobAge, typically 300 s)."""
    parents = sorted({str(j).split("_")[0] for j in job_ids})
    try:
        out = subprocess.run(["squeue", "--states=all", "-h", "-r", "-o", "%i %T", "-j", ",".join(parents)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {str(j): "UNKNOWN" for j in job_ids}  # can't tell: assume still there, ask again
    if out.returncode != 0:
        if "Invalid job id" in out.stderr:
            return {}  # all purged from the controller: over
        return {str(j): "UNKNOWN" for j in job_ids}
    states = {}
    for line in out.stdout.split("\n"):
        if line.strip():
            job, state = line.split()[:2]
            states[job] = state
    return states


def _sacct_state(job_id) -> str | None:
    """The final state from accounting, when there is accounting (None otherwise). A step killed for memory makes
    the job OUT_OF_MEMORY here, though SLURM records the job itself as FAILED when its batch script exits non-zero."""
    try:
        out = subprocess.run(["sacct", "-n", "-P", "-o", "State", "-j", str(job_id)],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    states = [x.split()[0] for x in out.stdout.split("\n") if x.strip()]
    if out.returncode != 0 or not states:
        return None
    return "OUT_OF_MEMORY" if "OUT_OF_MEMORY" in states else states[0]
