"""Tasks, one file each: what a cell trains on and measures — the batches, the loss, the evaluation metrics.

`causal_lm` (language modelling on text blocks) is the task of every study today. A task module exposes `prepare`,
`batch_sampler`, `loss`, `eval_loss`, `perplexity` and `generations`; the cell's stages ask it, and stay the same.
"""

from __future__ import annotations

import importlib

TASKS = ("causal_lm",)


def get(name: str = "causal_lm"):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; tasks: {', '.join(TASKS)}")
    return importlib.import_module(f"qlbench.tasks.{name}")
