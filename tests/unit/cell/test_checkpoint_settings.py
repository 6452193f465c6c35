"""A checkpoint made under other settings is never resumed: the cell starts over (and says so in its log)."""

from __future__ import annotations

import signal
import subprocess
import time

import polars as pl

from conftest import BIN, CONFIG_ARGS

CELL = ["--study", "micro", "--model", "micro-gpt2", "--bits", "4", "--rank", "4", "--mask", "all",
        "--set", "steps=60", "--set", "checkpoint_every=10"]


def run(workdir, out, *extra, background=False):
    cmd = [BIN / "qlbench", "run", *CONFIG_ARGS, *CELL, *extra, "--out", out]
    if background:
        return subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, cwd=workdir, capture_output=True, text=True)


def test_checkpoint_of_other_settings_is_not_resumed(workdir):
    out = workdir / "cell"
    proc = run(workdir, out, background=True)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert (out / "checkpoint.pt").exists() and not (out / "row.parquet").exists()

    done = run(workdir, out, "--set", "lr=0.001")  # another setting: another cell, whatever the folder
    assert done.returncode == 0, done.stderr[-2000:]
    row = pl.read_parquet(out / "row.parquet")
    assert row["resumed_from"][0] == 0 and row["steps_done"][0] == 60 and row["lr"][0] == 0.001
    assert "a checkpoint made under other settings: starting over" in (out / "log.txt").read_text()
    assert not (out / "checkpoint.pt").exists() and not (out / "checkpoint.pt.config").exists()
