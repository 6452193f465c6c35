"""One cell, start to finish, as a short list of stages — each a function in its own module:

    begin -> load -> quantize -> attach -> evaluate (before) -> train -> evaluate (after) -> as deployed -> write

The cell knows nothing of Snakemake or SLURM: it takes its coordinates and writes files into its folder —
`row.parquet` last, so a folder with a row is a finished cell and one without is not. What a driver adds (second
names for its files, progress, the job's time limit, planted trouble) the command lends it as `hooks`
(`cell/hooks.py`).
"""

from __future__ import annotations

from pathlib import Path

from qlbench.cell.hooks import Hooks
from qlbench.study.config import Study
from qlbench.study.grid import Cell


def run(study: Study, cell: Cell, out: Path, settings: dict, threads: int = 1, hooks: Hooks = Hooks()) -> dict:
    from qlbench.cell import deployed, evaluate
    from qlbench.cell.attach import attach
    from qlbench.cell.context import begin
    from qlbench.cell.load import load
    from qlbench.cell.quantize import quantize
    from qlbench.cell.train import train
    from qlbench.cell.write import write

    ctx = begin(study, cell, out, settings, threads, hooks)  # coordinates checked, folder, log, settings, seed, device
    base = load(ctx)  # base model and tokenizer, the task's data and batches
    quantized = quantize(ctx, base)  # sensitivity probe, plan, backend, per-module error
    model = attach(ctx, base, quantized)  # LoRA, adapter bits, switchable adapters, activation hooks
    loss_before = evaluate.before_training(ctx, model, base)  # the quantized base, LoRA still a no-op
    trained = train(ctx, model, base, quantized)  # the loop: resumable, gradient variance probed
    evaluated = evaluate.after_training(ctx, model, base, quantized, trained.status)  # metrics, generations
    evaluated.columns.update(deployed.evaluate(ctx, model, base, quantized))  # merged into 16 bits, requantized
    return write(ctx, model, base, quantized, loss_before, trained, evaluated)  # row, curve, adapter, ...
