"""Chaos on the real test cluster: a study of 33 micro cells through the SLURM profile (packs, warm processes) while
faults land at seeded random times — scancel of a running job, kill -9 of a cell and of a job's warm process, the
node drained then resumed, a running job requeued, a finished row truncated (an interrupted copy) — then the plain
rerun command until done. Every cell ends with one readable row equal to an undisturbed run's, bit for bit (timing
and provenance aside); a finished row is never written again (but for a row a fault destroyed, which is moved aside and
its cell rerun), none is lost or duplicated.
Prints the faults injected, the reruns and the wall time."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from qlbench.results import CURVE, PROVENANCE, TIMING_COLUMNS
from qlbench.study import config as studylib, grid

from conftest import BIN, CONFIGS, REPO, full_config

pytestmark = [pytest.mark.cluster, pytest.mark.chaos]  # on demand: pytest -m chaos
SCRIPT = REPO / "tests/cluster/local_slurm.sh"
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}
SEED = int(os.environ.get("QLBENCH_CHAOS_SEED", "24"))
FAULTS = ("scancel", "kill_cell", "kill_warm", "drain", "requeue", "truncate")
MAX_RERUNS = 4
FIRST_RUN_S = 900  # a guard against a hung first run; a requeued job waits minutes to start again
HOST = socket.gethostname().split(".")[0]


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("the test cluster needs root on Debian/Ubuntu")
    start = subprocess.run(["bash", SCRIPT, "start"], text=True, capture_output=True, timeout=900)
    assert start.returncode == 0, start.stdout + start.stderr


def chaos_config(work: Path) -> Path:
    config = full_config()
    study = {**config["studies"]["micro"], "bits": [16, 8, 4], "ranks": [4], "masks": ["all", "attn", "mlp", "b0", "b1"],
             "seeds": [0, 1, 2], "steps": 12, "checkpoint_every": 4}
    path = work / "chaos.yaml"
    path.write_text(yaml.safe_dump({"studies": {"chaos": study}}))
    return path


def smk(work: Path, config: Path, *args, profile=True, timeout=1500) -> list[str]:
    cmd = [BIN / "snakemake", "results/chaos/cells.parquet", "--snakefile", REPO / "Snakefile", "--directory", work,
           *args, "--configfile", *CONFIGS, config, "--config", "study=chaos"]
    if profile:
        cmd += ["--profile", REPO / "profiles/slurm", "--qlbench-slurm-init-seconds-before-status-checks", "1",
                "--seconds-between-status-checks", "2"]
    return ["timeout", "-k", "15", str(timeout), *map(str, cmd)]


def running_jobs() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], text=True, capture_output=True, timeout=30)
    return out.stdout.split()


def ours(pid: int, work: Path) -> bool:
    """A process of this test's run: this checkout's interpreter, started by a job of the test cluster."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(BIN.parent).encode() in cmdline and any(e.startswith(b"SLURM_JOB_ID=") for e in environ)


class Chaos:
    def __init__(self, work: Path, rng: random.Random):
        self.work, self.rng, self.injected, self.truncated = work, rng, [], set()

    def cells_dir(self) -> Path:
        return self.work / "results/chaos/cells"

    def inject(self, kind: str) -> bool:
        """One fault; False where there was nothing to hit just now (tried again later)."""
        jobs = running_jobs()
        if kind == "scancel" and jobs:
            job = self.rng.choice(jobs)
            subprocess.run(["scancel", job], timeout=30)
            return self.note(kind, f"job {job}")
        if kind == "requeue" and jobs:
            job = self.rng.choice(jobs)
            subprocess.run(["scontrol", "requeue", job], timeout=30, capture_output=True)
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=30, capture_output=True)
            return self.note(kind, f"job {job}")
        if kind == "kill_cell":
            beats = sorted(self.cells_dir().rglob(".running"))
            pids = []
            for beat in beats:
                try:
                    pids.append((beat.parent, json.loads(beat.read_text())["pid"]))
                except (OSError, ValueError, KeyError):
                    pass
            pids = [(cell, pid) for cell, pid in pids if ours(pid, self.work)]
            if pids:
                cell, pid = self.rng.choice(pids)
                os.kill(pid, signal.SIGKILL)
                return self.note(kind, f"pid {pid} ({cell.relative_to(self.cells_dir())})")
        if kind == "kill_warm":
            warm = [int(p) for p in os.listdir("/proc") if p.isdigit() and
                    b"qlbench.cluster.warm" in _read(f"/proc/{p}/cmdline") and ours(int(p), self.work)]
            if warm:
                pid = self.rng.choice(warm)
                os.kill(pid, signal.SIGKILL)
                return self.note(kind, f"warm pid {pid}")
        if kind == "drain" and jobs:
            subprocess.run(["scontrol", "update", f"NodeName={HOST}", "State=DRAIN", "Reason=chaos"], timeout=30)
            time.sleep(self.rng.uniform(3, 10))
            subprocess.run(["scontrol", "update", f"NodeName={HOST}", "State=RESUME"], timeout=30)
            return self.note(kind, f"node {HOST}")
        if kind == "truncate":
            rows = [r for r in sorted(self.cells_dir().rglob("row.parquet")) if r.parent not in self.truncated]
            if rows:
                row = self.rng.choice(rows)
                data = row.read_bytes()
                row.write_bytes(data[: len(data) // 2])
                self.truncated.add(row.parent)
                return self.note(kind, str(row.parent.relative_to(self.cells_dir())))
        return False

    def note(self, kind: str, what: str) -> bool:
        self.injected.append((kind, what))
        print(f"chaos: {kind}: {what}", flush=True)
        return True


def _stamp(path: Path):
    """What a row holds: a cell run again writes other bytes (its finish time, its timings). Not the file's mtime:
    Snakemake touches a job's outputs when it has checked them (a pack's rows, when the pack ends)."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _read(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError:
        return b""


def comparable(row: pl.DataFrame) -> dict:
    skip = {*TIMING_COLUMNS, *PROVENANCE, "resumed_from", CURVE}
    out = {c: row[c][0] for c in row.columns if c not in skip}
    out["curve"] = [{k: v for k, v in s.items() if k != "step_time_s"} for s in row[CURVE][0]]
    return out


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def test_a_sweep_under_faults_finishes_every_cell_once_with_an_undisturbed_run_s_numbers(
        cluster, tmp_path, micro_resources):
    started = time.monotonic()
    ref, work = tmp_path / "undisturbed", tmp_path / "chaos"
    for w in (ref, work):
        w.mkdir()
        shutil.copytree(micro_resources, w / "resources")
    config = chaos_config(tmp_path)
    study = studylib.load(studylib.read_config([*CONFIGS, config]), "chaos")
    cells = grid.cells(study)
    assert len(cells) >= 30

    undisturbed = subprocess.run(smk(ref, config, "--cores", "2", profile=False), cwd=ref, env=ENV, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert undisturbed.returncode == 0, undisturbed.stdout[-3000:]

    rng = random.Random(SEED)
    chaos = Chaos(work, rng)
    plan = sorted((rng.uniform(5, 100), kind) for kind in FAULTS + tuple(rng.choice(FAULTS) for _ in range(3)))
    print(f"chaos: seed {SEED}, {len(cells)} cells, faults planned at " +
          ", ".join(f"{t:.0f}s {k}" for t, k in plan), flush=True)
    command = smk(work, config)
    # the first run waited for ever after each scancel (sacct's `CANCELLED by 0`, fixed in the profile's executor);
    # it keeps a time limit: a run that hangs is stopped as a user would stop it, and the command rerun
    t0 = time.monotonic()
    first = subprocess.Popen(smk(work, config, timeout=FIRST_RUN_S), cwd=work, env=ENV, text=True, stdout=open(tmp_path / "run0.out", "w"),
                             stderr=subprocess.STDOUT)
    pending = list(plan)
    seen = {}  # row -> its bytes' digest when first seen: a finished cell's row is never written again
    try:
        while first.poll() is None:
            for row in chaos.cells_dir().rglob("row.parquet"):
                if row.parent not in seen and (stamp := _stamp(row)):
                    seen[row.parent] = stamp
            if not pending:
                time.sleep(0.5)
                continue
            due, kind = pending[0]
            if time.monotonic() - t0 < due:
                time.sleep(0.5)
                continue
            pending.pop(0)
            if not chaos.inject(kind) and due < 300:
                pending.append((due + 10, kind))  # nothing to hit yet: a little later
                pending.sort()
        first.wait()
    finally:
        subprocess.run(["scontrol", "update", f"NodeName={HOST}", "State=RESUME"], timeout=30, capture_output=True)
    codes = [first.returncode]
    reruns = 0
    unlock = smk(work, config, "--unlock")
    while not all_done(work, cells) and reruns < MAX_RERUNS:
        subprocess.run(unlock, cwd=work, env=ENV, capture_output=True)
        reruns += 1
        again = subprocess.run(command, cwd=work, env=ENV, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)
        (tmp_path / f"run{reruns}.out").write_text(again.stdout)
        codes.append(again.returncode)
    wall = time.monotonic() - started
    print(f"chaos: {len(chaos.injected)} faults injected ({', '.join(k for k, _ in chaos.injected)}); "
          f"{reruns} reruns of the plain command (exit codes {codes}); wall time {wall:.0f} s", flush=True)
    assert {k for k, _ in chaos.injected} == set(FAULTS), chaos.injected  # every kind of fault landed
    assert all_done(work, cells), (tmp_path / "run0.out").read_text()[-3000:]

    table = pl.read_parquet(work / "results/chaos/cells.parquet")
    coords = table.select("model", "bits", "rank", "mask", "seed")
    assert table.height == len(cells) and coords.n_unique() == len(cells)  # none lost, none duplicated
    differ, twice = [], {}
    for cell in cells:
        folder = work / "results/chaos/cells" / cell.path
        got = comparable(pl.read_parquet(folder / "row.parquet"))
        want = comparable(pl.read_parquet(ref / "results/chaos/cells" / cell.path / "row.parquet"))
        differ += [(cell.path, c) for c in want if not same(got.get(c), want[c])]
        # Snakemake clears a job's log before each attempt: the log holds the last run, which finished once
        finishes = (folder / "log.txt").read_text().count(" done in ")
        rewritten = folder in seen and _stamp(folder / "row.parquet") != seen[folder]
        if finishes != 1 or rewritten != (folder in chaos.truncated):
            twice[cell.path] = (finishes, rewritten)
        if folder in chaos.truncated:  # its destroyed row was moved aside and the cell ran again
            assert (folder / "row.parquet.corrupt").exists(), cell.path
    assert not differ, differ
    assert not twice, (twice, sorted(str(t) for t in chaos.truncated))


def all_done(work: Path, cells) -> bool:
    """Every cell has a readable row of status ok, and the aggregate is there."""
    for cell in cells:
        try:
            if pl.read_parquet(work / "results/chaos/cells" / cell.path / "row.parquet")["status"][0] != "ok":
                return False
        except Exception:  # noqa: BLE001  (missing or unreadable)
            return False
    return (work / "results/chaos/cells.parquet").exists()
