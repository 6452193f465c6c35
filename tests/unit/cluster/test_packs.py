"""Packs of cells through the real snakemake: the workflow forks every cell from one warm process (`qlbench run
--warm`), and the rows, curves and adapters are bit-identical to those of cells each in a fresh process. A cell
that fails inside the pack (an exception on its first attempt; a SIGKILL mid-training) fails alone: its siblings'
rows stay, and the next run reruns exactly the failed cells."""

import copy
import shutil
import subprocess

import polars as pl
import pytest

from qlbench.results import PROVENANCE, TIMING_COLUMNS
from qlbench.study import config as study, grid

from conftest import BIN, REPO, job_counts, snakemake, write_config

pytestmark = pytest.mark.workflow
PROFILE = ["--profile", str(REPO / "profiles/local"), "--cores", "2", "--config", "study=micro"]
RAISES, KILLED = "micro-gpt2/b4/r4/all/s0", "micro-gpt2/b4/r4/b1.mlp/s0"
RUN_HISTORY = {"resumed_from"}  # the killed cell resumes from its step-10 checkpoint: how it ran, not what


def same_tables(a: pl.DataFrame, b: pl.DataFrame, skip: set[str]) -> list[str]:
    keys = ["bits", "mask"] + (["step"] if "step" in a.columns else [])
    a, b = a.sort(keys), b.sort(keys)
    return [c for c in a.columns if c not in skip and not a[c].equals(b[c])]


def test_warm_cells_equal_fresh_ones_and_a_failing_cell_fails_alone(tmp_path, micro_resources, repo_config,
                                                                      monkeypatch):
    planted = copy.deepcopy(repo_config)
    planted["studies"]["micro"]["fail"] = [f"first:{RAISES}", f"kill@15:{KILLED}"]
    planted_file = write_config(tmp_path / "planted.yaml", planted)
    packed, fresh = tmp_path / "packed", tmp_path / "fresh"
    for work in (packed, fresh):
        shutil.copytree(micro_resources, work / "resources")
    cells = grid.cells(study.load(repo_config, "micro"))

    first = snakemake(packed, *PROFILE, configfile=planted_file)
    assert first.returncode != 0 and first.stdout.count("[warm ") == len(cells) - 2, first.stdout[-3000:]
    rows = {c.path: (packed / "results/micro/cells" / c.path / grid.ROW).exists() for c in cells}
    assert rows == {c.path: c.path not in (RAISES, KILLED) for c in cells}  # the sibling's row stayed
    status = subprocess.run([BIN / "qlbench", "status", "-c", planted_file, "micro"], cwd=packed, text=True,
                            capture_output=True).stdout
    assert "planted failure on the first attempt" in status and "killed without a word" in status, status
    dry = snakemake(packed, "-n", *PROFILE, configfile=planted_file)
    assert job_counts(dry.stdout)["cell"] == 2, dry.stdout[-2000:]  # exactly the two failed cells
    second = snakemake(packed, *PROFILE, configfile=planted_file)
    assert second.returncode == 0 and second.stdout.count("[warm ") == 2, second.stdout[-3000:]

    monkeypatch.setenv("QLBENCH_WARM", "0")  # every cell in a fresh process
    clean = snakemake(fresh, *PROFILE)
    assert clean.returncode == 0 and "[warm " not in clean.stdout, clean.stdout[-3000:]
    skip = set(PROVENANCE) | set(TIMING_COLUMNS) | RUN_HISTORY
    for table in ("cells", "curves"):
        a, b = (pl.read_parquet(w / f"results/micro/{table}.parquet") for w in (packed, fresh))
        assert a.height == b.height and not same_tables(a, b, skip), table
    for c in cells:
        assert (packed / "results/micro/cells" / c.path / grid.ADAPTER).read_bytes() == \
            (fresh / "results/micro/cells" / c.path / grid.ADAPTER).read_bytes(), c.path


def test_a_requeued_job_leaves_out_the_cells_that_had_finished():
    """SLURM restarts a requeued job's command as it was, and Snakemake always runs a target job: the pack's
    finished cells ran again (the chaos test saw their rows rewritten). The first start keeps snakemake's command;
    a restart drops the targets whose outputs are there, and a job with none left runs nothing."""
    from snakemake_executor_plugin_qlbench_slurm.nested import args, encode

    a, b = "cell:study=micro,cell=micro-gpt2/b4/r4/all/s0", "cell:study=micro,cell=micro-gpt2/b8/r4/all/s0"
    outputs = encode({a: ["results/a/row.parquet"], b: ["results/b/row.parquet"]})
    spawned = ["--snakefile", "Snakefile", "--target-jobs", a, b, "--force", "--nolock"]
    done = {"results/a/row.parquet"}.__contains__
    assert args(["--outputs", outputs, *spawned], {}, done) == spawned
    assert args(["--outputs", outputs, *spawned], {"SLURM_RESTART_COUNT": "0"}, done) == spawned
    restart = {"SLURM_RESTART_COUNT": "1"}
    assert args(["--outputs", outputs, *spawned], restart, done) == ["--snakefile", "Snakefile", "--target-jobs", b,
                                                                      "--force", "--nolock"]
    assert args(["--outputs", outputs, *spawned], restart, lambda f: True) is None
    assert args(spawned, restart, done) == spawned  # no map: snakemake's command as it was


def test_a_job_scancel_ended_is_seen_as_cancelled_not_as_running():
    """sacct says `CANCELLED by 0`; the slurm plugin matched states whole and waited for such a job for ever."""
    import asyncio
    import logging

    import snakemake_executor_plugin_qlbench_slurm  # noqa: F401  (patches the slurm plugin's status query)
    import snakemake_executor_plugin_slurm as slurm

    sacct = "printf '54|CANCELLED by 0\\n55|COMPLETED\\n56|RUNNING\\n'"
    stati, _ = asyncio.run(slurm.query_job_status(sacct, logging.getLogger("test")))
    assert stati == {"54": "CANCELLED", "55": "COMPLETED", "56": "RUNNING"}
