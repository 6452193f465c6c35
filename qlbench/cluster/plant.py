"""Planted trouble, acted out — TESTING ONLY: what the `fail` setting (its grammar: `qlbench.study.fail`) makes a
cell do — raise, SIGKILL itself mid-training, or hold memory — so the tests can check retries, resumption and
out-of-memory handling on a real cluster. It changes no number."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Callable

from qlbench.study.fail import Plant, for_cell  # noqa: F401  (the grammar; cells call plant.for_cell)

FAILED_ONCE = ".failed-once"
_held: list = []  # memory a mem@MB plant keeps alive until the process ends


def before_training(plants: list[Plant], out: Path) -> None:
    """first/always raise here; mem@MB allocates and touches its memory here."""
    for p in plants:
        if p.mode == "mem":
            _held.append(b"\x01" * (p.amount * 2**20))  # non-zero bytes: every page touched
        elif p.mode == "always":
            raise RuntimeError("planted failure (setting fail=always)")
        elif p.mode == "first" and _first_attempt(out):
            raise RuntimeError("planted failure on the first attempt (setting fail=first)")


def with_kill(on_step: Callable[[int], None] | None, plants: list[Plant], out: Path):
    """The training loop's step hook, plus kill@N: SIGKILL the process at step N, on the first attempt."""
    steps = {p.amount for p in plants if p.mode == "kill"}
    if not steps:
        return on_step

    def hook(step: int) -> None:
        if on_step is not None:
            on_step(step)
        if step in steps and _first_attempt(out):
            os.kill(os.getpid(), signal.SIGKILL)

    hook.__wrapped__ = on_step  # the loop checkpoints the wrapped probe's state through this
    return hook


def _first_attempt(out: Path) -> bool:
    """True once per cell folder: the marker is written before the failure it stands for."""
    marker = out / FAILED_ONCE
    if marker.exists():
        return False
    marker.touch()
    return True
