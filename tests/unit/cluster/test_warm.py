"""`qlbench run --warm`: the cell runs in a child of the warm process and its exit code and stderr reach the caller
as its own; with no warm process to be had, the cell runs in the caller's process instead."""

import os
import subprocess

from conftest import BIN, CONFIG_ARGS

ARGS = ["run", "--warm", *map(str, CONFIG_ARGS), "--study", "nosuch", "--cell", "micro-gpt2/b4/r4/all/s0"]


def qlbench(tmp_path, warm_dir):
    env = {**os.environ, "QLBENCH_WARM_DIR": str(warm_dir)}
    return subprocess.run([BIN / "qlbench", *ARGS, "--out", tmp_path / "cell"], cwd=tmp_path, env=env, text=True,
                          capture_output=True, timeout=300)


def test_the_cells_exit_code_and_error_come_back_through_the_warm_process(tmp_path):
    done = qlbench(tmp_path, tmp_path)
    assert done.returncode == 1 and "study 'nosuch' is not in the config" in done.stderr, done.stderr
    assert "running the cell in this process" not in done.stderr
    assert [p.suffix for p in tmp_path.glob("qlbench-warm-*.sock")] == [".sock"]  # it went through the server


def test_without_a_warm_process_the_cell_runs_here(tmp_path):
    too_long = tmp_path / ("x" * 120)  # a unix socket's path has at most 107 bytes: no server can listen there
    too_long.mkdir()
    done = qlbench(tmp_path, too_long)
    assert done.returncode == 1 and "study 'nosuch' is not in the config" in done.stderr, done.stderr
    assert "running the cell in this process" in done.stderr
