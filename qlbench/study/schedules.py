"""Precision schedules as a study states them — pure python, no torch: which width a step trains at (CPT's cycle)
and which widths a trained model is evaluated at. The config checks and the cell share them."""

from __future__ import annotations

import math


def cpt_width(step: int, low: int, high: int, period: int, schedule: str = "cosine") -> int:
    """CPT's precision at `step` (Fu et al. 2021, `cyclic_adjust_precision`): within each period of `period` steps
    it rises from `low` towards `high` along half a cosine — or, `triangular`, linearly up and back down — rounded
    to the nearest width (half to even, as numpy's rint)."""
    t = (step % period) / period
    if schedule == "cosine":
        value = low + 0.5 * (high - low) * (1 - math.cos(math.pi * t))
    else:
        value = low + (high - low) * (2 * t if t < 0.5 else 2 - 2 * t)
    return int(round(value))


def cpt_period(steps: int, cycles: int) -> int:
    """Steps per period: the run divided into `cycles` periods (QaLoF: max_steps / num_cyclic_period)."""
    return max(1, steps // cycles)
