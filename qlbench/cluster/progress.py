"""How far a study is and when it should end. A running cell's training loop writes its step of N to
`.progress` in its folder (at most once a second); `qlbench status` reads it beside the heartbeat, and estimates
the rest of the sweep from the finished cells' step times. Files only: no scheduler, no model, no torch."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from statistics import median

PROGRESS = ".progress"
EVERY_S = 1.0  # at most this often: a fast loop must not spend its steps writing files


class Progress:
    """`progress(done, steps)` after each training step: `.progress` holds the step, N and the mean step time."""

    def __init__(self, out: Path, every_s: float = EVERY_S):
        self.path = Path(out) / PROGRESS
        self.every_s = every_s
        self._last = float("-inf")
        self._start = None  # (time, step) of the first step this process ran: a resumed cell counts from there

    def __call__(self, done: int, steps: int) -> None:
        now = time.monotonic()
        if self._start is None:
            self._start = (now, done)
        if now - self._last < self.every_s and done < steps:
            return
        self._last = now
        ran = done - self._start[1]
        info = {"step": done, "steps": steps, "step_time_s": (now - self._start[0]) / ran if ran > 0 else None}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(info) + "\n")
        os.replace(tmp, self.path)  # a reader never sees half a file


def read(cell_dir: Path) -> dict | None:
    try:
        info = json.loads((Path(cell_dir) / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info.get("step"), int) and isinstance(info.get("steps"), int) else None


@dataclass(frozen=True)
class Estimate:
    steps_done: int
    steps_total: int
    step_time_s: float  # per training step
    overhead_s: float  # per cell besides its steps: start-up, loading, evaluation, writing
    basis: str  # what the times come from
    at_once: int  # cells running side by side
    left_s: float

    def line(self, now: float | None = None) -> str:
        ends = datetime.fromtimestamp((time.time() if now is None else now) + self.left_s)
        return (f"progress: {self.steps_done} of {self.steps_total} steps; {self.step_time_s:.3g} s a step and "
                f"{self.overhead_s:.0f} s a cell besides ({self.basis}), {self.at_once} at a time: "
                f"about {_duration(self.left_s)} to go (ends about {ends:%H:%M})")


def estimate(steps: int, finished: list[dict], running: list[dict], to_start: int) -> Estimate | None:
    """The sweep's end from `finished` cells' rows (step_time_s, steps_done, wall_s), the `running` cells'
    progress (step, steps, step_time_s) and the number of cells still `to_start` (missing, failed, stale), each
    of `steps` steps. Cells run as many at once as run now; None when nothing has told a step time yet."""
    rows = [r for r in finished if _num(r.get("step_time_s")) and _num(r.get("wall_s"))]
    if rows:
        step_time = median(r["step_time_s"] for r in rows)
        overhead = median(max(0.0, r["wall_s"] - r["step_time_s"] * (r.get("steps_done") or steps)) for r in rows)
        basis = f"{len(rows)} finished cells"
    else:
        live = [r["step_time_s"] for r in running if _num(r.get("step_time_s"))]
        if not live:
            return None
        step_time, overhead, basis = median(live), 0.0, f"{len(live)} running cells, none finished yet"
    left_running = sum(max(0, r["steps"] - r["step"]) for r in running) * step_time
    left = left_running + to_start * (steps * step_time + overhead)
    at_once = max(1, len(running))
    done = len(finished) * steps + sum(min(r["step"], r["steps"]) for r in running)
    total = (len(finished) + to_start) * steps + sum(r["steps"] for r in running)
    return Estimate(done, total, step_time, overhead, basis, at_once, left / at_once)


def _num(x) -> bool:
    return isinstance(x, (int, float)) and x == x and x >= 0


def _duration(s: float) -> str:
    s = round(s)
    if s < 90:
        return f"{s} s"
    if s < 5400:
        return f"{round(s / 60)} min"
    return f"{s // 3600} h {round(s % 3600 / 60)} min"
