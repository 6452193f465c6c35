"""`qlbench status` on a hand-made tree: every state, the reason of the last attempt, heartbeats, the command."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import polars as pl
import pytest

from qlbench.cluster import status
from qlbench.study import config as study, grid

from conftest import BIN, CONFIG_ARGS, CONFIGS, REPO


@pytest.fixture(scope="module")
def micro():
    return study.load(study.read_config(CONFIGS), "micro")


def write_row(folder, state):
    folder.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"status": [state], "eval_loss": [1.0]}).write_parquet(folder / "row.parquet")


def write_log(folder, *attempts):
    folder.mkdir(parents=True, exist_ok=True)
    text = "".join(f"06:00:0{i} cell micro/x  config abc\n06:00:0{i} step 0 loss 5\n{end}"
                   for i, end in enumerate(attempts))
    (folder / "log.txt").write_text(text)


def heartbeat(folder, pid, age_s=0.0, host=None):
    marker = folder / status.RUNNING
    marker.write_text(json.dumps({"host": host or socket.gethostname(), "pid": pid, "slurm_job": "77",
                                  "started": "2026-11-23T06:00:00"}))
    t = time.time() - age_s
    os.utime(marker, (t, t))


def test_each_state_and_its_reason(tmp_path):
    st = lambda name: status.cell_status(tmp_path / name, name)  # noqa: E731
    write_row(tmp_path / "done", "ok")
    write_row(tmp_path / "div", "diverged")
    write_log(tmp_path / "retried", "Traceback\nerror: RuntimeError: first\n", "")  # 2nd attempt: no error yet
    heartbeat(tmp_path / "retried", os.getpid())
    write_log(tmp_path / "failed", "error: RuntimeError: old\n", "Traceback\nerror: ValueError: new\n")
    write_log(tmp_path / "killed", "")
    heartbeat(tmp_path / "killed", 999_999_999)  # no such process
    (tmp_path / "killed" / "checkpoint.pt").write_bytes(b"x")
    write_log(tmp_path / "remote", "")
    heartbeat(tmp_path / "remote", 1, age_s=10 * status.STALE_S, host="elsewhere")
    write_log(tmp_path / "remote-alive", "")
    heartbeat(tmp_path / "remote-alive", 1, host="elsewhere")

    assert st("done").state == "done" and st("div").state == "diverged" and st("nothing").state == "missing"
    assert st("retried").state == "running" and "SLURM job 77" in st("retried").reason
    assert st("failed") == status.CellStatus("failed", "failed", "ValueError: new")
    killed = st("killed")
    assert killed.state == "failed" and killed.reason.startswith("killed without a word")
    assert "SLURM job 77" in killed.reason and "checkpoint saved" in killed.reason
    assert st("remote").state == "failed" and st("remote-alive").state == "running"


def test_heartbeat_lives_only_while_the_block_runs(tmp_path):
    with status.Heartbeat(tmp_path, interval_s=0.05) as beat:
        first = beat.path.stat().st_mtime
        time.sleep(0.3)
        assert beat.path.stat().st_mtime > first
        assert status.cell_status(tmp_path, "c").state == "running"
    assert not (tmp_path / status.RUNNING).exists()


def test_cli_table_and_resubmit_command(tmp_path, micro):
    cells = grid.cells(micro)
    write_row(tmp_path / "results/micro/cells" / cells[0].path, "ok")
    write_log(tmp_path / "results/micro/cells" / cells[1].path, "error: RuntimeError: planted failure\n")
    out = subprocess.run([BIN / "qlbench", "status", "micro", *CONFIG_ARGS, "--results",
                          tmp_path / "results"], text=True, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{len(cells)} cells: 1 done, 0 diverged, 0 stale, 1 failed, 0 running, {len(cells) - 2} missing" in out.stdout
    assert f"failed    {cells[1].path}" in out.stdout and "RuntimeError: planted failure" in out.stdout
    smk = f"snakemake --profile profiles/slurm --configfile {CONFIGS[1]} --config study=micro results="
    assert smk + str(tmp_path / "results") in out.stdout  # the tests' config: the one besides ./config.yaml
    assert f"qlbench sweep micro -c {CONFIGS[0]} -c {CONFIGS[1]} --executor slurm" in out.stdout


def test_status_imports_no_torch():
    code = "import sys, qlbench.cli, qlbench.cluster.status; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([BIN / "python", "-c", code], check=True, timeout=60)


def test_time_limit_margin():
    from qlbench.cluster.timelimit import stop_time

    assert stop_time(now=0, end=100) == 70  # at least 30 s early
    assert stop_time(now=0, end=3600) == 3600 - 180  # 5% of the job's time
    assert stop_time(now=0, end=100_000) == 100_000 - 300  # at most 5 minutes


REFERENCE = REPO / "tests/data/reference/demo"  # the demo's rows as two runs made them (tests/tools/reference_rows.py)


def reference_tree(results, label, numerics=None):
    """A results tree of the demo's 20 cells holding the rows of the reference run `label` (their numbers, status,
    settings and hash: what status reads); `numerics`: the version to write on them (None: the rows' own)."""
    rows = pl.read_parquet(REFERENCE / label / "cells.parquet")
    if numerics is not None:
        rows = rows.with_columns(numerics=pl.lit(numerics, pl.Int64))
    for i, r in enumerate(rows.iter_rows(named=True)):
        cell = grid.Cell(r["model"], r["bits"], r["rank"], r["mask"], r["seed"], r["n_train"])
        folder = results / "demo/cells" / cell.path
        folder.mkdir(parents=True)
        rows.slice(i, 1).write_parquet(folder / "row.parquet")
    return rows


def test_rows_of_older_numerics_read_stale_and_rows_of_the_codes_done(tmp_path):
    """The demo's rows of 2026-12-01 (before `numerics`: version 0, numbers that differ from the pinned ones) read
    stale though their settings are the current ones; the pinned rows with the code's numerics are done, and the
    same rows as 2026-12-06 wrote them (no column: version 0) read stale too."""
    from qlbench.results import NUMERICS

    demo = study.load(study.read_config([REPO / "config.yaml"]), "demo")
    old = reference_tree(tmp_path / "old", "2026-12-01")
    assert "numerics" not in old.columns and NUMERICS >= 1
    states = status.study_status(demo, str(tmp_path / "old"))
    assert len(states) == 20 and {s.state for s in states} == {"stale"}
    assert {s.reason for s in states} == {f"made by numerics 0, the code's are {NUMERICS}"}
    reference_tree(tmp_path / "new", "2026-12-06", numerics=NUMERICS)
    assert {s.state for s in status.study_status(demo, str(tmp_path / "new"))} == {"done"}
    reference_tree(tmp_path / "unversioned", "2026-12-06")
    assert {s.state for s in status.study_status(demo, str(tmp_path / "unversioned"))} == {"stale"}

    out = subprocess.run([BIN / "qlbench", "status", "demo", "-c", REPO / "config.yaml", "--results",
                          tmp_path / "old"], text=True, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "20 cells: 0 done, 0 diverged, 20 stale" in out.stdout and "made by numerics 0" in out.stdout, out.stdout


def test_a_rows_numerics_decide_its_state_where_its_settings_are_current(tmp_path):
    """row_state (status, the cell lock): other settings first, then other numerics; a row without a hash is not a
    cell's and is compared with nothing."""
    from qlbench.results import NUMERICS

    identity = ({"steps": 30}, "h" * 16)
    state = lambda *row: status.row_state("x", row, identity).state  # noqa: E731
    assert state("ok", "h" * 16, "{}", NUMERICS) == "done" and state("diverged", "h" * 16, "{}", NUMERICS) == "diverged"
    assert state("ok", "h" * 16, "{}", NUMERICS - 1) == "stale" and state("ok", "h" * 16, "{}", None) == "stale"
    assert state("ok", "h" * 16, "{}", NUMERICS + 1) == "stale"
    assert status.row_state("x", ("ok", "0" * 16, '{"steps": 20}', NUMERICS), identity).reason == \
        "made under other settings: steps 20 -> 30"
    assert state("ok", None, "{}", None) == "done"
    assert status.row_state("x", ("ok", "h" * 16, "{}", 0), None).state == "done"
    folder = tmp_path / "cell"
    folder.mkdir()
    pl.DataFrame({"status": ["ok"], "config_hash": ["h" * 16], "settings_json": ["{}"], "numerics": [NUMERICS]}
                 ).write_parquet(folder / "row.parquet")
    assert status.read_row_status(folder / "row.parquet") == ("ok", "h" * 16, "{}", NUMERICS)
    assert status.cell_status(folder, "cell", identity=identity).state == "done"
    pl.DataFrame({"status": ["ok"], "config_hash": ["h" * 16], "settings_json": ["{}"]}).write_parquet(
        folder / "row.parquet")
    assert status.cell_status(folder, "cell", identity=identity).state == "stale"
