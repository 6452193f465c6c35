"""The cluster path for real: a single-node SLURM (tests/cluster/local_slurm.sh), the repo's profile, sbatch, sacct.

One planted run of the micro study carries most assertions: a cell that fails its first attempt, one SIGKILLed
mid-training, one over its memory limit — all retried by the profile, the study completes. A second run has a cell
that always fails; a submitit sweep runs the study cleanly, and its cells.parquet is compared with the planted run's
(which also shows that the killed-and-resumed cell ended with the numbers of an uninterrupted one).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import polars as pl
import pytest
import yaml

from qlbench.study import config as study, grid
from qlbench.results import PROVENANCE, TIMING_COLUMNS

from conftest import BIN, CONFIGS, CONFIG_ARGS, REPO, job_counts

pytestmark = pytest.mark.cluster

SCRIPT = REPO / "tests/cluster/local_slurm.sh"
PROFILE = REPO / "profiles/slurm"
FIRST, KILLED, OOM = "micro-gpt2/b4/r4/all/s0", "micro-gpt2/b4/r4/b1.mlp/s0", "micro-gpt2/b16/r4/none/s0"
# a pack's failing cell: its siblings must still finish (the nested snakemake takes the three in an order of its own)
PACK_FAILS = FIRST
KILL_STEP = 15  # micro checkpoints every 10 steps: the retry resumes from step 10
OOM_MB = 4500  # the profile gives a cell 4000 MB on its first attempt, 8000 on its second
RUN_HISTORY = ("resumed_from",)  # how a run went, not what it computed
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}


def run(cmd, cwd, timeout) -> subprocess.CompletedProcess:
    # timeout -k: a snakemake that lost track of its jobs must not hang the suite
    return subprocess.run(["timeout", "-k", "15", str(timeout), *map(str, cmd)], cwd=cwd, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def smk(workdir: Path, configfile: Path, *args, timeout=900, packed=False) -> subprocess.CompletedProcess:
    # the profile packs cells (group jobs); most tests here look at one cell per sbatch job: a `--groups` naming no
    # rule of the workflow replaces the profile's, so every cell is its own job again
    unpack = () if packed else ("--groups", "no_rule=none")
    return run([BIN / "snakemake", "--snakefile", REPO / "Snakefile", "--directory", workdir,
                "--profile", PROFILE, "--configfile", *CONFIGS, configfile,
                "--config", "study=micro", *unpack, *args,
                # poll SLURM more often than the profile does on a shared cluster: short test jobs
                "--qlbench-slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "2"],
               workdir, timeout)


def write(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def cluster():
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("the test cluster needs root on Debian/Ubuntu")
    start = subprocess.run(["bash", SCRIPT, "start"], text=True, capture_output=True, timeout=900)
    assert start.returncode == 0, start.stdout + start.stderr
    return start.stdout


@pytest.fixture(scope="module")
def micro():
    return study.load(study.read_config(CONFIGS), "micro")


@pytest.fixture(scope="module")
def planted(cluster, tmp_path_factory):
    """micro through sbatch, from nothing (its base too), with three cells planted to fail once each."""
    work = tmp_path_factory.mktemp("slurm-planted")
    config = write(work / "planted.yaml", {"studies": {"micro": {"fail": [
        f"first:{FIRST}", f"kill@{KILL_STEP}:{KILLED}", f"mem@{OOM_MB}:{OOM}"]}}})
    done = smk(work, config)
    assert done.returncode == 0, done.stdout[-4000:]
    return work, done.stdout, sacct_jobs(done.stdout)


def sacct_jobs(snakemake_out: str) -> dict[str, dict]:
    """The run's SLURM jobs as sacct knows them: id -> {rule, target, state, steps (states), mem}."""
    submitted = re.findall(r"SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_(\w+)/(\S+)/\d+\.log\)", snakemake_out)
    run_id = re.search(r"SLURM run ID: (\S+)", snakemake_out).group(1)
    acct = subprocess.run(["sacct", "-n", "-P", "--name", run_id, "-S", "now-2hours", "-o", "JobID,State,ReqMem"],
                          text=True, capture_output=True, timeout=60)
    jobs = {job: {"rule": rule, "target": target, "steps": []} for job, rule, target in submitted}
    for line in filter(None, acct.stdout.split("\n")):
        job_id, state, mem = line.split("|")
        job = jobs.setdefault(job_id.split(".")[0], {"rule": None, "target": None, "steps": []})
        if "." in job_id:
            job["steps"].append(state.split()[0])
        else:
            job.update(state=state.split()[0], mem=mem)
    return jobs


def attempts(jobs: dict, cell: str) -> list[dict]:
    target = "micro_" + cell.replace("/", "_")
    return [jobs[j] for j in sorted(jobs, key=int) if jobs[j]["target"] == target]


def test_micro_runs_end_to_end_through_sbatch_and_sacct_lists_its_jobs(planted, micro):
    work, out, jobs = planted
    cells = pl.read_parquet(work / "results/micro/cells.parquet")
    assert cells.height == len(grid.cells(micro)) and (cells["status"] == "ok").all()
    assert (work / "results/micro/summary.md").stat().st_size > 0
    # every job snakemake submitted is one sacct knows: the base, 3 cells, 3 retries, the aggregates
    rules = [j["rule"] for j in jobs.values()]
    assert rules.count("prepare_base") == 1 and rules.count("cell") == 6 and rules.count("aggregate") == 1
    assert all(j.get("state") in ("COMPLETED", "FAILED") for j in jobs.values()), jobs
    assert sum(j["state"] == "COMPLETED" for j in jobs.values()) == len(jobs) - 3


def test_first_attempt_failure_is_resubmitted(planted):
    work, out, jobs = planted
    first, retry = attempts(jobs, FIRST)
    assert (first["state"], retry["state"]) == ("FAILED", "COMPLETED")
    cell = work / "results/micro/cells" / FIRST
    assert (cell / ".failed-once").exists() and (cell / "row.parquet").exists()
    assert out.count("Trying to restart job") == 3


def test_cell_over_its_memory_ends_out_of_memory_and_is_retried_with_more(planted):
    _, _, jobs = planted
    first, retry = attempts(jobs, OOM)
    assert "OUT_OF_MEMORY" in first["steps"] and first["mem"].startswith("4000M")
    assert retry["state"] == "COMPLETED" and retry["mem"].startswith("8000M")
    assert "OUT_OF_MEMORY" not in [s for j in jobs.values() if j is not first for s in j["steps"]]


def test_cell_killed_mid_training_resumes_from_its_checkpoint(planted):
    work, _, jobs = planted
    assert [j["state"] for j in attempts(jobs, KILLED)] == ["FAILED", "COMPLETED"]
    cell = work / "results/micro/cells" / KILLED
    row = pl.read_parquet(cell / "row.parquet")
    assert row["resumed_from"][0] == 10 and row["steps_done"][0] == row["steps"][0]
    assert "resumed from checkpoint at step 10" in (cell / "log.txt").read_text()
    assert not (cell / "checkpoint.pt").exists()


@pytest.fixture(scope="module")
def swept(planted):
    """The same study through `qlbench sweep --executor slurm` (submitit, one job array). Two cells die on their
    first attempt without a result — one SIGKILLed, one over its --mem — and are retried (planting changes no
    number, so the cells.parquet still compares)."""
    work, _, _ = planted
    config = write(work / "sweep.yaml", {"results": "results-sweep", "studies": {"micro": {"fail": [
        f"kill@{KILL_STEP}:{FIRST}", f"mem@{OOM_MB}:{OOM}"]}}})
    done = run([BIN / "qlbench", "sweep", "micro", *CONFIG_ARGS, "-c", config,
                "--executor", "slurm", "--partition", "debug", "--account", "qlbench",
                "--cells-per-job", "1"], work, 600)  # one job a cell (the profile's policy packs them)
    assert done.returncode == 0, done.stdout[-4000:]
    return work, done.stdout


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def test_sweep_cells_parquet_equals_snakemakes_apart_from_timing_and_provenance(swept):
    work, out = swept
    assert "3 cells to run, 0 already done (slurm)" in out
    # jobs that died without a result were noticed (not waited on), named with their SLURM state, and retried
    assert re.search(rf"failed: {re.escape(OOM)}: killed without a word.*\[job OUT_OF_MEMORY\]", out), out
    assert re.search(rf"failed: {re.escape(FIRST)}: killed without a word.*\[job FAILED\]", out), out
    assert "attempt 2: submitted 2 cells" in out
    smk_cells = pl.read_parquet(work / "results/micro/cells.parquet")
    sweep_cells = pl.read_parquet(work / "results-sweep/micro/cells.parquet")
    assert smk_cells.columns == sweep_cells.columns and smk_cells.height == sweep_cells.height == 3
    compared = [c for c in smk_cells.columns if c not in {*TIMING_COLUMNS, *PROVENANCE, *RUN_HISTORY}]
    assert {"eval_loss", "eval_loss_before", "train_loss_final", "settings_json"} <= set(compared)
    differ = [(c, i, smk_cells[c][i], sweep_cells[c][i]) for c in compared for i in range(smk_cells.height)
              if not same(smk_cells[c][i], sweep_cells[c][i])]
    assert not differ, differ
    # killed-and-resumed cells included: each run's resumed cell has the numbers of the other run's uninterrupted one
    by_mask = lambda cells: dict(zip(cells["mask"], cells["resumed_from"]))  # noqa: E731
    assert by_mask(smk_cells) == {"none": 0, "all": 0, "b1.mlp": 10}
    assert by_mask(sweep_cells) == {"none": 0, "all": 10, "b1.mlp": 0}


def test_status_reads_a_sweep_tree_too(swept):
    work, _ = swept
    out = run([BIN / "qlbench", "status", "micro", *CONFIG_ARGS, "-c", work / "sweep.yaml"], work, 60)
    assert out.returncode == 0 and "3 cells: 3 done, 0 diverged, 0 stale, 0 failed, 0 running, 0 missing" in out.stdout


@pytest.fixture(scope="module")
def always_failing(planted, tmp_path_factory):
    """A cell that fails every attempt (retries spent: 1 here), with the base from the planted run."""
    base, _, _ = planted
    work = tmp_path_factory.mktemp("slurm-always")
    (work / "resources").symlink_to(base / "resources")
    config = write(work / "always.yaml", {"studies": {"micro": {"fail": f"always:{FIRST}"}}})
    done = smk(work, config, "--retries", "1")
    status = run([BIN / "qlbench", "status", "micro", *CONFIG_ARGS, "-c", config], work, 60)
    again = smk(work, config, "-n")
    return work, done, status, again


def test_always_failing_cell_leaves_every_other_result_complete(always_failing, micro):
    work, done, _, _ = always_failing
    assert done.returncode != 0
    for cell in grid.cells(micro):
        row = work / "results/micro/cells" / cell.path / "row.parquet"
        assert row.exists() == (cell.path != FIRST), cell.path
    assert done.stdout.count("Trying to restart job") == 1


def test_status_names_the_failed_cell_with_its_reason(always_failing):
    _, _, status, _ = always_failing
    assert status.returncode == 0, status.stdout
    assert "3 cells: 2 done, 0 diverged, 0 stale, 1 failed, 0 running, 0 missing" in status.stdout
    line = next(x for x in status.stdout.splitlines() if FIRST in x)
    assert line.split()[0] == "failed" and "RuntimeError: planted failure (setting fail=always)" in line
    assert "snakemake --profile profiles/slurm" in status.stdout


def test_plain_rerun_resubmits_only_the_missing_cell(always_failing):
    _, _, _, again = always_failing
    assert again.returncode == 0, again.stdout[-2000:]
    counts = job_counts(again.stdout)
    assert counts["cell"] == 1 and "prepare_base" not in counts


@pytest.fixture(scope="module")
def packed(planted, tmp_path_factory, micro):
    """micro as the profile packs it: its 3 cells in one sbatch job (a group job), with the planted run's base.
    One cell fails its first attempt and no retry is allowed; then `-n` and a plain rerun."""
    work = tmp_path_factory.mktemp("slurm-packed")
    (work / "resources").symlink_to(planted[0] / "resources")
    config = write(work / "packed.yaml", {"studies": {"micro": {"fail": f"first:{PACK_FAILS}"}}})
    first = smk(work, config, "--retries", "0", packed=True)
    rows = {c.path: work / "results/micro/cells" / c.path / "row.parquet" for c in grid.cells(micro)}
    kept = {c: (r.stat().st_ino, r.stat().st_mtime_ns) for c, r in rows.items() if r.exists()}
    status = run([BIN / "qlbench", "status", "micro", *CONFIG_ARGS, "-c", config], work, 60)
    dry = smk(work, config, "-n", packed=True)
    second = smk(work, config, "--retries", "0", packed=True)
    after = {c: (r.stat().st_ino, r.stat().st_mtime_ns) for c, r in rows.items() if r.exists()}
    return work, first, kept, status, dry, second, after


def pack_jobs(snakemake_out: str) -> list[str]:
    return re.findall(r"SLURM jobid (\d+) \(log: \S*/slurm_logs/group_pack", snakemake_out)


def test_a_pack_runs_as_one_job_and_its_failing_cell_fails_alone(packed, micro):
    work, first, kept, status, dry, second, after = packed
    assert first.returncode != 0
    assert len(pack_jobs(first.stdout)) == 1, first.stdout[-4000:]  # the three cells in one sbatch job
    # the pack's other cells ran, whether before the failing one or after it (the nested snakemake keeps going)
    assert set(kept) == {c.path for c in grid.cells(micro)} - {PACK_FAILS}, kept
    # the nested snakemake takes a pack's cells in an order of its own (grid order, reverse or mixed, seen here), so
    # whether a cell ran *after* the failing one varies run to run; when one did, `kept` above shows it kept going
    log = next((work / ".snakemake/slurm_logs").rglob("*.log")).read_text()
    order = list(dict.fromkeys(re.findall(r"wildcards: study=micro, cell=(\S+)", log)))
    assert sorted(order) == sorted(c.path for c in grid.cells(micro)), order
    line = next(x for x in status.stdout.splitlines() if PACK_FAILS in x)
    assert line.split()[0] == "failed" and "planted failure on the first attempt" in line, status.stdout
    assert job_counts(dry.stdout)["cell"] == 1, dry.stdout[-2000:]  # the failed cell alone is resubmitted
    assert second.returncode == 0, second.stdout[-4000:]
    assert {c: after[c] for c in kept} == kept  # its siblings' rows untouched: the same files, never rewritten
    cells = pl.read_parquet(work / "results/micro/cells.parquet")
    assert cells.height == len(grid.cells(micro)) and (cells["status"] == "ok").all()
    # the pack's cells that finished forked from one warm process, started by the first: they run in the job's
    # own shell, not each in a job step of its own, whose end would take the warm process with it
    warm = re.findall(r": ok eval_loss=\S+ \(before training \S+\) \[warm (\d+)\]", log)
    assert len(warm) == 2 and len(set(warm)) == 1, log[-3000:]


@pytest.fixture(scope="module")
def packed_retry(planted, tmp_path_factory):
    """The same pack, one retry allowed: the study completes in one run."""
    work = tmp_path_factory.mktemp("slurm-packed-retry")
    (work / "resources").symlink_to(planted[0] / "resources")
    config = write(work / "retry.yaml", {"studies": {"micro": {"fail": f"first:{PACK_FAILS}"}}})
    done = smk(work, config, "--retries", "1", packed=True)
    return work, done


def test_a_retried_pack_reruns_only_its_failed_cell(packed_retry, micro):
    work, done = packed_retry
    assert done.returncode == 0, done.stdout[-4000:]
    jobs = pack_jobs(done.stdout)
    assert len(jobs) == 2 and done.stdout.count("Trying to restart job") == 1, done.stdout[-4000:]
    acct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", ",".join(jobs), "-o", "JobID,State,Start,ReqMem,Timelimit"],
                          text=True, capture_output=True, timeout=60).stdout.split()
    states = {j: line.split("|")[1] for line in acct for j in jobs if line.startswith(f"{j}|")}
    assert states == {jobs[0]: "FAILED", jobs[1]: "COMPLETED"}, acct
    # the pack's cells run one at a time, so it asks for one cell's memory (the profile's 4000 MB, 8000 on the
    # retry) and the sum of its 3 cells' runtimes (60 min each, 120 on the retry), not 3 x the memory and 1 x the time
    asked = [next(line.split("|")[3:5] for line in acct if line.startswith(f"{j}|")) for j in jobs]
    assert [mem[:5] for mem, _ in asked] == ["4000M", "8000M"], acct
    assert [limit for _, limit in asked] == ["03:00:00", "06:00:00"], acct
    retry_start = next(line.split("|")[2] for line in acct if line.startswith(f"{jobs[1]}|"))
    # a cell's log.txt is its own (snakemake touches a finished job's outputs, the rows, but not this): the
    # siblings' come from the first attempt, written before the retry's job started, the failed cell's from the
    # retry. A retry that reran every cell (each a target of the nested run, always run) rewrites them all.
    logs = {c.path: work / "results/micro/cells" / c.path / "log.txt" for c in grid.cells(micro)}
    written = {c: time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(f.stat().st_mtime)) for c, f in logs.items()}
    assert all(written[c] < retry_start for c in logs if c != PACK_FAILS), (written, retry_start)
    assert written[PACK_FAILS] >= retry_start and "with its 1 of 3 cells that did not finish" in done.stdout


@pytest.fixture(scope="module")
def packed_at_once(planted, tmp_path_factory):
    """micro's pack with two cells at once (`pack_slot=2`, the profile's cells at once) and a GPU per cell, as a GPU
    study would have it: the test cluster's two GPUs are counted by SLURM, not real (local_slurm.sh)."""
    work = tmp_path_factory.mktemp("slurm-packed-at-once")
    (work / "resources").symlink_to(planted[0] / "resources")
    config = write(work / "gpu.yaml", {"studies": {"micro": {"gpus": 1}}})
    done = smk(work, config, "--resources", "pack_slot=2", "--qlbench-slurm-keep-successful-logs", packed=True)
    return work, done


def test_a_pack_runs_cells_at_once_sharing_its_gpu_and_warm_process(packed_at_once, planted):
    work, done = packed_at_once
    assert done.returncode == 0, done.stdout[-4000:]
    [job] = pack_jobs(done.stdout)
    acct = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "ReqTRES,Timelimit"], text=True,
                          capture_output=True, timeout=60).stdout.strip()
    # two cells' CPUs and memory, one GPU between them (an integer `gpu` resource would be summed: 2), and the time
    # of two rounds for its three cells
    tres, limit = acct.split("|")
    assert {"cpu=2", "mem=8000M", "gres/gpu=1"} <= set(tres.split(",")) and limit == "02:00:00", acct
    [log] = [p.read_text() for p in (work / ".snakemake/slurm_logs").glob("group_pack*/*.log")]
    assert "--executor local --jobs 2 " in log, log[-3000:]
    warm = re.findall(r": ok eval_loss=\S+ \(before training \S+\) \[warm (\d+)\]", log)
    assert len(warm) == 3 and len(set(warm)) == 1, log[-3000:]
    # two ran at once: the nested snakemake started a second cell before any had finished
    assert log.count("localrule cell:", 0, log.index("Finished jobid:")) == 2, log[-3000:]
    cells = pl.read_parquet(work / "results/micro/cells.parquet")
    # ... and computed what the planted run's cells, one per job and step, did (their settings differ in gpus alone)
    series = pl.read_parquet(planted[0] / "results/micro/cells.parquet")
    assert [{**json.loads(s), "gpus": 0} for s in cells["settings_json"]] == \
        [json.loads(s) for s in series["settings_json"]]
    compared = [c for c in series.columns if c not in {*TIMING_COLUMNS, *PROVENANCE, *RUN_HISTORY, "settings_json"}]
    differ = [(c, i, series[c][i], cells[c][i]) for c in compared for i in range(series.height)
              if not same(series[c][i], cells[c][i])]
    assert not differ, differ
