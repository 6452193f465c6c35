"""Two drivers of one study at once — two `qlbench sweep` submissions, a sweep beside a snakemake run — never run one
cell twice at once or clobber a row: each cell's run holds a lock on its folder (qlbench/cluster/lock.py); a run that
finds it held waits, and has nothing to do if the other left a row."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import polars as pl
import pytest

from qlbench.study import config as studylib, grid

from conftest import BIN, CONFIGS, CONFIG_ARGS, REPO

pytestmark = pytest.mark.workflow
ENV = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1",
       "TRANSFORMERS_OFFLINE": "1"}
START = re.compile(r"^\d\d:\d\d:\d\d cell ", re.M)  # the first line of every attempt in a cell's log


def starts(log) -> int:
    return len(START.findall(log.read_text()))


def start(cmd, work, name):
    out = open(work / f"{name}.out", "w")
    return subprocess.Popen(["timeout", "-k", "10", "600", *map(str, cmd)], cwd=work, env=ENV, text=True,
                            stdout=out, stderr=subprocess.STDOUT)


def test_two_runs_of_one_cell_at_once_run_it_once(tmp_path, micro_resources):
    shutil.copytree(micro_resources, tmp_path / "resources")
    out = tmp_path / "results/micro/cells/micro-gpt2/b4/r4/all/s0"
    cmd = [BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--cell", "micro-gpt2/b4/r4/all/s0",
           "--out", out]
    first = start(cmd, tmp_path, "first")
    while not (out / ".lock").exists():  # the first holds the lock before the second starts
        assert first.poll() is None, (tmp_path / "first.out").read_text()
        time.sleep(0.05)
    second = start(cmd, tmp_path, "second")
    assert first.wait() == 0 and second.wait() == 0, (tmp_path / "second.out").read_text()
    said = (tmp_path / "second.out").read_text()
    assert "holds its lock" in said and "finished by another run" in said, said
    assert starts(out / "log.txt") == 1  # one attempt wrote the log: the second never began the cell
    assert pl.read_parquet(out / "row.parquet")["status"][0] == "ok"


def test_two_sweeps_and_a_snakemake_run_of_one_study_run_each_cell_once(tmp_path, micro_resources):
    shutil.copytree(micro_resources, tmp_path / "resources")
    micro = studylib.load(studylib.read_config(CONFIGS), "micro")
    sweep = [BIN / "qlbench", "sweep", "micro", *CONFIG_ARGS, "--executor", "local", "--parallel", "2"]
    drivers = [start(sweep, tmp_path, "sweep-a"), start(sweep, tmp_path, "sweep-b"),
               start([BIN / "snakemake", "--snakefile", REPO / "Snakefile", "--directory", tmp_path, "--cores", "2",
                      "--configfile", *CONFIGS, "--config", "study=micro"], tmp_path, "snakemake")]
    codes = [d.wait() for d in drivers]
    outs = {n: (tmp_path / f"{n}.out").read_text() for n in ("sweep-a", "sweep-b", "snakemake")}
    assert codes == [0, 0, 0], {n: o[-2000:] for n, o in outs.items()}
    cells = grid.cells(micro)
    sweep_logs = tmp_path / "results/micro/logs/sweep"
    logs = [p.read_text() for p in sweep_logs.rglob("*.out")]
    cell_output = logs + [p.read_text() for p in sweep_logs.rglob("*.err")]  # a cell logs to stderr too
    for cell in cells:
        folder = tmp_path / "results/micro/cells" / cell.path
        # a run's first line, from the cell's log and from the sweep jobs' output (which a sweep's cells print to)
        first_lines = {line for text in [(folder / "log.txt").read_text(), *cell_output] for line in text.splitlines()
                       if START.match(line) and f" cell micro/{cell.path} " in line}
        assert len(first_lines) == 1, (cell.path, first_lines)
        # Snakemake unlinks a job's log when it starts the job, maybe while a sweep's run writes it: put back
        assert starts(folder / "log.txt") == 1, (cell.path, (folder / "log.txt").read_text())
        assert pl.read_parquet(folder / "row.parquet")["status"][0] == "ok"
    # the drivers met: some run of some cell found another holding it (what a sweep's cells print is in its logs)
    assert any("holds its lock" in o for o in [*outs.values(), *logs]), outs
    table = pl.read_parquet(tmp_path / "results/micro/cells.parquet")
    assert table.height == len(cells) and (table["status"] == "ok").all()


def hold(folder):
    """Hold a cell's lock from here, as a run of it would (the lock is dropped when the descriptor closes)."""
    import fcntl

    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def test_a_row_finished_after_snakemake_planned_its_cell_is_restored_not_made_again(tmp_path, micro_resources):
    # Snakemake deletes a job's existing output before it runs it: a cell it planned without a row, that another
    # driver finished meanwhile, would run twice (CI met it: a sweep's row deleted, the cell run again 7 s later).
    # Made certain here: every cell's lock held, snakemake's first job waits on its lock while the other cells are
    # run by hand; then their jobs start with the rows already there.
    shutil.copytree(micro_resources, tmp_path / "resources")
    cells = grid.cells(studylib.load(studylib.read_config(CONFIGS), "micro"))
    root = tmp_path / "results/micro/cells"
    held = {c.path: hold(root / c.path) for c in cells}
    driver = start([BIN / "snakemake", "--snakefile", REPO / "Snakefile", "--directory", tmp_path, "--cores", "1",
                    "--configfile", *CONFIGS, "--config", "study=micro"], tmp_path, "snakemake")
    said = tmp_path / "snakemake.out"
    while not (first := re.findall(r"cell=(\S+)", said.read_text())):
        assert driver.poll() is None, said.read_text()
        time.sleep(0.1)
    others = [c.path for c in cells if c.path != first[0]]
    for path in others:  # run by hand, to the end, while snakemake's job of the first waits
        os.close(held.pop(path))
        by_hand = subprocess.run([BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--cell",
                                  path, "--out", root / path], cwd=tmp_path, env=ENV, text=True, capture_output=True)
        assert by_hand.returncode == 0, by_hand.stderr
    os.close(held.pop(first[0]))
    assert driver.wait() == 0, said.read_text()[-3000:]
    out = said.read_text()
    assert "were not present when the DAG was created" in out  # snakemake did delete the rows made meanwhile
    assert out.count("restored the row another run finished") == len(others), out
    for cell in cells:
        assert starts(root / cell.path / "log.txt") == 1, cell.path
        assert pl.read_parquet(root / cell.path / "row.parquet")["status"][0] == "ok"


def test_a_row_made_before_the_plan_is_not_restored(tmp_path, micro_resources):
    # a row deleted to run its cell again (or --forcerun) was made before the run that deletes it was planned
    shutil.copytree(micro_resources, tmp_path / "resources")
    out = tmp_path / "results/micro/cells/micro-gpt2/b4/r4/all/s0"
    cmd = [BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--cell", "micro-gpt2/b4/r4/all/s0",
           "--out", out]
    assert subprocess.run(cmd, cwd=tmp_path, env=ENV).returncode == 0
    made = (out / "row.parquet").stat().st_mtime
    (out / "row.parquet").unlink()
    again = subprocess.run(cmd, cwd=tmp_path, env={**ENV, "QLBENCH_PLANNED_AT": repr(made + 1)}, text=True,
                           capture_output=True)
    assert again.returncode == 0 and "restored" not in again.stdout, again.stdout
    assert starts(out / "log.txt") == 2  # the cell ran again (a log keeps every attempt)
    (out / "row.parquet").unlink()
    restored = subprocess.run(cmd, cwd=tmp_path, env={**ENV, "QLBENCH_PLANNED_AT": repr(made)}, text=True,
                              capture_output=True)  # planned before the second run's row: restored
    assert restored.returncode == 0 and "restored the row" in restored.stdout, restored.stdout
    assert pl.read_parquet(out / "row.parquet")["status"][0] == "ok"
    assert starts(out / "log.txt") == 2 and pl.read_parquet(out / "row.parquet")["status"][0] == "ok"
