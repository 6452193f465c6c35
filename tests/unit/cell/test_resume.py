"""An interrupted cell resumes from its checkpoint and ends with the numbers of an uninterrupted run (on the CPU).

Real processes, real signals: SIGKILL (no chance to save; the periodic checkpoint is what survives) and SIGTERM
(what SLURM sends at a time limit: the cell saves a checkpoint, exits non-zero with one line, and logs why).
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import torch
from safetensors.torch import load_file

from qlbench.results import CURVE, PROVENANCE, TIMING_COLUMNS, curve_frame
from qlbench.cluster.status import cell_status

from conftest import BIN, CONFIG_ARGS

# long enough to be caught mid-training; the checkpoint comes every 10 steps; gradient variance probed at steps
# 0, 20, 40, 59, 79: the point of step 0 is taken before any interruption, so only the checkpoint can keep it
LONG = ["--set", "steps=80", "--set", "checkpoint_every=10", "--set", "grad_var_points=5"]
CELL = ["--study", "micro", "--model", "micro-gpt2", "--bits", "4", "--rank", "4", "--mask", "b1.mlp"]
RUN_HISTORY = ("resumed_from",)  # how the run went, not what it computed


def start(workdir: Path, out: Path, env: dict | None = None) -> subprocess.Popen:
    cmd = [BIN / "qlbench", "run", *CONFIG_ARGS, *CELL, *LONG, "--out", out]
    return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def inside_a_slurm_job_ending_in(workdir: Path, seconds: int) -> dict:
    """An environment where the cell believes it runs in SLURM job 1, whose limit is `seconds` away (a fake squeue
    answers for it): SLURM itself never signals the cell, so the cell must stop for the clock."""
    fake = workdir / "fake-bin"
    fake.mkdir()
    (fake / "squeue").write_text(f"#!/bin/sh\ndate -d '+{seconds} seconds' +%Y-%m-%dT%H:%M:%S\n")
    (fake / "squeue").chmod(0o755)
    return {**os.environ, "SLURM_JOB_ID": "1", "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}


def interrupt_after_checkpoint(proc: subprocess.Popen, out: Path, sig: int) -> str:
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None, f"the cell ended before its first checkpoint:\n{proc.stdout.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.01)
    proc.send_signal(sig)
    stdout, _ = proc.communicate(timeout=120)
    return stdout


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def assert_same_cell(ref: Path, got: Path) -> None:
    skip = set(TIMING_COLUMNS) | set(PROVENANCE) | set(RUN_HISTORY) | {CURVE}  # the curve: compared below
    a, b = pl.read_parquet(ref / "row.parquet"), pl.read_parquet(got / "row.parquet")
    assert a.columns == b.columns
    assert a["grad_var_n"][0] == 5 and math.isfinite(a["grad_var_first"][0])  # every probe point, in both
    differ = {c: (a[c][0], b[c][0]) for c in a.columns if c not in skip and not same(a[c][0], b[c][0])}
    assert not differ, f"resumed cell differs from the uninterrupted one: {differ}"
    ca, cb = curve_frame(a), curve_frame(b)
    assert ca.height == a["steps_done"][0] and ca.drop("step_time_s").equals(cb.drop("step_time_s"))
    wa, wb = load_file(ref / "adapter.safetensors"), load_file(got / "adapter.safetensors")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, micro_resources):
    """One uninterrupted cell and two interrupted ones (SIGKILL, SIGTERM), run side by side, then resumed."""
    workdir = tmp_path_factory.mktemp("resume")
    (workdir / "resources").symlink_to(micro_resources)
    ref, killed, termed, timed = (workdir / name for name in ("ref", "killed", "termed", "timed"))
    # the limit comes 1 s after the cell asks (it stops 30 s early): it stops at its first step
    procs = {"ref": start(workdir, ref), "killed": start(workdir, killed), "termed": start(workdir, termed),
             "timed": start(workdir, timed, inside_a_slurm_job_ending_in(workdir, 31))}
    first = {
        "killed": interrupt_after_checkpoint(procs["killed"], killed, signal.SIGKILL),
        "termed": interrupt_after_checkpoint(procs["termed"], termed, signal.SIGTERM),
        "timed": procs["timed"].communicate(timeout=300)[0],
    }
    names = ("killed", "termed", "timed")
    codes = {name: procs[name].returncode for name in names}
    statuses = {name: cell_status(workdir / name, name) for name in names}
    logs_before = {name: (workdir / name / "log.txt").read_text() for name in names}
    again = {name: start(workdir, workdir / name) for name in names}
    assert procs["ref"].wait(timeout=300) == 0, procs["ref"].stdout.read()
    for name, proc in again.items():
        assert proc.wait(timeout=300) == 0, proc.stdout.read()
    return dict(workdir=workdir, first=first, codes=codes, statuses=statuses, logs_before=logs_before)


def test_sigkill_then_rerun_resumes_and_matches(interrupted):
    w = interrupted["workdir"]
    assert interrupted["codes"]["killed"] == -signal.SIGKILL
    status = interrupted["statuses"]["killed"]
    assert status.state == "failed" and "killed" in status.reason and "checkpoint saved" in status.reason
    resumed = pl.read_parquet(w / "killed" / "row.parquet")["resumed_from"][0]
    assert resumed > 0 and resumed % 10 == 0
    assert f"resumed from checkpoint at step {resumed}" in (w / "killed" / "log.txt").read_text()
    assert not (w / "killed" / "checkpoint.pt").exists()  # a finished cell drops its checkpoint
    assert_same_cell(w / "ref", w / "killed")


def test_sigterm_saves_a_checkpoint_exits_with_a_reason_then_resumes(interrupted):
    w = interrupted["workdir"]
    assert interrupted["codes"]["termed"] == 1
    assert "qlbench run: Interrupted: stopped at step" in interrupted["first"]["termed"]
    last = interrupted["logs_before"]["termed"].strip().splitlines()[-1]
    assert last.startswith("error: Interrupted: stopped at step") and last.endswith("checkpoint saved")
    status = interrupted["statuses"]["termed"]
    assert status.state == "failed" and status.reason.startswith("Interrupted: stopped at step")
    stopped_at = int(last.split("stopped at step ")[1].split(";")[0])
    assert pl.read_parquet(w / "termed" / "row.parquet")["resumed_from"][0] == stopped_at > 0
    assert_same_cell(w / "ref", w / "termed")


def test_cell_stops_before_its_slurm_time_limit_then_resumes(interrupted):
    w = interrupted["workdir"]
    assert interrupted["codes"]["timed"] == 1, interrupted["first"]["timed"]
    last = interrupted["logs_before"]["timed"].strip().splitlines()[-1]
    assert last.startswith("error: Interrupted: stopped at step") and last.endswith("checkpoint saved")
    assert interrupted["statuses"]["timed"].state == "failed"
    assert pl.read_parquet(w / "timed" / "row.parquet")["resumed_from"][0] > 0
    assert_same_cell(w / "ref", w / "timed")


def test_a_tampered_checkpoint_is_refused_on_resume_in_one_line_and_nothing_in_it_runs(tmp_path, micro_resources):
    """Whoever can write into a results folder cannot make the next resume run code: a checkpoint.pt with a pickled
    object in it (whose `__reduce__` would create a marker file) stops the cell in one line; no marker appears."""
    from test_safe_load import Planted

    (tmp_path / "resources").symlink_to(micro_resources)
    out, marker = tmp_path / "cell", tmp_path / "ran"
    interrupt_after_checkpoint(start(tmp_path, out), out, signal.SIGTERM)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    torch.save({**state, "curve": [Planted(marker)]}, out / "checkpoint.pt")
    again = start(tmp_path, out)
    stdout, _ = again.communicate(timeout=300)
    assert again.returncode == 1 and not marker.exists(), stdout
    errors = [line for line in stdout.splitlines() if "checkpoint" in line and "io.open" in line]
    assert len(errors) == 1 and errors[0].startswith("Error: checkpoint ") and "refused" in errors[0], stdout
    assert "Traceback" not in stdout and not (out / "row.parquet").exists()
