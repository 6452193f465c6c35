"""A cell whose results folder fills up (a small tmpfs mounted by the test: needs root) fails with a one-line reason,
leaves no row and no half-written file, and runs once space is back."""

from __future__ import annotations

import os
import shutil
import subprocess

import polars as pl
import pytest

from conftest import BIN, CONFIG_ARGS

CELL = "micro-gpt2/b4/r4/all/s0"


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount, leave: int):
    """Take all the filesystem's space but `leave` bytes."""
    free = shutil.disk_usage(mount).free
    with open(mount / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


def run_cell(workdir, out):
    return subprocess.run([BIN / "qlbench", "run", *CONFIG_ARGS, "--study", "micro", "--cell", CELL,
                           "--out", out], cwd=workdir, text=True, capture_output=True, timeout=600)


# 0 bytes: not even the cell's log can be written; 64 KiB: the log is, then a later file (checkpoint, outputs) is not
@pytest.mark.parametrize("leave", [0, 64 * 1024])
def test_a_cell_on_a_full_disk_fails_in_one_line_leaves_no_row_and_reruns(tmp_path, small_disk, micro_resources,
                                                                        leave):
    shutil.copytree(micro_resources, tmp_path / "resources")
    out = small_disk / "results/micro/cells" / CELL
    out.mkdir(parents=True)
    fill(small_disk, leave)
    failed = run_cell(tmp_path, out)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    # the cell's log lines go to stderr too; its reason is one line, the last
    reasons = [x for x in failed.stderr.splitlines() if x.startswith("qlbench run: ")]
    assert len(reasons) == 1 and failed.stderr.strip().splitlines()[-1] == reasons[0], failed.stderr[-3000:]
    assert "no space left on device" in reasons[0].lower(), reasons
    left = sorted(os.listdir(out))
    assert "row.parquet" not in left and not [f for f in left if ".tmp" in f], left  # nothing half-written
    status = subprocess.run([BIN / "qlbench", "status", "micro", *CONFIG_ARGS, "--results",
                             small_disk / "results"], text=True, capture_output=True, timeout=60)
    line = next(x for x in status.stdout.splitlines() if CELL in x)
    assert line.split()[0] in ("failed", "missing"), status.stdout  # to be rerun by either driver

    os.remove(small_disk / "filler")  # space is back
    again = run_cell(tmp_path, out)
    assert again.returncode == 0, again.stderr[-2000:]
    assert pl.read_parquet(out / "row.parquet")["status"][0] == "ok"
