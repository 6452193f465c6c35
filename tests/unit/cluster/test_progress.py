"""`qlbench status` while a study runs: each running cell's step of N (the loop's `.progress`), and the sweep's end
estimated from the finished cells' step times — by hand, and with a real cell training in another process."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import yaml

from qlbench.cluster import progress
from qlbench.study import config as study, grid

from conftest import BIN, full_config


def test_the_end_estimate_by_hand():
    # three finished cells of 40 steps: 0.5 s a step, 30 s in all, so 10 s a cell besides its steps
    finished = [{"step_time_s": 0.5, "steps_done": 40, "wall_s": 30.0}] * 3
    running = [{"step": 10, "steps": 40}, {"step": 30, "steps": 40}]
    est = progress.estimate(40, finished, running, to_start=4)
    # running: (30 + 10) steps × 0.5 s = 20 s; to start: 4 × (40 × 0.5 + 10) = 120 s; two at a time
    assert est.left_s == pytest.approx(70.0)
    assert (est.step_time_s, est.overhead_s, est.at_once) == (0.5, 10.0, 2)
    assert (est.steps_done, est.steps_total) == (3 * 40 + 40, 7 * 40 + 80)
    assert "about 70 s to go" in est.line() and "3 finished cells" in est.line()


def test_without_finished_cells_the_running_cells_step_time_is_used():
    est = progress.estimate(100, [], [{"step": 50, "steps": 100, "step_time_s": 0.2}], to_start=1)
    assert est.left_s == pytest.approx(50 * 0.2 + 100 * 0.2) and est.overhead_s == 0.0
    assert progress.estimate(100, [], [{"step": 1, "steps": 100, "step_time_s": None}], to_start=1) is None


def test_progress_is_written_at_most_every_interval_and_at_the_last_step(tmp_path):
    write = progress.Progress(tmp_path, every_s=60)
    write(1, 5)
    assert progress.read(tmp_path) == {"step": 1, "steps": 5, "step_time_s": None}
    write(2, 5)
    assert progress.read(tmp_path)["step"] == 1  # within the interval: not written
    time.sleep(0.05)
    write(5, 5)
    last = progress.read(tmp_path)
    assert last["step"] == 5 and 0.05 / 4 <= last["step_time_s"] < 1


@pytest.mark.workflow
def test_status_shows_a_running_cells_step_and_when_the_sweep_ends(workdir):
    config = full_config()
    config["studies"]["micro"]["steps"] = 10
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    st = study.load(config, "micro")
    first, second = grid.cells(st)[:2]
    run = [BIN / "qlbench", "run", "-c", "config.yaml", "--study", "micro"]
    out = lambda cell: grid.cell_dir("results", "micro", cell)  # noqa: E731
    subprocess.run(run + ["--cell", first.path, "--out", out(first)], cwd=workdir, check=True, capture_output=True,
                   timeout=300)
    long = subprocess.Popen(run + ["--cell", second.path, "--out", out(second), "--set", "steps=100000"],
                            cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, info = time.time() + 240, None
        while time.time() < deadline and not (info and info["step"] > 1):
            time.sleep(1)
            info = progress.read(workdir / out(second))
        assert info and info["steps"] == 100000, "the running cell wrote no progress"
        shown = subprocess.run([BIN / "qlbench", "status", "micro", "-c", "config.yaml"], cwd=workdir, text=True,
                               capture_output=True, timeout=60)
        watch = subprocess.Popen([BIN / "qlbench", "status", "micro", "-c", "config.yaml", "--watch", "--every", "1"],
                                 cwd=workdir, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            watched, _ = watch.communicate(timeout=8)
        except subprocess.TimeoutExpired:  # it keeps refreshing while a cell runs
            watch.terminate()
            watched, _ = watch.communicate(timeout=30)
    finally:
        long.send_signal(signal.SIGKILL)
        long.wait(30)
    assert shown.returncode == 0, shown.stderr
    line = next(x for x in shown.stdout.splitlines() if second.path in x)
    step = int(line.split("step ")[1].split("/")[0])
    assert line.split()[0] == "running" and f"/100000" in line and step >= info["step"]
    end = shown.stdout.splitlines()[-1]
    assert end.startswith("progress: ") and "1 finished cells" in end and "to go (ends about" in end, shown.stdout
    # the finished cell's 10 steps, the running cell's, and the third cell's 10 still to come
    assert f"of {2 * 10 + 100000} steps" in end
    refreshes = [int(x.split("step ")[1].split("/")[0]) for x in watched.splitlines() if second.path in x]
    assert len(refreshes) >= 2 and refreshes[-1] > refreshes[0], watched  # --watch showed the cell moving on
