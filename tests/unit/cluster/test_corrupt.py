"""A result file that cannot be read — a row truncated by a full disk or an interrupted copy, a file that is not a
row — is named `corrupt` by `qlbench status`, rerun by the workflow and by `qlbench sweep`, and never reaches an
aggregate. Through the real snakemake on the micro study."""

from __future__ import annotations

import os
import shutil
import subprocess

import polars as pl
import pytest

from qlbench.study import config as studylib, finished, grid

from conftest import BIN, CONFIGS, CONFIG_ARGS, job_counts, snakemake

AGGREGATES = {"aggregate", "summarize", "similarity", "qlora_figure", "bounds", "sensitivity",
              "validate_recommendation"}


def truncate(path) -> None:
    """What a full disk or a killed copy leaves: the first half of the file, no parquet footer."""
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def qlbench(work, *args, timeout=300):
    return subprocess.run([BIN / "qlbench", *map(str, args)], cwd=work, text=True, capture_output=True,
                          timeout=timeout)


ROW = {"study": "s", "model": "m", "bits": 4, "rank": 4, "mask": "all", "seed": 0, "status": "ok"}


def test_stack_names_each_corrupt_file_and_keeps_the_rest_in_order(tmp_path):
    paths = []
    for i in range(6):
        path = tmp_path / f"c{i}" / "row.parquet"
        path.parent.mkdir()
        pl.DataFrame([{**ROW, "seed": i, "eval_loss": float(i)}]).write_parquet(path)
        paths.append(str(path))
    truncate(paths[1])
    open(paths[2], "wb").close()  # empty
    pl.DataFrame({"module": ["h.0"], "quant_mse": [0.1]}).write_parquet(paths[3])  # a file that is not a row
    pl.DataFrame([{**ROW, "bits": "4"}]).write_parquet(paths[4])  # a row whose bits are text
    stamps = [finished.stamp(p) for p in paths]
    cache = tmp_path / "cache" / "cells.parquet"
    for _ in range(2):  # the second read comes partly from the cache: corrupt files are never cached
        corrupt = {}
        got = finished.stack(paths, stamps, cache, corrupt=corrupt, required=finished.row_required(), one_row=True)
        assert got["seed"].to_list() == [0, 5] and got["bits"].dtype == pl.Int64
        assert set(corrupt) == set(paths[1:5]), corrupt
        assert corrupt[paths[1]].startswith("unreadable") and corrupt[paths[2]].startswith("unreadable")
        assert "lacks columns status" in corrupt[paths[3]] and "bits is String" in corrupt[paths[4]]
    # two rows in one file is not a cell's row either
    pl.DataFrame([ROW, ROW]).write_parquet(paths[1])
    corrupt = {}
    finished.stack(paths[:2], [finished.stamp(p) for p in paths[:2]], cache, corrupt=corrupt,
                   required=finished.row_required(), one_row=True)
    assert corrupt == {paths[1]: "holds 2 rows, not one"}
    # rewritten whole, a file is read again and counts
    pl.DataFrame([{**ROW, "seed": 1}]).write_parquet(paths[1])
    corrupt = {}
    got = finished.stack(paths[:2], [finished.stamp(p) for p in paths[:2]], cache, corrupt=corrupt,
                         required=finished.row_required(), one_row=True)
    assert corrupt == {} and got["seed"].to_list() == [0, 1]
    with pytest.raises(pl.exceptions.PolarsError):  # asked for no `corrupt`, a reader still fails loudly
        finished.stack([paths[2]], [finished.stamp(paths[2])], None)


@pytest.fixture(scope="module")
def micro():
    return studylib.load(studylib.read_config(CONFIGS), "micro")


@pytest.fixture(scope="module")
def truncated(tmp_path_factory, micro_resources, micro):
    """The micro study run through snakemake, then one quantized cell's row truncated."""
    work = tmp_path_factory.mktemp("micro-corrupt")
    shutil.copytree(micro_resources, work / "resources")
    run = snakemake(work, "--cores", "2", "--config", "study=micro")
    assert run.returncode == 0, run.stdout[-3000:]
    qlbench(work, "status", "micro", *CONFIG_ARGS)  # the rows are in the cache now
    cell = next(c for c in grid.cells(micro) if c.bits < 16)
    row = work / "results/micro/cells" / cell.path / "row.parquet"
    before = pl.read_parquet(row)
    truncate(row)
    return work, cell, row, before


@pytest.mark.workflow
def test_a_truncated_row_is_corrupt_refused_by_the_aggregate_and_rerun_by_snakemake(truncated, micro):
    work, cell, row, before = truncated
    status = qlbench(work, "status", "micro", *CONFIG_ARGS)
    assert status.returncode == 0, status.stderr
    n = len(grid.cells(micro))
    assert f"{n} cells: {n - 1} done, 0 diverged, 0 stale, 0 failed, 0 running, 0 missing, 1 corrupt" in status.stdout
    line = next(x for x in status.stdout.splitlines() if cell.path in x)
    assert line.split()[0] == "corrupt" and str(row) in line and "unreadable" in line, status.stdout
    assert "resubmit the 0 failed, 1 corrupt and 0 missing cells" in status.stdout

    agg = qlbench(work, "aggregate", "micro", *CONFIG_ARGS)
    assert agg.returncode == 1 and len(agg.stderr.strip().splitlines()) == 1, agg.stderr
    assert "1 cells have a result file that cannot be read" in agg.stderr and cell.path in agg.stderr
    left_out = qlbench(work, "aggregate", "micro", *CONFIG_ARGS, "--allow-missing")
    assert left_out.returncode == 0 and "1 corrupt left out" in left_out.stdout, left_out.stderr
    assert pl.read_parquet(work / "results/micro/cells.parquet").height == n - 1

    dry = snakemake(work, "-n", "--config", "study=micro")
    counts = job_counts(dry.stdout)
    assert counts["cell"] == 1 and counts["aggregate"] == 1, dry.stdout[-3000:]
    assert set(counts) - {"cell", "all", "total"} <= AGGREGATES
    assert f"results/micro/cells/{cell.path}/row.parquet" in dry.stdout  # exactly that cell is planned
    assert "moved aside to row.parquet.corrupt" in dry.stdout
    aside = qlbench(work, "status", "micro", *CONFIG_ARGS)
    assert next(x for x in aside.stdout.splitlines() if cell.path in x).split()[0] == "corrupt"

    rerun = snakemake(work, "--cores", "2", "--config", "study=micro")
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    assert job_counts(rerun.stdout)["cell"] == 1
    after = pl.read_parquet(row)
    for column in ("eval_loss_before", "eval_loss", "train_loss_final", "config_hash"):
        assert after[column][0] == before[column][0], column
    cells = pl.read_parquet(work / "results/micro/cells.parquet")
    assert cells.height == n and (cells["status"] == "ok").all()
    done = qlbench(work, "status", "micro", *CONFIG_ARGS)
    assert f"{n} cells: {n} done" in done.stdout and "corrupt" not in done.stdout


@pytest.mark.workflow
def test_sweep_reruns_a_corrupt_row(truncated, micro):
    work, cell, row, before = truncated
    other = next(c for c in grid.cells(micro) if c.bits == 16)
    bad = work / "results/micro/cells" / other.path / "row.parquet"
    pl.DataFrame({"module": ["h.0"]}).write_parquet(bad)  # not a row at all
    swept = subprocess.run([BIN / "qlbench", "sweep", "micro", *CONFIG_ARGS, "--executor", "local"],
                           cwd=work, text=True, capture_output=True, timeout=600,
                           env={**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"})
    assert swept.returncode == 0, swept.stdout[-3000:] + swept.stderr[-2000:]
    assert "micro: 1 cells to run, 2 already done (local)" in swept.stdout, swept.stdout
    assert pl.read_parquet(bad)["status"][0] == "ok" and (bad.parent / "row.parquet.corrupt").exists()
    assert pl.read_parquet(work / "results/micro/cells.parquet").height == len(grid.cells(micro))
